//! The decoder against the corpus of malformed checkpoints and against generated input: it never
//! panics, rejects what PostgreSQL could not store, and keeps message identities stable.
//! Needs no server. Inputs proptest finds failing are kept in tests/decoder.proptest-regressions.

use proptest::prelude::*;
use serde_json::{Value, json};
use sweeper::checkpoint::decode;

#[test]
fn every_corpus_file_decodes_as_its_name_says() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (want, _) = name.split_once("--").unwrap();
        let raw = std::fs::read(&path).unwrap();
        let got = match decode("checkpoint:x", "x", &raw) {
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

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
