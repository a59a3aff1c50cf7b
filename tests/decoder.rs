//! The decoder against the corpus of malformed checkpoints and against generated input: it never
//! panics, rejects what PostgreSQL could not store, and keeps message identities stable.
//! Needs no server. Inputs proptest finds failing are kept in tests/decoder.proptest-regressions.

use proptest::prelude::*;
use serde_json::{Value, json};
use sweeper::checkpoint::{Checkpoint, check, decode, decode_by_tree, decode_packed};

#[test]
fn every_corpus_file_decodes_as_its_name_says() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (want, _) = name.split_once("--").unwrap();
        let raw = std::fs::read(&path).unwrap();
        let decoded = decode("checkpoint:x", "x", &raw);
        assert_eq!(decoded, decode_by_tree("checkpoint:x", "x", &raw), "{name}");
        assert_eq!(unpacked(&raw), decoded, "{name}");
        assert_eq!(
            check(&raw),
            decoded
                .as_ref()
                .map(|c| c.messages.len())
                .map_err(Clone::clone),
            "{name}"
        );
        let got = match decoded {
            Ok(_) => "ok".to_string(),
            Err(r) => r.to_string().split(':').next().unwrap().to_string(),
        };
        assert_eq!(got, want, "{name}");
        seen += 1;
    }
    assert!(seen >= 40);
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, NUL and lone control characters included.
    proptest::collection::vec(any::<char>(), 0..40).prop_map(|c| c.into_iter().collect())
}

fn message() -> impl Strategy<Value = Value> {
    message_with(text())
}

/// Messages PostgreSQL can store: no NUL anywhere.
fn storable_message() -> impl Strategy<Value = Value> {
    message_with(text().prop_map(|t| t.replace('\0', " ")))
}

fn message_with(content: impl Strategy<Value = String>) -> impl Strategy<Value = Value> {
    (
        proptest::option::of("[a-z0-9-]{1,12}"),
        "(user|assistant|system|tool)",
        content,
        proptest::option::of(0i64..4_000_000_000),
    )
        .prop_map(|(id, role, content, ts)| {
            let mut m = json!({"role": role, "content": content});
            if let Some(id) = id {
                m["id"] = json!(id);
            }
            if let Some(t) = ts {
                m["ts"] = json!(chrono::DateTime::from_timestamp(t, 0).unwrap().to_rfc3339());
            }
            m
        })
}

/// A checkpoint decoded packed (as a sweep reads it), its messages built afterwards (as the
/// store does for what it writes); its message count is the same before and after.
fn unpacked(raw: &[u8]) -> Result<Checkpoint, sweeper::checkpoint::Reject> {
    decode_packed("checkpoint:x", "x", raw).map(|mut c| {
        let n = c.message_count();
        c.unpack();
        assert_eq!((n, c.packed.is_none()), (c.messages.len(), true));
        c
    })
}

/// The fast way of reading a document, packed or not, and a dry run's check, answer as the
/// general way does: the same checkpoint, or the same reject.
fn same_as_the_tree(raw: &[u8]) -> Result<(), TestCaseError> {
    let tree = decode_by_tree("checkpoint:x", "x", raw);
    prop_assert_eq!(&decode("checkpoint:x", "x", raw), &tree);
    prop_assert_eq!(&unpacked(raw), &tree);
    prop_assert_eq!(check(raw), tree.map(|c| c.messages.len()));
    Ok(())
}

/// Any JSON value, nested a little: unknown fields, and fields of the wrong type.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::from),
        Just(json!("2026-11-22T10:00:00Z")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Values a known field may hold: mostly what it should, sometimes not quite.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => Just(json!("2026-11-22T10:07:31.5Z")),
        2 => "[a-z0-9-]{1,12}".prop_map(Value::from),
        1 => Just(json!("yesterday")),
        1 => Just(json!("0000-01-01T00:00:00Z")),
        1 => Just(json!("x".repeat(1025))),
        1 => Just(Value::Null),
        1 => any_json(),
    ]
}

