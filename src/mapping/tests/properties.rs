//! The engine's decode against a straightforward reference: conversations are generated as plain
//! values, written in a library-like shape, decoded through a mapping, and compared with what the
//! generated values say the messages are (the reference never evaluates a path).

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

#[derive(Debug, Clone)]
enum Content {
    Text(String),
    /// Parts; None is a part without text (an image block).
    Parts(Vec<Option<String>>),
    Missing,
}

#[derive(Debug, Clone)]
struct Msg {
    kind: String,
    content: Content,
    id: Option<String>,
    at: Option<i64>,
}

fn msg() -> impl Strategy<Value = Msg> {
    let content = prop_oneof![
        "\\PC{0,12}".prop_map(Content::Text),
        prop::collection::vec(prop::option::of("\\PC{0,6}"), 0..4).prop_map(Content::Parts),
        Just(Content::Missing),
    ];
    (
        prop_oneof![Just("h".to_string()), Just("ai".to_string()), "[a-z]{1,5}"],
        content,
        prop::option::of("[a-z0-9]{1,8}"),
        prop::option::of(0i64..4_000_000_000),
    )
        .prop_map(|(kind, content, id, at)| Msg {
            kind,
            content,
            id,
            at,
        })
}

/// The element a library-like writer stores for `m`.
fn element(m: &Msg) -> Value {
    let mut body = serde_json::Map::new();
    match &m.content {
        Content::Text(s) => {
            body.insert("text".into(), json!(s));
        }
        Content::Parts(parts) => {
            let parts: Vec<Value> = parts
                .iter()
                .map(|p| match p {
                    Some(t) => json!({"type": "text", "t": t}),
                    None => json!({"type": "image"}),
                })
                .collect();
            body.insert("text".into(), Value::Array(parts));
        }
        Content::Missing => {}
    }
    let mut e = json!({"kind": m.kind, "body": body});
    if let Some(id) = &m.id {
        e["mid"] = json!(id);
    }
    if let Some(at) = m.at {
        e["at"] = json!(at);
    }
    e
}

const FIELDS: &str = r#"
[message]
role = "kind"
content = ["body.text", "body.text[].t"]
id = "mid"
ts = "at"
join = " "
[roles]
h = "user"
ai = "assistant"
"#;

/// What the messages are, read off the generated values.
fn reference(
    msgs: &[Msg],
    newest_first: bool,
) -> Vec<(String, String, Option<String>, Option<i64>)> {
    let mut out: Vec<_> = msgs
        .iter()
        .map(|m| {
            let role = match m.kind.as_str() {
                "h" => "user",
                "ai" => "assistant",
                other => other,
            };
            let content = match &m.content {
                Content::Text(s) => s.clone(),
                Content::Parts(p) => p.iter().flatten().cloned().collect::<Vec<_>>().join(" "),
                Content::Missing => String::new(),
            };
            (role.to_string(), content, m.id.clone(), m.at)
        })
        .collect();
    if newest_first {
        out.reverse();
    }
    out
}

fn engine(d: &Decoded) -> Vec<(String, String, Option<String>, Option<i64>)> {
    d.checkpoint
        .messages
        .iter()
        .map(|m| {
            (
                m.role.clone(),
                m.content.clone(),
                m.id.clone(),
                m.created_at.map(|t| t.timestamp()),
            )
        })
        .collect()
}

/// A key decoded packed (messages counted), then unpacked as the store does.
fn unpacked(m: &Mapping, key: &str, raw: Raw) -> crate::checkpoint::Checkpoint {
    let m = std::sync::Arc::new(m.clone());
    let mut c = m.decode_packed(key, raw).unwrap().checkpoint;
    assert_eq!(
        c.message_count(),
        c.packed.as_ref().map_or(0, |p| p.count())
    );
    assert!(c.messages.is_empty());
    c.unpack();
    c
}

