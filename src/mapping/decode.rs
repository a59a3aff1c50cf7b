//! What Redis returned for a key, decoded through a [`Mapping`] into a [`Checkpoint`], or a
//! [`Reject`] whose reason names the field at fault.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc};
use sha2::{Digest, Sha256};

use super::json::{Json, Want};
use super::path::{Found, Path};
use super::{IdSource, Mapping, Order, Unit};
use crate::checkpoint::{
    Checkpoint, MAX_ID_BYTES, Message, MessageSource, Packed, Reject, Unpack, identity,
};

/// The marker under which a hash field that is not UTF-8 is kept in the stored document, so that
/// restore can write its bytes back (a hash field value is otherwise always a JSON string).
pub const BASE64_MARKER: &str = "$base64";

/// What Redis returned for one key.
#[derive(Debug, Clone, Copy)]
pub enum Raw<'a> {
    /// GET, or JSON.GET: the document's text.
    Text(&'a [u8]),
    /// LRANGE 0 -1: the elements in list order.
    List(&'a [Vec<u8>]),
    /// HGETALL: field and value pairs.
    Hash(&'a [(Vec<u8>, Vec<u8>)]),
}

/// One key decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Messages oldest first; `document` is what restore writes back: the text read (string,
    /// RedisJSON), the elements as a JSON array in list order, the hash as a JSON object.
    pub checkpoint: Checkpoint,
    /// One key per message: each message's value as JSON text, in the order of
    /// `checkpoint.messages`, what restore writes back. Empty for a key holding a conversation,
    /// which is restored from its document.
    pub elements: Vec<String>,
    /// The Redis key holding each message (differs between messages once [`group`] has merged
    /// the keys of a one-key-per-message layout).
    pub keys: Vec<String>,
}

/// How much of a key a decode builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Checks and counts the messages (a dry run).
    Check,
    /// The checkpoint with its document and hash, its messages counted, built when it is
    /// written ([`Checkpoint::unpack`]).
    Packed,
    /// Everything: messages with their identities, elements.
    Full,
}

impl Mapping {
    /// Decodes what Redis returned for `key`.
    pub fn decode(&self, key: &str, raw: Raw<'_>) -> Result<Decoded, Reject> {
        self.decode_with(key, raw, Mode::Full).map(|(d, _)| d)
    }

    /// Checks what Redis returned for `key` as [`Mapping::decode`] does (the same rejects) and
    /// counts its messages, building no rows: a dry run's decode.
    pub fn check(&self, key: &str, raw: Raw<'_>) -> Result<usize, Reject> {
        self.decode_with(key, raw, Mode::Check).map(|(_, n)| n)
    }

    /// [`Mapping::decode`] for a sweep: a conversation in a key of its own (a string, RedisJSON
    /// document or list) is checked and its messages only counted; the store builds them
    /// ([`Checkpoint::unpack`]) for the conversations it writes, so an unchanged re-sweep
    /// builds none. Rejects are the same as `decode`'s.
    pub fn decode_packed(self: &Arc<Self>, key: &str, raw: Raw<'_>) -> Result<Decoded, Reject> {
        // A hash's document is built of its fields: decoded whole, as its own kind of value.
        if self.unit == Unit::Message || matches!(raw, Raw::Hash(_)) {
            return self.decode(key, raw);
        }
        let (mut d, n) = self.decode_with(key, raw, Mode::Packed)?;
        let unpack: Arc<dyn Unpack> = self.clone();
        d.checkpoint.packed = Some(Packed::Mapped(n, unpack));
        Ok(d)
    }

