//! The checkpoint document: bytes from Redis decoded and validated into what PostgreSQL stores, or a
//! [`Reject`] saying why not. Pure: no I/O, so every rule is unit-tested here.
//!
//! The document (every field but `messages` optional, unknown fields kept verbatim):
//! ```json
//! {"conversation_id": "c-42", "user_id": "u-7", "started_at": "2026-11-22T10:00:00Z",
//!  "updated_at": "2026-11-22T10:07:31Z",
//!  "messages": [{"id": "m1", "role": "user", "content": "Hi", "ts": "2026-11-22T10:00:00Z"}],
//!  "metadata": {"channel": "web"}}
//! ```

pub(crate) mod borrowed;
mod fields;
mod reject;

pub(crate) use fields::{hex, parse_time};
pub(crate) use fields::{holds_nul, json_kind};
use fields::{optional_string, optional_time};
pub use reject::Reject;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Identifiers (conversation id, message id, user id) longer than this are refused: PostgreSQL
/// indexes them, and an index row cannot hold much more than 2.7 KB.
pub const MAX_ID_BYTES: usize = 1024;

/// A valid checkpoint, ready for the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub redis_key: String,
    pub conversation_id: String,
    pub user_id: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub messages: Vec<Message>,
    /// Set while `messages` is not decoded yet ([`decode_packed`], or a mapping's): how many the
    /// document holds. The store decodes them ([`Checkpoint::unpack`]) only for the
    /// conversations it writes, so a re-sweep of unchanged conversations builds no message rows.
    pub packed: Option<Packed>,
    /// The document exactly as Redis held it; PostgreSQL parses it into `jsonb`.
    pub document: String,
    /// SHA-256 of the document: an identical re-sweep writes nothing.
    pub content_hash: [u8; 32],
    /// Whether message `i`'s text is the document's `messages[i].content` (a checkpoint document;
    /// a mapped layout's document may hold it elsewhere): the store then keeps it only there.
    pub texts_in_document: bool,
}

/// The messages of a checkpoint not decoded yet: how many, and who decodes them.
#[derive(Debug, Clone)]
pub enum Packed {
    /// A checkpoint document (decoded here).
    Document(usize),
    /// A layout's document, decoded by its mapping.
    Mapped(usize, Arc<dyn Unpack>),
}

impl Packed {
    pub fn count(&self) -> usize {
        match self {
            Packed::Document(n) | Packed::Mapped(n, _) => *n,
        }
    }
}

impl PartialEq for Packed {
    fn eq(&self, other: &Packed) -> bool {
        self.count() == other.count()
            && matches!(self, Packed::Document(_)) == matches!(other, Packed::Document(_))
    }
}

/// Decodes the messages of a document checked when it was read (a mapping, which depends on
/// this module, so not named here).
pub trait Unpack: fmt::Debug + Send + Sync {
    /// The messages of `document`, read from `redis_key`: it was checked, so this cannot fail.
    fn messages(&self, redis_key: &str, document: &str) -> Vec<Message>;
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The message's identity within its conversation: `id:<id>` when the message has an `id`,
    /// else `h:<hash>` of role, content, ts and how many identical messages came before it.
    pub identity: String,
    pub id: Option<String>,
    pub role: String,
    pub content: String,
    pub created_at: Option<DateTime<Utc>>,
    /// One key per message (a mapping's `unit = "message"`): the key that held the message and
    /// its value as JSON, kept so restore can write it back under its own key.
    pub source: Option<Box<MessageSource>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MessageSource {
    pub redis_key: String,
    pub element: String,
}

/// The conversation id of a key: the part after the pattern's literal prefix.
pub fn conversation_id<'k>(key: &'k str, prefix: &str) -> Result<&'k str, Reject> {
    let id = key.strip_prefix(prefix).unwrap_or(key);
    if id.is_empty() {
        return Err(Reject::EmptyConversationId);
    }
    if id.contains('\0') {
        return Err(Reject::NulCharacter);
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Reject::TooLong {
            what: "conversation id",
            bytes: id.len(),
        });
    }
    Ok(id)
}

