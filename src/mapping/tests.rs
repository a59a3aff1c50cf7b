//! The mapping engine on the shapes the real libraries write (see tests/layouts/ for the clients
//! themselves), and its property tests against a straightforward reference decode.

use super::*;
use crate::checkpoint::Reject;

mod properties;

fn preset(name: &str) -> Mapping {
    Mapping::from_toml(preset_text(name).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn list(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn code(r: &Reject) -> String {
    r.to_string().split(':').next().unwrap().to_string()
}

fn roles_and_text(d: &Decoded) -> Vec<(String, String)> {
    d.checkpoint
        .messages
        .iter()
        .map(|m| (m.role.clone(), m.content.clone()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn every_preset_parses_and_has_a_pattern() {
    for (name, _) in PRESETS {
        let m = preset(name);
        assert!(m.description.is_some(), "{name}");
        assert!(m.pattern().contains('*'), "{name}");
    }
    assert_eq!(preset("langchain").pattern(), "message_store:*");
    assert_eq!(
        preset("openai-agents").pattern(),
        "agents:session:*:messages"
    );
    assert!(Mapping::preset("nope").is_none());
}

#[test]
fn langchain_newest_first_list_is_oldest_first() {
    let m = preset("langchain");
    // LPUSH: index 0 is the newest.
    let raw = list(&[
        r#"{"type": "ai", "data": {"content": "Hello!", "additional_kwargs": {}, "response_metadata": {}, "type": "ai", "name": null, "id": null}}"#,
        r#"{"type": "human", "data": {"content": [{"type": "text", "text": "Hi "}, {"type": "image_url"}, {"type": "text", "text": "there"}], "type": "human", "id": null}}"#,
        r#"{"type": "chat", "data": {"content": "x", "role": "critic", "type": "chat"}}"#,
        r#"{"type": "system", "data": {"content": "Be terse.", "type": "system"}}"#,
    ]);
    let d = m.decode("message_store:s-1", Raw::List(&raw)).unwrap();
    assert_eq!(d.checkpoint.conversation_id, "s-1");
    assert_eq!(
        roles_and_text(&d),
        pairs(&[
            ("system", "Be terse."),
            ("critic", "x"),
            ("user", "Hi there"),
            ("assistant", "Hello!")
        ])
    );
    assert!(
        d.checkpoint
            .document
            .ends_with(&format!("{}]", std::str::from_utf8(&raw[3]).unwrap())),
        "each element kept exactly, in Redis order"
    );
    assert!(d.checkpoint.messages[0].identity.starts_with("h:"));
    // The document is the list in Redis order, and restore writes it back so.
    let w = m
        .restore_conversation("message_store:s-1", &d.checkpoint.document)
        .unwrap();
    let Write::RPush { values, .. } = w else {
        panic!("{w:?}")
    };
    let back: Vec<serde_json::Value> = values
        .iter()
        .map(|v| serde_json::from_str(v).unwrap())
        .collect();
    let orig: Vec<serde_json::Value> = raw
        .iter()
        .map(|v| serde_json::from_slice(v).unwrap())
        .collect();
    assert_eq!(back, orig);
}

#[test]
fn a_resweep_of_the_same_value_hashes_the_same() {
    let m = preset("llamaindex");
    let raw = list(&[
        r#"{"role":"user","additional_kwargs":{},"blocks":[{"block_type":"text","text":"a"}]}"#,
    ]);
    let a = m.decode("k", Raw::List(&raw)).unwrap();
    let b = m.decode("k", Raw::List(&raw)).unwrap();
    assert_eq!(a.checkpoint.content_hash, b.checkpoint.content_hash);
    assert_eq!(a.checkpoint.messages, b.checkpoint.messages);
}

#[test]
fn llamaindex_blocks_and_old_content() {
    let m = preset("llamaindex");
    let raw = list(&[
        r#"{"role":"user","additional_kwargs":{},"blocks":[{"block_type":"text","text":"one"},{"block_type":"text","text":"two"}]}"#,
        r#"{"role":"chatbot","content":"old style"}"#,
    ]);
    let d = m.decode("my:app:chat-9", Raw::List(&raw)).unwrap();
    assert_eq!(
        d.checkpoint.conversation_id, "my:app:chat-9",
        "the whole key: no prefix of its own"
    );
    assert_eq!(
        roles_and_text(&d),
        pairs(&[("user", "one\ntwo"), ("assistant", "old style")])
    );
}

#[test]
fn openai_agents_items_without_role_are_kept() {
    let m = preset("openai-agents");
    let raw = list(&[
        r#"{"role":"user","content":"What is 6*7?"}"#,
        r#"{"type":"function_call","id":"fc_1","call_id":"call_1","name":"calc","arguments":"{}"}"#,
        r#"{"type":"function_call_output","call_id":"call_1","output":"42"}"#,
        r#"{"id":"msg_1","content":[{"type":"output_text","text":"42.","annotations":[]}],"role":"assistant","status":"completed","type":"message"}"#,
    ]);
    let d = m
        .decode("agents:session:abc:def:messages", Raw::List(&raw))
        .unwrap();
    assert_eq!(d.checkpoint.conversation_id, "abc:def");
    assert_eq!(
        roles_and_text(&d),
        pairs(&[
            ("user", "What is 6*7?"),
            ("assistant", ""),
            ("tool", "42"),
            ("assistant", "42.")
        ])
    );
    assert_eq!(d.checkpoint.messages[3].identity, "id:msg_1");
    assert_eq!(d.checkpoint.messages[1].identity, "id:fc_1");
}

#[test]
fn redisvl_hash_per_message_names_a_binary_field() {
    let m = preset("redisvl");
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = [
        ("entry_id", "s1:1796058976.2:ab12cd34"),
        ("role", "llm"),
        ("content", "Hi"),
        ("session_tag", "s1"),
        ("timestamp", "1796058976.2"),
    ]
    .iter()
    .map(|(f, v)| (f.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect();
    fields.push((b"vector_field".to_vec(), vec![0, 0, 0x80, 0xbf, 0xff]));
    let key = "hist:s1:1796058976.2:ab12cd34";
    let d = m.decode(key, Raw::Hash(&fields)).unwrap();
    assert_eq!(d.checkpoint.conversation_id, "s1");
    assert_eq!(roles_and_text(&d), pairs(&[("assistant", "Hi")]));
    let ts = d.checkpoint.messages[0].created_at.unwrap();
    assert_eq!(ts.timestamp_micros(), 1_796_058_976_200_000);
    // Restore gives back every field, the binary one byte for byte.
    let Write::HSet { fields: back, .. } = m.restore_message(key, &d.elements[0]).unwrap() else {
        panic!()
    };
    let mut want = fields.clone();
    want.sort();
    let mut back = back
        .into_iter()
        .map(|(f, v)| (f.into_bytes(), v))
        .collect::<Vec<_>>();
    back.sort();
    assert_eq!(back, want);
    // A binary field the mapping reads is a reject naming the field.
    fields[2].1 = vec![b'a', 0xff];
    let r = m.decode(key, Raw::Hash(&fields)).unwrap_err();
    assert_eq!(code(&r), "bad_field");
    assert!(r.to_string().contains("`content` is binary"), "{r}");
}

#[test]
fn one_key_per_message_groups_in_time_order() {
    let m = preset("langchain-redis");
    let msg = |id: &str, ty: &str, text: &str, ts: f64| {
        format!(
            r#"{{"type":"{ty}","message_id":"{id}","data":{{"content":"{text}","type":"{ty}"}},"session_id":"s:1","timestamp":{ts}}}"#
        )
    };
    let a = msg("01A", "human", "hi", 1796058976.2);
    let b = msg("01B", "ai", "hello", 1796058977.5);
    let c = msg("01C", "human", "bye", 1796058978.0);
    let units: Vec<Decoded> = [
        (&c, "chat:s:1:01C"),
        (&a, "chat:s:1:01A"),
        (&b, "chat:s:1:01B"),
        (&a, "chat:s:1:01A"),
    ]
    .iter()
    .map(|(v, k)| m.decode(k, Raw::Text(v.as_bytes())).unwrap())
    .collect();
    let got = decode::group(units);
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.checkpoint.conversation_id, "s:1");
    assert_eq!(
        roles_and_text(d),
        pairs(&[("user", "hi"), ("assistant", "hello"), ("user", "bye")])
    );
    assert_eq!(d.keys, ["chat:s:1:01A", "chat:s:1:01B", "chat:s:1:01C"]);
    let w = m.restore_message(&d.keys[1], &d.elements[1]).unwrap();
    assert!(
        matches!(w, Write::JsonSet { ref key, .. } if key == "chat:s:1:01B"),
        "{w:?}"
    );
}

#[test]
fn rasa_keeps_user_and_bot_events() {
    let m = preset("rasa");
    let doc = r#"{"sender_id":"u1","events":[{"event":"action","name":"action_listen","timestamp":1796058972.0},
        {"event":"user","text":"hello","timestamp":1796058973.0,"parse_data":{}},
        {"event":"bot","text":"Hey!","timestamp":1796058973.5,"data":{}},
        {"event":"bot","text":null,"timestamp":1796058974.0}]}"#;
    let d = m.decode("tracker:u1", Raw::Text(doc.as_bytes())).unwrap();
    assert_eq!(
        roles_and_text(&d),
        pairs(&[("user", "hello"), ("assistant", "Hey!"), ("assistant", "")])
    );
    assert_eq!(
        d.checkpoint.document, doc,
        "the tracker is kept verbatim for restore"
    );
    let w = m
        .restore_conversation("tracker:u1", &d.checkpoint.document)
        .unwrap();
    assert_eq!(
        w,
        Write::Set {
            key: "tracker:u1".into(),
            value: doc.into()
        }
    );
}

#[test]
fn agent_memory_server_reads_the_session_and_user_from_the_document() {
    let m = preset("agent-memory-server");
    let doc = r#"{"messages":[{"role":"user","content":"hi","id":"01J1","created_at":"2026-11-22T10:00:00Z"}],
        "session_id":"sess","user_id":"u7","namespace":"ns","updated_at":1796059232}"#;
    let d = m
        .decode("working_memory:ns:u7:sess", Raw::Text(doc.as_bytes()))
        .unwrap();
    assert_eq!(d.checkpoint.conversation_id, "sess");
    assert_eq!(d.checkpoint.user_id.as_deref(), Some("u7"));
    assert_eq!(d.checkpoint.updated_at.unwrap().timestamp(), 1796059232);
    assert_eq!(d.checkpoint.messages[0].identity, "id:01J1");
}

#[test]
fn agent_framework_scoped_key_gives_the_session() {
    let m = preset("agent-framework");
    let raw = list(&[
        r#"{"type":"message","role":"user","contents":[{"type":"text","text":"hi"}],"message_id":"m1"}"#,
    ]);
    let key = "chat_messages|v2|~none|sweeper-test|~none|redis_memory|s0";
    let d = m.decode(key, Raw::List(&raw)).unwrap();
    assert_eq!(d.checkpoint.conversation_id, "s0");
    assert_eq!(roles_and_text(&d), pairs(&[("user", "hi")]));
}

#[test]
fn rejects_name_the_field() {
    let m = preset("langchain");
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &[r#"{"data": {"content": "x"}}"#],
            "bad_messages",
            "no role (`data.role`, `type`)",
        ),
        (&["not json"], "bad_messages", "list element 0 is not JSON"),
        (&["[1]"], "bad_messages", "not an object"),
        (
            &[r#"{"type": "human", "data": {"content": "a\u0000"}}"#],
            "nul_character",
            "",
        ),
    ];
    for (items, want, says) in cases {
        let r = m
            .decode("message_store:x", Raw::List(&list(items)))
            .unwrap_err();
        assert_eq!(code(&r), *want, "{r}");
        assert!(r.to_string().contains(says), "{r}");
        // A dry run's check rejects the same, for the same reason.
        assert_eq!(m.check("message_store:x", Raw::List(&list(items))), Err(r));
    }
    let bin = vec![vec![b'{', 0xff]];
    let r = m.decode("message_store:x", Raw::List(&bin)).unwrap_err();
    assert!(r.to_string().contains("list element 0 is not UTF-8"), "{r}");
    // A key of the user's own --match is the conversation id whole (LangChain.js: bare ids).
    let d = m.decode("other:x", Raw::List(&list(&[]))).unwrap();
    assert_eq!(d.checkpoint.conversation_id, "other:x");
    let ts = preset("rasa");
    let doc = r#"{"events":[{"event":"user","text":"x","timestamp":"yesterday"}]}"#;
    let r = ts
        .decode("tracker:a", Raw::Text(doc.as_bytes()))
        .unwrap_err();
    assert!(
        r.to_string()
            .contains("`timestamp` \"yesterday\" is not a time"),
        "{r}"
    );
    let r = ts
        .decode("tracker:a", Raw::Text(br#"{"events": 3}"#))
        .unwrap_err();
    assert!(
        r.to_string()
            .contains("`events` is a JSON number, not an array"),
        "{r}"
    );
}

#[test]
fn bad_mapping_files_say_what_is_wrong() {
    let base =
        "key = \"chat:{id}\"\nredis_type = \"list\"\n[message]\nrole = \"r\"\ncontent = \"c\"\n";
    assert!(Mapping::from_toml(base).is_ok());
    let cases = [
        (base.replace("chat:{id}", "chat:"), "no placeholder"),
        (base.replace("chat:{id}", "chat:{a}{b}"), "text between"),
        (base.replace("\"list\"", "\"set\""), "unknown variant"),
        (
            base.replace("content = \"c\"", "content = \"c[\""),
            "not a path",
        ),
        (format!("{base}colour = 1\n"), "unknown field"),
        (
            base.replace("redis_type", "conversation_id = \"{nope}\"\nredis_type"),
            "names no placeholder",
        ),
        (
            base.replace("redis_type", "messages = \"m\"\nredis_type"),
            "must be \"\"",
        ),
        (base.replace("\nrole = \"r\"", ""), "missing field `role`"),
    ];
    for (text, says) in cases {
        let e = Mapping::from_toml(&text).unwrap_err().to_string();
        assert!(e.contains(says), "{text}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn key_templates_match_and_build_keys() {
    let m = preset("langchain-redis");
    assert_eq!(
        m.key_holes("chat:a:b:01J"),
        Some(vec![("session", "a:b"), ("message", "01J")])
    );
    assert_eq!(m.key_holes("chat:a"), None);
    let l = preset("langchain");
    assert_eq!(l.key_for("s1").as_deref(), Some("message_store:s1"));
    assert_eq!(
        m.key_for("s1"),
        None,
        "a key per message is named by its own message id"
    );
    let glob = Mapping::from_toml(
        "key = \"a*[x]:{id}\"\nredis_type = \"string\"\n[message]\nrole = \"r\"\ncontent = \"c\"\n",
    )
    .unwrap();
    assert_eq!(glob.pattern(), "a\\*\\[x\\]:*");
}

#[test]
fn older_key_forms_are_found_by_one_pattern_and_read_for_their_id() {
    let af = preset("agent-framework");
    assert_eq!(af.pattern(), "chat_messages*");
    assert_eq!(
        af.key_holes("chat_messages|v2|t|app|agent|src|s0"),
        Some(vec![("scope", "t|app|agent|src"), ("id", "s0")])
    );
    assert_eq!(
        af.key_holes("chat_messages:afl-0"),
        Some(vec![("id", "afl-0")])
    );
    assert_eq!(af.key_holes("other:afl-0"), None);
    let no_id = Mapping::from_toml(
        "key = \"a:{id}\"\nolder_keys = [\"b:{x}\"]\nredis_type = \"list\"\n[message]\nrole = \"r\"\ncontent = \"c\"\n",
    );
    assert!(
        no_id
            .unwrap_err()
            .0
            .contains("names no placeholder of key \"b:{x}\""),
        "an older form must hold the id too"
    );
}

#[test]
fn times_in_every_form_libraries_write() {
    use decode::parse_ts;
    let s = |t: &str, n| parse_ts(t, n).unwrap().to_rfc3339();
    assert_eq!(s("1796058976", true), "2026-11-30T17:16:16+00:00");
    assert_eq!(
        s("1796058976000", true),
        "2026-11-30T17:16:16+00:00",
        "milliseconds"
    );
    assert_eq!(
        s("1796058976.25", false),
        "2026-11-30T17:16:16.250+00:00",
        "numeric text"
    );
    assert_eq!(
        s("2026-11-22T10:00:00Z", false),
        "2026-11-22T10:00:00+00:00"
    );
    assert_eq!(
        s("2026-11-22T10:00:00.5", false),
        "2026-11-22T10:00:00.500+00:00",
        "no offset: UTC"
    );
    assert!(parse_ts("soon", false).is_err());
    assert!(parse_ts("1e300", true).is_err());
}