    /// The key decoded as far as `mode` asks, and how many messages it holds (built or not).
    fn decode_with(&self, key: &str, raw: Raw<'_>, mode: Mode) -> Result<(Decoded, usize), Reject> {
        // A list's elements, each checked to be UTF-8 (a reject names the element).
        let strs = match raw {
            Raw::List(l) => list_strs(l)?,
            _ => Vec::new(),
        };
        let (text, binary) = document_text(raw, &strs, mode != Mode::Check)?;
        // NUL can only be written as an escape: a value without one holds none.
        let (doc, maybe_nul) = match raw {
            Raw::List(_) => list_items(&strs, &self.wants.element)?,
            _ => {
                let maybe_nul = text.contains(NUL_ESCAPE);
                let doc = parse(&text, &self.wants.document, maybe_nul)
                    .map_err(|e| Reject::NotJson(e.to_string()))?;
                (doc, maybe_nul)
            }
        };
        if maybe_nul && doc.holds_nul() {
            return Err(Reject::NulCharacter);
        }
        self.refuse_binary(&binary)?;
        let array = match (self.unit, raw) {
            (Unit::Message, _) => Cow::Borrowed(std::slice::from_ref(&doc)),
            (_, Raw::List(_)) => match &doc {
                Json::Array(items) => Cow::Borrowed(items.as_slice()),
                _ => Cow::Borrowed(&[][..]),
            },
            _ => self.message_array(&doc)?,
        };
        let (mut messages, elements, count) = self.messages(&array, &text, mode)?;
        // The conversation-level fields come from the document, or the message in a key of its own.
        let conversation_id = self.conversation_id(key, &doc)?;
        check_id(&conversation_id, "conversation id")?;
        if conversation_id.is_empty() {
            return Err(Reject::EmptyConversationId);
        }
        let c = &self.conversation;
        let user_id = match c.user_id.as_ref().map(|p| p.text(&doc, "")) {
            Some(Found::Text { text, .. }) => Some(check_id(&text, "user_id")?.to_string()),
            _ => None,
        };
        let started_at = doc_time(c.started_at.as_ref(), &doc, "started_at")?;
        let updated_at = doc_time(c.updated_at.as_ref(), &doc, "updated_at")?;
        drop(array);
        drop(doc);
        let text = text.into_owned();
        if self.unit == Unit::Message {
            for (m, e) in messages.iter_mut().zip(&elements) {
                m.source = Some(Box::new(MessageSource {
                    redis_key: key.to_string(),
                    element: e.clone(),
                }));
            }
        }
        let decoded = Decoded {
            checkpoint: Checkpoint {
                redis_key: key.to_string(),
                conversation_id,
                user_id,
                started_at,
                // A message in a key of its own dates its conversation: the newest message's
                // key gives the conversation row (newest wins).
                updated_at: match updated_at {
                    None if self.unit == Unit::Message => {
                        messages.first().and_then(|m| m.created_at)
                    }
                    t => t,
                },
                packed: None,
                messages,
                content_hash: match mode {
                    Mode::Check => [0; 32],
                    _ => Sha256::digest(text.as_bytes()).into(),
                },
                document: text,
                texts_in_document: false,
            },
            keys: vec![key.to_string(); elements.len()],
            elements,
        };
        Ok((decoded, count))
    }

    /// The messages of `array` in conversation order, the elements restore writes back (one key
    /// per message), and how many messages there are: built only to be written (a unit of one
    /// message is built to date its conversation), else only checked.
    fn messages(
        &self,
        array: &[Json],
        text: &str,
        mode: Mode,
    ) -> Result<(Vec<Message>, Vec<String>, usize), Reject> {
        let full = mode == Mode::Full;
        let mut order: Vec<usize> = (0..array.len()).collect();
        if self.order == Order::NewestFirst {
            order.reverse();
        }
        let mut seen = HashMap::new();
        let (mut messages, mut elements) = (Vec::new(), Vec::new());
        let mut count = 0;
        for (n, &i) in order.iter().enumerate() {
            let item = &array[i];
            if !self.kept(item) {
                continue;
            }
            count += 1;
            let message = self.message(n, item, full.then_some(&mut seen))?;
            if full || self.unit == Unit::Message {
                messages.push(message);
            }
            // One key per message: its value, as `serde_json` writes it, is what restore writes
            // back (a conversation per key is restored from its document).
            if full && self.unit == Unit::Message {
                elements.push(
                    serde_json::from_str::<serde_json::Value>(text)
                        .map_err(|e| Reject::NotJson(e.to_string()))?
                        .to_string(),
                );
            }
        }
        Ok((messages, elements, count))
    }