/// Decodes one checkpoint value read from `redis_key`.
pub fn decode(redis_key: &str, conversation_id: &str, raw: &[u8]) -> Result<Checkpoint, Reject> {
    decode_with(redis_key, conversation_id, raw, true)
}

/// [`decode`] without its fast way: for the tests that hold the two to the same answers.
#[doc(hidden)]
pub fn decode_by_tree(
    redis_key: &str,
    conversation_id: &str,
    raw: &[u8],
) -> Result<Checkpoint, Reject> {
    decode_with(redis_key, conversation_id, raw, false)
}

/// What a checkpoint takes from its document, whichever way the document was read.
struct Fields {
    user_id: Option<String>,
    started_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
    messages: Vec<Message>,
}

fn decode_with(
    redis_key: &str,
    conversation_id: &str,
    raw: &[u8],
    fast: bool,
) -> Result<Checkpoint, Reject> {
    let text = std::str::from_utf8(raw).map_err(|e| Reject::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    // Nearly every checkpoint is well-formed: those are read the fast way. Any other goes the
    // general way, which is the one that says what is wrong.
    let fields = match fast.then(|| fast_fields(text)).flatten() {
        Some(f) => f,
        None => tree_fields(text)?,
    };
    Ok(Checkpoint {
        redis_key: redis_key.to_string(),
        conversation_id: conversation_id.to_string(),
        user_id: fields.user_id,
        started_at: fields.started_at,
        updated_at: fields.updated_at,
        messages: fields.messages,
        packed: None,
        document: text.to_string(),
        content_hash: Sha256::digest(raw).into(),
        texts_in_document: true,
    })
}

/// [`decode`], but a plain valid document's messages are only counted, not built: they are built
/// by [`Checkpoint::unpack`] when the checkpoint is written. Rejects are the same as `decode`'s.
pub fn decode_packed(
    redis_key: &str,
    conversation_id: &str,
    raw: &[u8],
) -> Result<Checkpoint, Reject> {
    let text = std::str::from_utf8(raw).ok();
    let Some((text, doc)) = text.and_then(|t| Some((t, borrowed::read(t)?))) else {
        return decode_with(redis_key, conversation_id, raw, false);
    };
    Ok(Checkpoint {
        redis_key: redis_key.to_string(),
        conversation_id: conversation_id.to_string(),
        user_id: doc.user_id.map(Cow::into_owned),
        started_at: doc.started_at,
        updated_at: doc.updated_at,
        messages: Vec::new(),
        packed: Some(Packed::Document(doc.messages.len())),
        document: text.to_string(),
        content_hash: Sha256::digest(raw).into(),
        texts_in_document: true,
    })
}

impl Checkpoint {
    /// How many messages the checkpoint holds, decoded or not.
    pub fn message_count(&self) -> usize {
        self.packed
            .as_ref()
            .map_or(self.messages.len(), Packed::count)
    }

    /// Decodes the messages of a packed checkpoint (see [`decode_packed`]); nothing otherwise.
    pub fn unpack(&mut self) {
        match self.packed.take() {
            None => {}
            Some(Packed::Document(_)) => {
                let fields = fast_fields(&self.document).expect("read the same way when packed");
                self.messages = fields.messages;
            }
            Some(Packed::Mapped(_, mapping)) => {
                self.messages = mapping.messages(&self.redis_key, &self.document);
            }
        }
    }
}

/// The fields of a plain, valid document read without a tree of values (see [`borrowed`]);
/// None for anything [`tree_fields`] might answer otherwise, rejects included.
fn fast_fields(text: &str) -> Option<Fields> {
    let doc = borrowed::read(text)?;
    let mut seen = HashMap::new();
    let messages = doc
        .messages
        .into_iter()
        .map(|m| {
            let identity = identity(
                m.id.as_deref(),
                &m.role,
                &m.content,
                m.ts.as_deref(),
                &mut seen,
            );
            Message {
                identity,
                id: m.id.map(Cow::into_owned),
                role: m.role.into_owned(),
                content: m.content.into_owned(),
                created_at: m.created_at,
                source: None,
            }
        })
        .collect();
    Some(Fields {
        user_id: doc.user_id.map(Cow::into_owned),
        started_at: doc.started_at,
        updated_at: doc.updated_at,
        messages,
    })
}

/// How many messages a checkpoint holds, checked as [`decode`] checks it (the same rejects) but
/// without building the rows a write needs: what a dry run shows.
pub fn check(raw: &[u8]) -> Result<usize, Reject> {
    let fast = std::str::from_utf8(raw).ok().and_then(borrowed::read);
    match fast {
        Some(doc) => Ok(doc.messages.len()),
        None => decode_with("", "", raw, false).map(|c| c.messages.len()),
    }
}

/// The fields of any document, through a tree of `serde_json::Value`s: every reject comes from
/// here.
fn tree_fields(text: &str) -> Result<Fields, Reject> {
    let value: Value = serde_json::from_str(text).map_err(|e| Reject::NotJson(e.to_string()))?;
    let Value::Object(doc) = &value else {
        return Err(Reject::NotObject(json_kind(&value)));
    };
    if holds_nul(&value) {
        return Err(Reject::NulCharacter);
    }
    let messages = match doc.get("messages") {
        None => return Err(Reject::BadMessages("the document has no `messages`".into())),
        Some(Value::Array(items)) => decode_messages(items)?,
        Some(other) => {
            return Err(Reject::BadMessages(format!(
                "`messages` is a JSON {}, not an array",
                json_kind(other)
            )));
        }
    };
    let user_id = optional_string(doc, "user_id")?;
    if let Some(u) = user_id.as_ref().filter(|u| u.len() > MAX_ID_BYTES) {
        return Err(Reject::TooLong {
            what: "user_id",
            bytes: u.len(),
        });
    }
    Ok(Fields {
        user_id,
        started_at: optional_time(doc, "started_at")?,
        updated_at: optional_time(doc, "updated_at")?,
        messages,
    })
}

fn decode_messages(items: &[Value]) -> Result<Vec<Message>, Reject> {
    // Identical id-less messages ("ok", "ok") are told apart by how many came before them.
    let mut seen: HashMap<[u8; 32], u32> = HashMap::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(m) = item else {
            return Err(Reject::BadMessages(format!(
                "message {i} is a JSON {}, not an object",
                json_kind(item)
            )));
        };
        let text = |field: &str| match m.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(Reject::BadMessages(format!(
                "message {i}: `{field}` is a JSON {}, not a string",
                json_kind(other)
            ))),
            None => Err(Reject::BadMessages(format!("message {i} has no `{field}`"))),
        };
        let role = text("role")?;
        let content = text("content")?;
        let id = match m.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                return Err(Reject::BadMessages(format!(
                    "message {i}: `id` is a JSON {}, not a string",
                    json_kind(other)
                )));
            }
        };
        let ts_raw = match m.get("ts") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => {
                return Err(Reject::BadMessages(format!(
                    "message {i}: `ts` is a JSON {}, not a timestamp string",
                    json_kind(other)
                )));
            }
        };
        let created_at = ts_raw
            .map(|s| {
                parse_time(s).map_err(|e| {
                    Reject::BadMessages(format!("message {i}: `ts` {s:?} is not RFC 3339: {e}"))
                })
            })
            .transpose()?;
        if let Some(id) = id.as_ref().filter(|id| id.len() > MAX_ID_BYTES) {
            return Err(Reject::TooLong {
                what: "message id",
                bytes: id.len(),
            });
        }
        out.push(Message {
            identity: identity(id.as_deref(), &role, &content, ts_raw, &mut seen),
            id,
            role,
            content,
            created_at,
            source: None,
        });
    }
    Ok(out)
}

