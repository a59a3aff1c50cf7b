//! A JSON value whose strings borrow from the text read, the tree a mapping walks. Building a
//! `serde_json::Value` for each list element (a `String` per key and per string, a map per
//! object) took most of a mapping sweep's CPU; this tree allocates a `Vec` per array and object
//! and nothing per string without escapes. It accepts exactly the JSON `Value` accepts (the same
//! parser: nesting limit, number rules), and a duplicate key reads as its last value, as there.
//! A mapping reads a few fields of each message: [`Json::parse_wanted`] keeps only those (the
//! rest is checked as JSON and dropped), which roughly halves the parse of a chat library's
//! message (LangChain's carries seven fields no mapping reads).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

use crate::checkpoint::borrowed::{Checked, Text};

/// The parts of a value a mapping reads: all of it, or some fields of an object (of each
/// object of an array: a path's `[]` steps read every element alike).
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    All,
    Fields(Vec<(String, Want)>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Fields in the order written.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parses JSON text, borrowing its strings.
    pub fn parse(text: &'a str) -> serde_json::Result<Json<'a>> {
        serde_json::from_str(text)
    }

    /// Parses JSON text keeping only what `want` reads: the same text is accepted or refused as
    /// by [`Json::parse`], and the paths of `want` find the same values.
    pub fn parse_wanted(text: &'a str, want: &Want) -> serde_json::Result<Json<'a>> {
        let mut de = serde_json::Deserializer::from_str(text);
        let v = Wanted(want).deserialize(&mut de)?;
        de.end()?;
        Ok(v)
    }

    /// Parses JSON text held only for a while (a string field holding JSON): owns its strings.
    pub fn parse_owned(text: &str) -> serde_json::Result<Json<'static>> {
        Json::parse(text).map(Json::into_owned)
    }

    pub fn into_owned(self) -> Json<'static> {
        match self {
            Json::Null => Json::Null,
            Json::Bool(b) => Json::Bool(b),
            Json::Number(n) => Json::Number(n),
            Json::String(s) => Json::String(Cow::Owned(s.into_owned())),
            Json::Array(items) => Json::Array(items.into_iter().map(Json::into_owned).collect()),
            Json::Object(fields) => Json::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned()))
                    .collect(),
            ),
        }
    }

    /// A field of an object (its last value when written twice, as `serde_json::Value` reads it).
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(fields) => fields.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }

    /// The kind, as rejects name it (the words of [`crate::checkpoint::json_kind`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "boolean",
            Json::Number(_) => "number",
            Json::String(_) => "string",
            Json::Array(_) => "array",
            Json::Object(_) => "object",
        }
    }

    /// Whether a string or key anywhere holds NUL, which PostgreSQL text cannot store.
    pub fn holds_nul(&self) -> bool {
        match self {
            Json::String(s) => s.contains('\0'),
            Json::Array(items) => items.iter().any(Json::holds_nul),
            Json::Object(fields) => fields
                .iter()
                .any(|(k, v)| k.contains('\0') || v.holds_nul()),
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(n.into()))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Json<'de>, E> {
        // The parser gives finite numbers only.
        Number::from_f64(n)
            .map(Json::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some((Text(k), v)) = map.next_entry::<Text, Json>()? {
            fields.push((k, v));
        }
        Ok(Json::Object(fields))
    }
}

/// A value parsed keeping the parts wanted.
struct Wanted<'w>(&'w Want);

impl<'de> DeserializeSeed<'de> for Wanted<'_> {
    type Value = Json<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        match self.0 {
            Want::All => Json::deserialize(d),
            Want::Fields(_) => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Wanted<'_> {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json<'de>, E> {
        JsonVisitor.visit_unit()
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Json<'de>, E> {
        JsonVisitor.visit_bool(b)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Json<'de>, E> {
        JsonVisitor.visit_u64(n)
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Json<'de>, E> {
        JsonVisitor.visit_i64(n)
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Json<'de>, E> {
        JsonVisitor.visit_f64(n)
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Json<'de>, E> {
        JsonVisitor.visit_borrowed_str(s)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Json<'de>, E> {
        JsonVisitor.visit_str(s)
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Json<'de>, E> {
        JsonVisitor.visit_string(s)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(Wanted(self.0))? {
            items.push(v);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let Want::Fields(wanted) = self.0 else {
            return JsonVisitor.visit_map(map);
        };
        let mut fields = Vec::with_capacity(wanted.len());
        while let Some(Text(k)) = map.next_key::<Text>()? {
            match wanted.iter().find(|(f, _)| *f == k) {
                Some((_, w)) => {
                    let v = map.next_value_seed(Wanted(w))?;
                    fields.push((k, v));
                }
                None => {
                    map.next_value::<Checked>()?;
                }
            }
        }
        Ok(Json::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_serde_json_reads_and_refuses_what_it_refuses() {
        let text =
            r#"{"a": "x", "b": [1, -2, 2.5, 1e400, true, null], "c": {"d": "e\"f"}, "a": "y"}"#;
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        let j = Json::parse(text);
        // 1e400 is out of range for both.
        assert_eq!(v, serde_json::Value::Null);
        assert!(j.is_err());
        let text = r#"{"a": "x", "b": [1, -2, 2.5, true, null], "c": {"d": "e\"f"}, "a": "y"}"#;
        let j = Json::parse(text).unwrap();
        assert_eq!(
            j.get("a"),
            Some(&Json::String("y".into())),
            "the last of a duplicate"
        );
        assert!(
            matches!(j.get("c").and_then(|c| c.get("d")), Some(Json::String(Cow::Owned(s))) if s == "e\"f")
        );
        let Some(Json::Array(b)) = j.get("b") else {
            panic!()
        };
        let nums: Vec<String> = b
            .iter()
            .filter_map(|x| match x {
                Json::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(nums, ["1", "-2", "2.5"]);
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "\"\u{1}\"", "01"] {
            assert!(Json::parse(bad).is_err(), "{bad:?}");
            assert!(
                serde_json::from_str::<serde_json::Value>(bad).is_err(),
                "{bad:?}"
            );
        }
        assert!(Json::parse(r#"{"k\u0000": 1}"#).unwrap().holds_nul());
        assert!(!Json::parse(r#"{"k\\u0000": 1}"#).unwrap().holds_nul());
    }
}