    /// A mapped field that is binary names itself (a semantic cache's vector is binary too, but
    /// no mapping reads it).
    fn refuse_binary(&self, binary: &[(String, usize)]) -> Result<(), Reject> {
        for path in self.paths() {
            if let Some((field, at)) = path
                .head()
                .and_then(|h| binary.iter().find(|(f, _)| f == h))
            {
                return Err(Reject::BadField {
                    field: "hash field",
                    problem: format!(
                        "`{field}` is binary (not UTF-8 after byte {at}), read by `{}`",
                        path.text
                    ),
                });
            }
        }
        Ok(())
    }

    /// The conversation id, from the key or a field of the document.
    fn conversation_id(&self, key: &str, doc: &Json) -> Result<String, Reject> {
        Ok(match &self.conversation_id {
            // A key of the user's own --match (LangChain.js keys are bare session ids) is the
            // conversation id whole.
            IdSource::Key(hole) => match self.key_holes(key) {
                Some(holes) => holes
                    .into_iter()
                    .find(|(n, _)| n == hole)
                    .map_or_else(String::new, |(_, v)| v.to_string()),
                None => key.to_string(),
            },
            IdSource::Field(p) => match p.text(doc, "") {
                Found::Text { text, .. } => text.into_owned(),
                Found::None => {
                    return Err(Reject::BadField {
                        field: "conversation_id",
                        problem: format!("`{}` is missing or not a string", p.text),
                    });
                }
            },
        })
    }

    /// The message array of a document (parsed from JSON text when a hash field holds it).
    fn message_array<'d>(&self, doc: &'d Json<'d>) -> Result<Cow<'d, [Json<'d>]>, Reject> {
        match self.messages.value(doc) {
            Some(Cow::Borrowed(Json::Array(a))) => Ok(Cow::Borrowed(a.as_slice())),
            Some(Cow::Owned(Json::Array(a))) => Ok(Cow::Owned(a)),
            None => Err(Reject::BadMessages(format!(
                "the document has no `{}`",
                self.messages.text
            ))),
            Some(other) => Err(Reject::BadMessages(format!(
                "`{}` is a JSON {}, not an array",
                self.messages.text,
                other.kind()
            ))),
        }
    }

    fn kept(&self, item: &Json) -> bool {
        match &self.message.keep {
            None => true,
            Some((path, values)) => match path.text(item, "") {
                Found::Text { text, .. } => values.iter().any(|v| *v == text),
                Found::None => false,
            },
        }
    }

    /// Message `n` (in conversation order) of the conversation; its identity with `seen` (the
    /// id-less messages so far), left empty without.
    fn message(
        &self,
        n: usize,
        item: &Json,
        seen: Option<&mut HashMap<[u8; 32], u32>>,
    ) -> Result<Message, Reject> {
        let m = &self.message;
        if !item.is_object() {
            return Err(Reject::BadMessages(format!(
                "message {n} is a JSON {}, not an object",
                item.kind()
            )));
        }
        let first = |paths: &[Path], join: &str| {
            paths.iter().find_map(|p| match p.text(item, join) {
                Found::Text { text, number } => Some((text, number)),
                Found::None => None,
            })
        };
        let Some((raw_role, _)) = first(&m.role, "") else {
            return Err(Reject::BadMessages(format!(
                "message {n} has no role ({})",
                names(&m.role)
            )));
        };
        let id = first(&m.id, "").map(|(t, _)| t);
        if let Some(id) = &id {
            check_id(id, "message id")?;
        }
        let ts = first(&m.ts, "");
        let created_at = ts
            .as_ref()
            .map(|(t, number)| {
                parse_ts(t, *number).map_err(|e| {
                    Reject::BadMessages(format!(
                        "message {n}: {} {t:?} is not a time: {e}",
                        names(&m.ts)
                    ))
                })
            })
            .transpose()?;
        // Checked only (no identity wanted): nothing else is read, nothing copied.
        let Some(seen) = seen else {
            return Ok(Message {
                identity: String::new(),
                id: None,
                role: String::new(),
                content: String::new(),
                created_at,
                source: None,
            });
        };
        let role = self.role(&raw_role).to_string();
        // A message without text (a function call) is still a message, with its JSON.
        let content = first(&m.content, &m.join)
            .map(|(t, _)| t.into_owned())
            .unwrap_or_default();
        let id = id.map(Cow::into_owned);
        let ts_raw = ts.as_ref().map(|(t, _)| t.as_ref());
        Ok(Message {
            identity: identity(id.as_deref(), &role, &content, ts_raw, seen),
            id,
            role,
            content,
            created_at,
            source: None,
        })
    }
}