/// A message's identity within its conversation (see [`Message::identity`]). `seen` counts the
/// id-less messages so far, by content.
pub(crate) fn identity(
    id: Option<&str>,
    role: &str,
    content: &str,
    ts_raw: Option<&str>,
    seen: &mut HashMap<[u8; 32], u32>,
) -> String {
    if let Some(id) = id {
        return format!("id:{id}");
    }
    let mut h = Sha256::new();
    for part in [role, content, ts_raw.unwrap_or("")] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let base: [u8; 32] = h.finalize().into();
    let nth = seen.entry(base).or_insert(0);
    let mut h = Sha256::new();
    h.update(base);
    h.update(nth.to_le_bytes());
    *nth += 1;
    format!("h:{}", hex(&h.finalize()[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"conversation_id": "c-42", "user_id": "u-7", "started_at": "2026-11-22T10:00:00Z",
        "updated_at": "2026-11-22T10:07:31Z",
        "messages": [{"id": "m1", "role": "user", "content": "Hi", "ts": "2026-11-22T10:00:00Z"},
                     {"id": "m2", "role": "assistant", "content": "Hello!", "ts": "2026-11-22T10:00:02Z"}],
        "metadata": {"channel": "web"}}"#;

    fn dec(raw: &str) -> Result<Checkpoint, Reject> {
        decode("checkpoint:c-42", "c-42", raw.as_bytes())
    }

    #[test]
    fn the_documented_example_decodes_in_full() {
        let c = dec(GOOD).unwrap();
        assert_eq!(c.conversation_id, "c-42");
        assert_eq!(c.user_id.as_deref(), Some("u-7"));
        assert_eq!(
            c.updated_at.unwrap().to_rfc3339(),
            "2026-11-22T10:07:31+00:00"
        );
        assert_eq!(c.messages.len(), 2);
        assert_eq!(c.messages[1].identity, "id:m2");
        assert_eq!(c.messages[1].content, "Hello!");
        assert_eq!(
            c.document, GOOD,
            "the document is kept verbatim, unknown fields included"
        );
        assert_eq!(
            c.content_hash,
            <[u8; 32]>::from(Sha256::digest(GOOD.as_bytes()))
        );
    }

    #[test]
    fn only_messages_is_required() {
        let c = dec(r#"{"messages": [{"role": "user", "content": "x"}]}"#).unwrap();
        assert_eq!(c.user_id, None);
        assert_eq!(c.updated_at, None);
        assert_eq!(c.messages[0].id, None);
        assert_eq!(c.messages[0].created_at, None);
        assert!(c.messages[0].identity.starts_with("h:"));
        let empty = dec(r#"{"messages": []}"#).unwrap();
        assert!(empty.messages.is_empty());
    }

    #[test]
    fn idless_identity_is_stable_and_tells_repeats_apart() {
        let doc = r#"{"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "ok"},
                                   {"role": "assistant", "content": "ok"}]}"#;
        let a = dec(doc).unwrap();
        let ids: Vec<_> = a.messages.iter().map(|m| m.identity.clone()).collect();
        assert_ne!(ids[0], ids[1], "two identical messages are two messages");
        assert_ne!(ids[0], ids[2], "role is part of the identity");
        // The same messages in a longer checkpoint keep their identities: no duplicates on re-sweep.
        let longer = r#"{"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "ok"},
                                      {"role": "assistant", "content": "ok"}, {"role": "user", "content": "bye"}]}"#;
        let b = dec(longer).unwrap();
        let ids_b: Vec<_> = b.messages.iter().map(|m| m.identity.clone()).collect();
        assert_eq!(ids[..], ids_b[..3]);
        // A timestamp tells apart the same words said at another time.
        let with_ts = dec(
            r#"{"messages": [{"role": "user", "content": "ok", "ts": "2026-01-01T00:00:00Z"}]}"#,
        )
        .unwrap();
        assert_ne!(with_ts.messages[0].identity, ids[0]);
    }

    #[test]
    fn timestamps_are_what_postgresql_stores() {
        let year0 =
            r#"{"messages": [{"role": "u", "content": "x", "ts": "0000-01-01T00:00:00Z"}]}"#;
        assert_eq!(code(dec(year0).unwrap_err()), "bad_messages");
        let fine = r#"{"updated_at": "2026-11-22T10:07:31.9999995Z", "messages": []}"#;
        let c = dec(fine).unwrap();
        assert_eq!(
            c.updated_at.unwrap().to_rfc3339(),
            "2026-11-22T10:07:31.999999+00:00",
            "truncated to microseconds"
        );
    }

    #[test]
    fn numeric_ids_are_accepted_as_text() {
        let c = dec(r#"{"user_id": 7, "messages": [{"id": 12, "role": "user", "content": "x"}]}"#)
            .unwrap();
        assert_eq!(c.user_id.as_deref(), Some("7"));
        assert_eq!(c.messages[0].identity, "id:12");
    }

    fn code(r: Reject) -> String {
        r.to_string().split(':').next().unwrap().to_string()
    }

    #[test]
    fn every_malformed_shape_is_rejected_with_its_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not_json"),
            (b"{\"messages\": [", "not_json"),
            (b"[1, 2]", "not_object"),
            (b"\"a string\"", "not_object"),
            (b"null", "not_object"),
            (b"{}", "bad_messages"),
            (b"{\"messages\": {}}", "bad_messages"),
            (b"{\"messages\": [1]}", "bad_messages"),
            (b"{\"messages\": [{\"role\": \"user\"}]}", "bad_messages"),
            (
                b"{\"messages\": [{\"role\": 1, \"content\": \"x\"}]}",
                "bad_messages",
            ),
            (
                b"{\"messages\": [{\"role\": \"u\", \"content\": \"x\", \"ts\": \"yesterday\"}]}",
                "bad_messages",
            ),
            (
                b"{\"messages\": [{\"role\": \"u\", \"content\": \"x\", \"id\": {}}]}",
                "bad_messages",
            ),
            (
                b"{\"messages\": [], \"updated_at\": \"10 past 10\"}",
                "bad_field",
            ),
            (b"{\"messages\": [], \"started_at\": 5}", "bad_field"),
            (b"{\"messages\": [], \"user_id\": [\"u\"]}", "bad_field"),
            (
                b"{\"messages\": [{\"role\": \"u\", \"content\": \"a\\u0000b\"}]}",
                "nul_character",
            ),
            (
                b"{\"messages\": [], \"meta\": {\"k\\u0000\": 1}}",
                "nul_character",
            ),
            (b"{\"messages\": []}\xff", "not_utf8"),
            (b"\xc3\x28", "not_utf8"),
            (b"", "not_json"),
        ];
        for (raw, want) in cases {
            let got = decode("k", "c", raw).expect_err(&String::from_utf8_lossy(raw));
            assert_eq!(
                code(got.clone()),
                *want,
                "{:?}: {got}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn deep_nesting_is_a_reject_not_a_crash() {
        let deep = format!(
            "{{\"messages\": [], \"x\": {}1{}}}",
            "[".repeat(50),
            "]".repeat(50)
        );
        assert!(dec(&deep).is_ok(), "50 levels are fine");
        let too_deep = format!(
            "{{\"messages\": [], \"x\": {}1{}}}",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert_eq!(code(dec(&too_deep).unwrap_err()), "not_json");
    }

    #[test]
    fn identifiers_too_long_to_index_are_rejected() {
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let doc = format!(r#"{{"messages": [{{"id": "{long}", "role": "u", "content": "x"}}]}}"#);
        assert_eq!(code(dec(&doc).unwrap_err()), "too_long");
        let doc = format!(r#"{{"user_id": "{long}", "messages": []}}"#);
        assert_eq!(code(dec(&doc).unwrap_err()), "too_long");
        let key = format!("checkpoint:{long}");
        assert_eq!(
            code(conversation_id(&key, "checkpoint:").unwrap_err()),
            "too_long"
        );
        let ok = "x".repeat(MAX_ID_BYTES);
        assert!(dec(&format!(r#"{{"user_id": "{ok}", "messages": []}}"#)).is_ok());
    }

    #[test]
    fn conversation_id_is_the_key_after_the_prefix() {
        assert_eq!(
            conversation_id("checkpoint:c-42", "checkpoint:"),
            Ok("c-42")
        );
        assert_eq!(conversation_id("checkpoint:a:b", "checkpoint:"), Ok("a:b"));
        assert_eq!(
            conversation_id("checkpoint:", "checkpoint:"),
            Err(Reject::EmptyConversationId)
        );
        assert_eq!(
            conversation_id("checkpoint:a\0", "checkpoint:"),
            Err(Reject::NulCharacter)
        );
    }
}
