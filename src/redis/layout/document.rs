//! Hash fields and list elements turned into the one JSON document a `json` key would hold, so
//! every layout is decoded the same way. Pure.

use std::collections::BTreeMap;

use super::Fetched;
use crate::checkpoint::Reject;

/// `["a","b"]` from byte strings, invalid UTF-8 replaced: what a reject shows of a hash or list.
pub fn lossy_json_array(items: &[Vec<u8>]) -> Vec<u8> {
    let strings: Vec<String> = items
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    serde_json::to_vec(&strings).expect("strings serialize")
}

fn utf8(b: &[u8]) -> Result<&str, Reject> {
    std::str::from_utf8(b).map_err(|e| Reject::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })
}

/// The document of a hash: its fields, with `messages` and any field holding a JSON object or
/// array parsed, the others kept as strings. Fields are sorted by name, so the same hash always
/// gives the same document (and content hash), whatever order Redis returns them in. Only a
/// `messages` field that is not JSON makes the hash invalid.
pub fn hash_document(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Fetched {
    let build = |fields: &[(Vec<u8>, Vec<u8>)]| -> Result<Vec<u8>, Reject> {
        let mut doc = BTreeMap::new();
        for (name, value) in fields {
            let name = utf8(name)?;
            let text = utf8(value)?;
            let v = if name == "messages" {
                serde_json::from_str(text)
                    .map_err(|e| Reject::NotJson(format!("hash field `messages`: {e}")))?
            } else {
                structured(text).unwrap_or_else(|| serde_json::Value::String(text.to_string()))
            };
            doc.insert(name.to_string(), v);
        }
        Ok(serde_json::to_vec(&doc).expect("a JSON value serializes"))
    };
    match build(&fields) {
        Ok(doc) => Fetched::Value(doc),
        Err(reject) => {
            let mut shown = serde_json::Map::new();
            for (k, v) in &fields {
                shown.insert(
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned().into(),
                );
            }
            Fetched::Invalid {
                reject,
                raw: serde_json::to_vec(&shown).expect("strings serialize"),
            }
        }
    }
}

/// A field holding a JSON object or array, parsed; None for anything else (kept as a string).
fn structured(text: &str) -> Option<serde_json::Value> {
    if !text.trim_start().starts_with(['{', '[']) {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .filter(|v| v.is_object() || v.is_array())
}

/// The document of a list of message JSON objects, oldest first: `{"messages": [...]}`.
pub fn list_document(elements: Vec<Vec<u8>>) -> Fetched {
    let build = |elements: &[Vec<u8>]| -> Result<Vec<u8>, Reject> {
        let mut messages = Vec::with_capacity(elements.len());
        for (i, e) in elements.iter().enumerate() {
            let text = utf8(e)?;
            messages.push(
                serde_json::from_str::<serde_json::Value>(text)
                    .map_err(|err| Reject::NotJson(format!("list element {i}: {err}")))?,
            );
        }
        Ok(
            serde_json::to_vec(&serde_json::json!({ "messages": messages }))
                .expect("a JSON value serializes"),
        )
    };
    match build(&elements) {
        Ok(doc) => Fetched::Value(doc),
        Err(reject) => Fetched::Invalid {
            reject,
            raw: lossy_json_array(&elements),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_becomes_a_document_with_sorted_fields() {
        let h = |pairs: &[(&str, &str)]| {
            hash_document(
                pairs
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .collect(),
            )
        };
        let got = h(&[
            ("user_id", "u-1"),
            ("messages", r#"[{"role":"user","content":"hi"}]"#),
            ("metadata", r#"{"channel":"web"}"#),
            ("note", "[not json"),
        ]);
        // Text that only looks like JSON stays text.
        let Fetched::Value(doc) = got else {
            panic!("{got:?}")
        };
        assert!(
            String::from_utf8(doc)
                .unwrap()
                .contains(r#""note":"[not json""#)
        );
        let got = h(&[
            ("user_id", "u-1"),
            ("messages", r#"[{"role":"user","content":"hi"}]"#),
            ("metadata", r#"{"channel":"web"}"#),
            ("started_at", "2026-11-22T10:00:00Z"),
        ]);
        let same = h(&[
            ("started_at", "2026-11-22T10:00:00Z"),
            ("metadata", r#"{"channel":"web"}"#),
            ("messages", r#"[{"role":"user","content":"hi"}]"#),
            ("user_id", "u-1"),
        ]);
        assert_eq!(got, same, "field order does not matter");
        let Fetched::Value(doc) = got else {
            panic!("{got:?}")
        };
        assert_eq!(
            String::from_utf8(doc).unwrap(),
            r#"{"messages":[{"content":"hi","role":"user"}],"metadata":{"channel":"web"},"started_at":"2026-11-22T10:00:00Z","user_id":"u-1"}"#
        );
        let bad = h(&[("messages", "not json")]);
        assert!(
            matches!(&bad, Fetched::Invalid { reject: Reject::NotJson(e), raw } if e.starts_with("hash field `messages`") && raw == br#"{"messages":"not json"}"#),
            "{bad:?}"
        );
        let bin = hash_document(vec![(b"messages".to_vec(), vec![0xff])]);
        assert!(matches!(
            bin,
            Fetched::Invalid {
                reject: Reject::NotUtf8 { .. },
                ..
            }
        ));
    }

    #[test]
    fn a_list_becomes_the_messages_of_a_document() {
        let l =
            |items: &[&str]| list_document(items.iter().map(|i| i.as_bytes().to_vec()).collect());
        assert_eq!(
            l(&[r#"{"role":"user","content":"a"}"#, r#"{"role":"assistant","content":"b"}"#]),
            Fetched::Value(
                br#"{"messages":[{"content":"a","role":"user"},{"content":"b","role":"assistant"}]}"#
                    .to_vec()
            )
        );
        let bad = l(&[r#"{"role":"user","content":"a"}"#, "oops"]);
        assert!(
            matches!(&bad, Fetched::Invalid { reject: Reject::NotJson(e), .. } if e.starts_with("list element 1")),
            "{bad:?}"
        );
    }
}