/// A document near the plain shape, valid or one slip away from it: known fields of any type or
/// missing, extra fields, messages plain or not.
fn near_checkpoint() -> impl Strategy<Value = String> {
    let field =
        |name: &'static str| proptest::option::of(field_value()).prop_map(move |v| (name, v));
    let msg = prop_oneof![
        12 => message(),
        1 => any_json(),
        2 => (message(), "(id|role|content|ts|extra)", field_value()).prop_map(|(mut m, k, v)| {
            m[k] = v;
            m
        }),
    ];
    let time = |name: &'static str| prop_oneof![4 => Just((name, None)), 1 => field(name)];
    (
        prop_oneof![8 => proptest::collection::vec(msg, 0..6).prop_map(Some), 1 => Just(None)],
        field("user_id"),
        time("started_at"),
        time("updated_at"),
        proptest::collection::btree_map("[a-z_]{1,8}", any_json(), 0..3),
    )
        .prop_map(|(messages, user, started, updated, extra)| {
            let mut doc: serde_json::Map<String, Value> = extra.into_iter().collect();
            for (name, v) in [user, started, updated] {
                if let Some(v) = v {
                    doc.insert(name.into(), v);
                }
            }
            if let Some(m) = messages {
                doc.insert("messages".into(), Value::from(m));
            }
            Value::Object(doc).to_string()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_fast_way_answers_as_the_general_way(doc in near_checkpoint()) {
        same_as_the_tree(doc.as_bytes())?;
    }

    #[test]
    fn the_fast_way_answers_as_the_general_way_on_broken_text(
        doc in near_checkpoint(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut raw = doc.into_bytes();
        for (at, byte) in flips {
            if !raw.is_empty() {
                let i = at.index(raw.len());
                raw[i] = byte;
            }
        }
        same_as_the_tree(&raw)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode("checkpoint:x", "x", &raw);
    }

    #[test]
    fn mutated_checkpoints_decode_or_reject_but_never_panic(
        n in 0usize..6,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let doc = json!({"updated_at": "2026-11-22T10:07:31Z",
            "messages": (0..n).map(|i| json!({"id": format!("m{i}"), "role": "user", "content": "hi"})).collect::<Vec<_>>()});
        let mut raw = doc.to_string().into_bytes();
        for (at, byte) in flips {
            let i = at.index(raw.len());
            raw[i] = byte;
        }
        if let Ok(c) = decode("checkpoint:x", "x", &raw) {
            // What is accepted is stored verbatim and PostgreSQL can hold it.
            prop_assert_eq!(c.document.as_bytes(), &raw[..]);
            prop_assert!(!c.document.contains("\\u0000"));
        }
    }

    #[test]
    fn generated_checkpoints_decode_with_every_message(messages in proptest::collection::vec(message(), 0..30)) {
        let doc = json!({"user_id": "u", "messages": messages});
        let raw = doc.to_string();
        let holds_nul = raw.contains("\\u0000");
        match decode("checkpoint:x", "x", raw.as_bytes()) {
            Ok(c) => {
                prop_assert!(!holds_nul);
                prop_assert_eq!(c.messages.len(), messages.len());
                for (m, v) in c.messages.iter().zip(&messages) {
                    prop_assert_eq!(&m.content, v["content"].as_str().unwrap());
                    prop_assert_eq!(m.id.as_deref(), v["id"].as_str());
                }
                // Id-less messages get distinct identities; ids may repeat only as the input does.
                let idless: Vec<&str> = c.messages.iter().filter(|m| m.id.is_none()).map(|m| m.identity.as_str()).collect();
                let unique: std::collections::HashSet<&&str> = idless.iter().collect();
                prop_assert_eq!(unique.len(), idless.len());
            }
            Err(r) => {
                prop_assert!(holds_nul, "only NUL is refused here, got {}", r);
                prop_assert!(r.to_string().starts_with("nul_character"));
            }
        }
    }

    #[test]
    fn identities_of_a_longer_checkpoint_extend_the_shorter(clean in proptest::collection::vec(storable_message(), 1..20), cut in any::<prop::sample::Index>()) {
        let k = cut.index(clean.len()) + 1;
        let short = json!({"messages": clean[..k]}).to_string();
        let long = json!({"messages": clean}).to_string();
        let a = decode("k", "x", short.as_bytes()).unwrap();
        let b = decode("k", "x", long.as_bytes()).unwrap();
        let ids = |c: &sweeper::checkpoint::Checkpoint| c.messages.iter().map(|m| m.identity.clone()).collect::<Vec<_>>();
        prop_assert_eq!(ids(&a), ids(&b)[..k].to_vec());
    }
}