impl Unpack for Mapping {
    fn messages(&self, redis_key: &str, document: &str) -> Vec<Message> {
        // The document of a list is its elements as a JSON array, which decodes as the list
        // did (the mapping of a list reads no document fields).
        self.decode(redis_key, Raw::Text(document.as_bytes()))
            .expect("a packed checkpoint was checked when read")
            .checkpoint
            .messages
    }
}

/// Merges the keys of a one-key-per-message layout into their conversations: messages in time
/// order (then by key, which for the presets holds a sortable id), each identity once.
pub fn group(units: Vec<Decoded>) -> Vec<Decoded> {
    let mut by_id: BTreeMap<String, Vec<Decoded>> = BTreeMap::new();
    for u in units {
        by_id
            .entry(u.checkpoint.conversation_id.clone())
            .or_default()
            .push(u);
    }
    by_id
        .into_values()
        .map(|mut parts| {
            // None (no time) sorts first, as an older message would.
            parts.sort_by(|a, b| {
                let t = |d: &Decoded| d.checkpoint.messages.first().and_then(|m| m.created_at);
                (t(a), &a.checkpoint.redis_key).cmp(&(t(b), &b.checkpoint.redis_key))
            });
            let mut rest = parts.into_iter();
            let mut first = rest.next().expect("a group has a key");
            let mut identities: Vec<String> = first
                .checkpoint
                .messages
                .iter()
                .map(|m| m.identity.clone())
                .collect();
            for p in rest {
                let c = p.checkpoint;
                for ((m, e), k) in c.messages.into_iter().zip(p.elements).zip(p.keys) {
                    if identities.contains(&m.identity) {
                        continue;
                    }
                    identities.push(m.identity.clone());
                    first.checkpoint.messages.push(m);
                    first.elements.push(e);
                    first.keys.push(k);
                }
                first.checkpoint.user_id = first.checkpoint.user_id.or(c.user_id);
                first.checkpoint.started_at = first.checkpoint.started_at.or(c.started_at);
                first.checkpoint.updated_at = first.checkpoint.updated_at.max(c.updated_at);
            }
            let doc = format!("[{}]", first.elements.join(","));
            first.checkpoint.content_hash = Sha256::digest(doc.as_bytes()).into();
            first.checkpoint.document = doc;
            first
        })
        .collect()
}

/// Hash fields that are not UTF-8: name, valid bytes.
type BinaryFields = Vec<(String, usize)>;

/// A key's value as text (what is stored and hashed; a list's only when `full`: the dry run
/// stores nothing), and the hash fields that are not UTF-8 (name, valid bytes).
fn document_text<'a>(
    raw: Raw<'a>,
    list: &[&str],
    full: bool,
) -> Result<(Cow<'a, str>, BinaryFields), Reject> {
    match raw {
        Raw::Text(bytes) => {
            let text = std::str::from_utf8(bytes).map_err(|e| Reject::NotUtf8 {
                valid_up_to: e.valid_up_to(),
            })?;
            Ok((Cow::Borrowed(text), Vec::new()))
        }
        Raw::List(_) if full => {
            let mut text =
                String::with_capacity(list.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
            text.push('[');
            for (i, e) in list.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(e);
            }
            text.push(']');
            Ok((Cow::Owned(text), Vec::new()))
        }
        Raw::List(_) => Ok((Cow::Borrowed(""), Vec::new())),
        Raw::Hash(pairs) => {
            let mut map = serde_json::Map::new();
            let mut binary = Vec::new();
            for (f, v) in pairs {
                let field = std::str::from_utf8(f).map_err(|e| Reject::BadField {
                    field: "hash field",
                    problem: format!("a field name is not UTF-8 (after byte {})", e.valid_up_to()),
                })?;
                let value = match std::str::from_utf8(v) {
                    Ok(s) => serde_json::Value::String(s.to_string()),
                    Err(e) => {
                        binary.push((field.to_string(), e.valid_up_to()));
                        let b64 = base64::engine::general_purpose::STANDARD.encode(v);
                        serde_json::Value::Object(serde_json::Map::from_iter([(
                            BASE64_MARKER.to_string(),
                            serde_json::Value::String(b64),
                        )]))
                    }
                };
                map.insert(field.to_string(), value);
            }
            // Fields sorted by name (serde_json's map): the same hash is the same text, whatever
            // order HGETALL gave.
            Ok((
                Cow::Owned(serde_json::Value::Object(map).to_string()),
                binary,
            ))
        }
    }
}

