//! The mapping files shipped in docs/layouts/ as examples parse, and decode the shapes they
//! document: the two seed designs (a session document; the `chat:recent:{chatId}` list), which
//! the native formats reject (`message 0 has no role`).

use std::path::Path;

use sweeper::mapping::{Mapping, Raw, Write};

fn mapping(file: &str) -> Mapping {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/layouts")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    Mapping::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn roles_and_text(m: &Mapping, key: &str, raw: Raw) -> (String, Vec<(String, String)>) {
    let d = m.decode(key, raw).unwrap_or_else(|r| panic!("{key}: {r}"));
    let msgs = d
        .checkpoint
        .messages
        .iter()
        .map(|m| (m.role.clone(), m.content.clone()))
        .collect();
    (d.checkpoint.conversation_id, msgs)
}

#[test]
fn every_shipped_mapping_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/layouts");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            mapping(p.file_name().unwrap().to_str().unwrap());
            n += 1;
        }
    }
    assert!(n >= 2, "the two seed mappings at least");
}

#[test]
fn the_session_document_seed() {
    let m = mapping("session-document.toml");
    let doc = r#"{"_id": "65f0", "session_id": "chat-abc-123", "user_id": 456,
        "start_time": "2026-11-22T10:00:00Z",
        "messages": [{"sender": "user", "text": "Hi", "timestamp": "2026-11-22T10:00:00Z"},
                     {"sender": "bot", "text": "Hello!", "timestamp": "2026-11-22T10:00:02Z"}]}"#;
    let d = m
        .decode("session:chat-abc-123", Raw::Text(doc.as_bytes()))
        .unwrap();
    assert_eq!(d.checkpoint.conversation_id, "chat-abc-123");
    assert_eq!(d.checkpoint.user_id.as_deref(), Some("456"));
    assert_eq!(
        d.checkpoint.started_at.unwrap().to_rfc3339(),
        "2026-11-22T10:00:00+00:00"
    );
    let (_, msgs) = roles_and_text(&m, "session:x", Raw::Text(doc.as_bytes()));
    assert_eq!(
        msgs,
        [
            ("user".into(), "Hi".into()),
            ("assistant".into(), "Hello!".into())
        ]
    );
    assert_eq!(
        m.restore_conversation("session:chat-abc-123", &d.checkpoint.document)
            .unwrap(),
        Write::Set {
            key: "session:chat-abc-123".into(),
            value: doc.into()
        }
    );
}

#[test]
fn the_chat_recent_list_seed() {
    let m = mapping("chat-recent-list.toml");
    assert_eq!(m.pattern(), "chat:recent:*");
    let items: Vec<Vec<u8>> = [
        r#"{"messageId": "m-1", "chatId": "c-9", "senderId": "u-7", "content": "Hi", "timestamp": "2026-11-22T10:00:00Z"}"#,
        r#"{"messageId": "m-2", "chatId": "c-9", "senderId": "u-8", "content": "Hey", "timestamp": 1795860002000}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let d = m.decode("chat:recent:c-9", Raw::List(&items)).unwrap();
    assert_eq!(d.checkpoint.conversation_id, "c-9");
    let got: Vec<_> = d
        .checkpoint
        .messages
        .iter()
        .map(|m| (m.identity.as_str(), m.role.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(got, [("id:m-1", "u-7", "Hi"), ("id:m-2", "u-8", "Hey")]);
    assert_eq!(
        d.checkpoint.messages[1].created_at.unwrap().to_rfc3339(),
        "2026-11-28T10:00:02+00:00",
        "epoch milliseconds"
    );
}
