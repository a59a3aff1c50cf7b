//! The document's scalar fields: strings, timestamps PostgreSQL can store, NUL characters it
//! cannot. Pure.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde_json::{Map, Value};

use super::Reject;

pub(super) fn optional_string(
    doc: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, Reject> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(Reject::BadField {
            field,
            problem: format!("is a JSON {}, not a string", json_kind(other)),
        }),
    }
}

pub(super) fn optional_time(
    doc: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<DateTime<Utc>>, Reject> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_time(s).map(Some).map_err(|e| Reject::BadField {
            field,
            problem: format!("{s:?} is not an RFC 3339 timestamp: {e}"),
        }),
        Some(other) => Err(Reject::BadField {
            field,
            problem: format!("is a JSON {}, not a timestamp string", json_kind(other)),
        }),
    }
}

/// An RFC 3339 timestamp PostgreSQL can store: years 1 to 9999, microseconds (finer digits are
/// dropped, as PostgreSQL's binary input does; its text input would round instead).
pub(crate) fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    let t = DateTime::parse_from_rfc3339(s)
        .map_err(|e| e.to_string())?
        .with_timezone(&Utc);
    if !(1..=9999).contains(&t.year()) {
        return Err(format!("year {} is outside 1..9999", t.year()));
    }
    let nanos = t.timestamp_subsec_nanos();
    Ok(t.with_nanosecond(nanos - nanos % 1000).unwrap_or(t))
}

/// PostgreSQL's `text` and `jsonb` cannot hold U+0000, in values or in object keys.
pub(crate) fn holds_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(holds_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    // By table, not `write!("{:02x}")`: formatting took a tenth of a sweep of id-less messages.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}