/// How a NUL is written in JSON (a raw one is not valid JSON).
const NUL_ESCAPE: &str = "\\u0000";

/// A list's elements as text.
fn list_strs(elements: &[Vec<u8>]) -> Result<Vec<&str>, Reject> {
    elements
        .iter()
        .enumerate()
        .map(|(i, e)| {
            std::str::from_utf8(e).map_err(|err| {
                Reject::BadMessages(format!(
                    "list element {i} is not UTF-8 (after byte {})",
                    err.valid_up_to()
                ))
            })
        })
        .collect()
}

/// Parses what `want` reads of a value; all of it where it may hold NUL, which must be found
/// wherever it is.
fn parse<'a>(text: &'a str, want: &Want, maybe_nul: bool) -> serde_json::Result<Json<'a>> {
    match maybe_nul {
        true => Json::parse(text),
        false => Json::parse_wanted(text, want),
    }
}

/// A list's elements, each parsed from its own text (what `want` reads of it); and whether one
/// may hold NUL.
fn list_items<'a>(elements: &[&'a str], want: &Want) -> Result<(Json<'a>, bool), Reject> {
    let mut items = Vec::with_capacity(elements.len());
    let mut maybe_nul = false;
    for (i, &s) in elements.iter().enumerate() {
        let nul = s.contains(NUL_ESCAPE);
        let v = parse(s, want, nul)
            .map_err(|err| Reject::BadMessages(format!("list element {i} is not JSON: {err}")))?;
        maybe_nul |= nul;
        items.push(v);
    }
    Ok((Json::Array(items), maybe_nul))
}

/// A time from a document field.
fn doc_time(
    path: Option<&Path>,
    doc: &Json,
    field: &'static str,
) -> Result<Option<DateTime<Utc>>, Reject> {
    match path.map(|p| p.text(doc, "")) {
        Some(Found::Text { text, number }) => {
            parse_ts(&text, number)
                .map(Some)
                .map_err(|e| Reject::BadField {
                    field,
                    problem: format!(
                        "({}) {text:?} is not a time: {e}",
                        path.map_or("", |p| &p.text)
                    ),
                })
        }
        _ => Ok(None),
    }
}

/// A time as libraries write it: RFC 3339 (a time without offset is UTC), or epoch seconds or
/// milliseconds as a number or numeric text (more than 1e11 is milliseconds: 1973 in seconds).
/// Years 1 to 9999, microseconds (what PostgreSQL stores).
pub fn parse_ts(text: &str, number: bool) -> Result<DateTime<Utc>, String> {
    let t = match text.trim().parse::<f64>() {
        Ok(x) if number || x.is_finite() => {
            let micros = if x.abs() >= 1e11 { x * 1e3 } else { x * 1e6 };
            if !micros.is_finite() || micros.abs() > 2.6e17 {
                return Err("out of range".into());
            }
            DateTime::from_timestamp_micros(micros.round() as i64).ok_or("out of range")?
        }
        _ => match DateTime::parse_from_rfc3339(text) {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .map_err(|_| e.to_string())?
                .and_utc(),
        },
    };
    if !(1..=9999).contains(&t.year()) {
        return Err(format!("year {} is outside 1..9999", t.year()));
    }
    let nanos = t.timestamp_subsec_nanos();
    Ok(t.with_nanosecond(nanos - nanos % 1000).unwrap_or(t))
}

fn check_id<'s>(id: &'s str, what: &'static str) -> Result<&'s str, Reject> {
    if id.len() > MAX_ID_BYTES {
        return Err(Reject::TooLong {
            what,
            bytes: id.len(),
        });
    }
    Ok(id)
}

fn names(paths: &[Path]) -> String {
    paths
        .iter()
        .map(|p| format!("`{}`", p.text))
        .collect::<Vec<_>>()
        .join(", ")
}
