//! The fast way to read a well-formed checkpoint: its fields straight from the JSON text, strings
//! borrowed where they hold no escapes, without building a tree of `serde_json::Value`s (building
//! and dropping that tree took a third of a dry run's CPU).
//!
//! It accepts exactly the JSON the tree accepts: other fields are parsed with the same nesting
//! limit and number rules, only not kept. It checks what the general way checks (timestamps,
//! identifier lengths, NUL). Anything else it does not expect (a duplicate field, a number for an
//! id, `null` for a role) is an error here too, and the caller then reads the document the
//! general way, which gives the reason.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{MAX_ID_BYTES, parse_time};

/// The fields of a document `decode` uses, checked.
#[derive(Default)]
pub(super) struct Document<'a> {
    pub messages: Vec<RawMessage<'a>>,
    pub user_id: Option<Cow<'a, str>>,
    pub started_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

pub(super) struct RawMessage<'a> {
    pub id: Option<Cow<'a, str>>,
    pub role: Cow<'a, str>,
    pub content: Cow<'a, str>,
    /// As written: part of an id-less message's identity.
    pub ts: Option<Cow<'a, str>>,
    pub created_at: Option<DateTime<Utc>>,
}

/// Reads `text` as a document; None when it is anything but a plain, valid one.
pub(super) fn read(text: &str) -> Option<Document<'_>> {
    // A string can only hold NUL through a `\u0000` escape: those documents go the general way.
    if text.contains("\\u0000") {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// An identifier no longer than PostgreSQL can index.
fn indexable<'a, E: de::Error>(id: Option<Cow<'a, str>>) -> Result<Option<Cow<'a, str>>, E> {
    match id {
        Some(id) if id.len() > MAX_ID_BYTES => Err(E::custom("identifier too long")),
        id => Ok(id),
    }
}

/// A timestamp PostgreSQL can store (see [`parse_time`]).
fn time<E: de::Error>(ts: &Option<Cow<str>>) -> Result<Option<DateTime<Utc>>, E> {
    ts.as_deref().map(parse_time).transpose().map_err(E::custom)
}

/// A JSON string, borrowed from the input unless it holds escapes.
pub(crate) struct Text<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Any JSON value, checked as `serde_json::Value` would parse it (serde's `IgnoredAny` skips
/// nested values without the nesting limit or the number range) and dropped.
pub(crate) struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Checked)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = Checked;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// Marks field `bit` as seen; a second sight is an error (the tree keeps the last, this way
/// leaves such documents to it).
fn once<E: de::Error>(seen: &mut u8, bit: u8) -> Result<(), E> {
    if *seen & bit != 0 {
        return Err(E::custom("duplicate field"));
    }
    *seen |= bit;
    Ok(())
}

impl<'de> Deserialize<'de> for Document<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(DocumentVisitor)
    }
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = Document<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a checkpoint object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document<'de>, A::Error> {
        let mut doc = Document::default();
        let mut seen = 0u8;
        while let Some(Text(key)) = map.next_key()? {
            let (bit, slot) = match &*key {
                "messages" => {
                    once(&mut seen, 1)?;
                    doc.messages = map.next_value()?;
                    continue;
                }
                "user_id" => {
                    once(&mut seen, 2)?;
                    doc.user_id = indexable(map.next_value::<Option<Text>>()?.map(|t| t.0))?;
                    continue;
                }
                "started_at" => (4, &mut doc.started_at),
                "updated_at" => (8, &mut doc.updated_at),
                _ => {
                    map.next_value::<Checked>()?;
                    continue;
                }
            };
            once(&mut seen, bit)?;
            *slot = time(&map.next_value::<Option<Text>>()?.map(|t| t.0))?;
        }
        if seen & 1 == 0 {
            return Err(de::Error::missing_field("messages"));
        }
        Ok(doc)
    }
}

impl<'de> Deserialize<'de> for RawMessage<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MessageVisitor)
    }
}

struct MessageVisitor;