proptest! {
    #[test]
    fn list_decode_matches_the_reference(msgs in prop::collection::vec(msg(), 0..8), newest_first: bool) {
        let order = if newest_first { "newest_first" } else { "oldest_first" };
        let m = Mapping::from_toml(&format!("key = \"p:{{id}}\"\nredis_type = \"list\"\norder = \"{order}\"\n{FIELDS}")).unwrap();
        let raw: Vec<Vec<u8>> = msgs.iter().map(|m| element(m).to_string().into_bytes()).collect();
        let d = m.decode("p:c", Raw::List(&raw)).unwrap();
        prop_assert_eq!(engine(&d), reference(&msgs, newest_first));
        // A dry run's check counts the same messages.
        prop_assert_eq!(m.check("p:c", Raw::List(&raw)), Ok(msgs.len()));
        // A sweep's packed decode, unpacked by the store, is the whole decode.
        prop_assert_eq!(&unpacked(&m, "p:c", Raw::List(&raw)), &d.checkpoint);
        prop_assert_eq!(&d.checkpoint.conversation_id, "p:c".strip_prefix("p:").unwrap());
        // Identities: one per message, the id's where there is one.
        let mut ids: Vec<&str> = d.checkpoint.messages.iter().map(|m| m.identity.as_str()).collect();
        for (m, want) in d.checkpoint.messages.iter().zip(&reference(&msgs, newest_first)) {
            if let Some(id) = &want.2 { prop_assert_eq!(&m.identity, &format!("id:{id}")); }
        }
        let n = ids.len();
        ids.sort();
        ids.dedup();
        let distinct_ids = msgs.iter().filter_map(|m| m.id.as_ref()).collect::<std::collections::BTreeSet<_>>().len();
        let idless = msgs.iter().filter(|m| m.id.is_none()).count();
        prop_assert_eq!(ids.len(), distinct_ids + idless, "of {}", n);
        // Restore writes back the same elements, in the same list order.
        let Write::RPush { values, .. } = m.restore_conversation("p:c", &d.checkpoint.document).unwrap() else { panic!() };
        let back: Vec<Value> = values.iter().map(|v| serde_json::from_str(v).unwrap()).collect();
        let orig: Vec<Value> = msgs.iter().map(element).collect();
        prop_assert_eq!(back, orig);
    }

    #[test]
    fn document_decode_matches_the_reference(msgs in prop::collection::vec(msg(), 0..8), user: Option<u32>) {
        let m = Mapping::from_toml(&format!(
            "key = \"d:{{k}}\"\nredis_type = \"string\"\nconversation_id = \"sid\"\nmessages = \"history.items\"\n[conversation]\nuser_id = \"uid\"\n{FIELDS}"
        )).unwrap();
        let items: Vec<Value> = msgs.iter().map(element).collect();
        let mut doc = json!({"sid": "s-1", "history": {"items": items}});
        if let Some(u) = user { doc["uid"] = json!(u); }
        let text = doc.to_string();
        let d = m.decode("d:whatever", Raw::Text(text.as_bytes())).unwrap();
        prop_assert_eq!(engine(&d), reference(&msgs, false));
        prop_assert_eq!(m.check("d:whatever", Raw::Text(text.as_bytes())), Ok(msgs.len()));
        prop_assert_eq!(&unpacked(&m, "d:whatever", Raw::Text(text.as_bytes())), &d.checkpoint);
        prop_assert_eq!(d.checkpoint.conversation_id.as_str(), "s-1");
        prop_assert_eq!(d.checkpoint.user_id, user.map(|u| u.to_string()));
        prop_assert_eq!(&d.checkpoint.document, &text);
    }

    #[test]
    fn one_key_per_message_groups_like_a_sort(msgs in prop::collection::vec(msg(), 1..8)) {
        let m = Mapping::from_toml(&format!(
            "key = \"m:{{c}}:{{n}}\"\nredis_type = \"json\"\nunit = \"message\"\nconversation_id = \"conv\"\n{FIELDS}"
        )).unwrap();
        let units: Vec<Decoded> = msgs.iter().enumerate().rev().map(|(i, msg)| {
            let mut e = element(msg);
            e["conv"] = json!("c");
            // Unique ids, so that each key is one message.
            e["mid"] = json!(format!("m{i}"));
            m.decode(&format!("m:c:{i:03}"), Raw::Text(e.to_string().as_bytes())).unwrap()
        }).collect();
        let got = decode::group(units);
        prop_assert_eq!(got.len(), 1);
        // Reference: a stable sort by (time, key), no time first.
        let mut want: Vec<(Option<i64>, usize)> = msgs.iter().enumerate().map(|(i, m)| (m.at, i)).collect();
        want.sort();
        let want_keys: Vec<String> = want.iter().map(|(_, i)| format!("m:c:{i:03}")).collect();
        prop_assert_eq!(&got[0].keys, &want_keys);
    }
}