impl<'de> Visitor<'de> for MessageVisitor {
    type Value = RawMessage<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a message object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawMessage<'de>, A::Error> {
        let (mut id, mut role, mut content, mut ts) = (None, None, None, None);
        let mut seen = 0u8;
        while let Some(Text(key)) = map.next_key()? {
            match &*key {
                "id" => {
                    once(&mut seen, 1)?;
                    id = indexable(map.next_value::<Option<Text>>()?.map(|t| t.0))?;
                }
                "role" => {
                    once(&mut seen, 2)?;
                    role = Some(map.next_value::<Text>()?.0);
                }
                "content" => {
                    once(&mut seen, 4)?;
                    content = Some(map.next_value::<Text>()?.0);
                }
                "ts" => {
                    once(&mut seen, 8)?;
                    ts = map.next_value::<Option<Text>>()?.map(|t| t.0);
                }
                _ => {
                    map.next_value::<Checked>()?;
                }
            }
        }
        Ok(RawMessage {
            id,
            role: role.ok_or_else(|| de::Error::missing_field("role"))?,
            content: content.ok_or_else(|| de::Error::missing_field("content"))?,
            created_at: time(&ts)?,
            ts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_documents_are_read_with_their_strings_borrowed() {
        let doc = read(
            r#"{"user_id": "u-7", "x": [1, {"y": null}], "messages": [
                {"id": "m1", "role": "user", "content": "Hi", "ts": null, "extra": 1.5}]}"#,
        )
        .unwrap();
        assert!(matches!(doc.user_id, Some(Cow::Borrowed("u-7"))));
        assert_eq!(doc.started_at, None);
        let timed = read(r#"{"updated_at": "2026-11-22T10:07:31Z", "messages": []}"#).unwrap();
        assert_eq!(
            timed.updated_at.unwrap().to_rfc3339(),
            "2026-11-22T10:07:31+00:00"
        );
        let m = &doc.messages[0];
        assert!(matches!(m.content, Cow::Borrowed("Hi")));
        assert_eq!(
            (m.id.as_deref(), &*m.role, m.ts.as_deref()),
            (Some("m1"), "user", None)
        );
        let escaped = read(r#"{"messages": [{"role": "u", "content": "a\nb"}]}"#).unwrap();
        assert_eq!(escaped.messages[0].content, "a\nb");
    }

    #[test]
    fn anything_but_the_plain_shape_is_left_to_the_general_way() {
        for doc in [
            r#"[]"#,
            r#"{}"#,
            r#"{"messages": [], "messages": []}"#,
            r#"{"messages": [], "user_id": 7}"#,
            r#"{"messages": [{"role": "u", "role": "u", "content": "x"}]}"#,
            r#"{"messages": [{"role": null, "content": "x"}]}"#,
            r#"{"messages": [{"content": "x"}]}"#,
            r#"{"messages": [{"id": 12, "role": "u", "content": "x"}]}"#,
            // What the general way rejects.
            r#"{"messages": [{"role": "u", "content": "a\u0000"}]}"#,
            r#"{"messages": [], "x": {"\u0000": 1}}"#,
            r#"{"messages": [{"role": "u", "content": "x", "ts": "yesterday"}]}"#,
            r#"{"messages": [], "updated_at": "0000-01-01T00:00:00Z"}"#,
            // What serde's IgnoredAny would let through and `Value` refuses.
            r#"{"messages": [], "x": 1e400}"#,
        ] {
            assert!(read(doc).is_none(), "{doc}");
        }
        let deep = |n| {
            format!(
                "{{\"messages\": [], \"x\": {}1{}}}",
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(read(&deep(50)).is_some());
        assert!(read(&deep(5000)).is_none(), "the nesting limit holds");
        let long = "x".repeat(MAX_ID_BYTES + 1);
        assert!(read(&format!(r#"{{"user_id": "{long}", "messages": []}}"#)).is_none());
        let doc = format!(r#"{{"messages": [{{"id": "{long}", "role": "u", "content": "x"}}]}}"#);
        assert!(read(&doc).is_none());
    }
}
