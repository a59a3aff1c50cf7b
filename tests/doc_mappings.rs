//! The mapping files shipped in docs/layouts/ as examples parse, and decode the shapes they
//! document: the two seed designs (a session document; the `chat:recent:{chatId}` list), which
//! the native formats reject (`message 0 has no role`).
//!
//! The `sweep_*` tests take each seed shape through the binary on a Redis of their own: the
//! conversations are written as the design writes them (with TTLs), `sweeper run --mapping FILE`
//! saves them, the rows are checked, a re-sweep changes nothing, the keys are deleted, `sweeper
//! restore --mapping FILE` puts each back, and what Redis then holds equals what was written.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::TestEnv;
use common::layouts::{Messages, keys, restore, stored, sweep};
use common::servers::PrivateRedis;
use serde_json::{Value, json};
use sweeper::mapping::{Mapping, Raw, Write};

fn mapping(file: &str) -> Mapping {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/layouts")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    Mapping::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn roles_and_text(m: &Mapping, key: &str, raw: Raw) -> (String, Messages) {
    let d = m.decode(key, raw).unwrap_or_else(|r| panic!("{key}: {r}"));
    common::layouts::roles_and_text(&d.checkpoint)
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

fn doc_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/layouts")
        .join(file)
}

/// A key as the design writes it: a JSON document (SET), or its messages (RPUSH).
enum Written {
    Doc(Value),
    List(Vec<Value>),
}

/// What Redis holds at `key`, as JSON values: the document, or each element.
fn read_back(con: &mut redis::Connection, key: &str, like: &Written) -> Written {
    match like {
        Written::Doc(_) => {
            let text: String = redis::cmd("GET").arg(key).query(con).unwrap();
            Written::Doc(serde_json::from_str(&text).unwrap())
        }
        Written::List(_) => {
            let items: Vec<String> = redis::cmd("LRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query(con)
                .unwrap();
            Written::List(
                items
                    .iter()
                    .map(|e| serde_json::from_str(e).unwrap())
                    .collect(),
            )
        }
    }
}

fn as_json(v: &Written) -> Value {
    match v {
        Written::Doc(d) => d.clone(),
        Written::List(items) => Value::Array(items.clone()),
    }
}

/// Writes `keys` (each with its TTL in seconds) as the design does, sweeps them through
/// `--mapping docs/layouts/{file}`, checks the rows against `want` and the re-sweep, deletes
/// the keys, restores each conversation and compares what Redis holds with what was written.
async fn sweep_round_trip(
    test: &str,
    file: &str,
    written: &[(&str, u64, Written)],
    want: &BTreeMap<String, Messages>,
) -> TestEnv {
    let redis = PrivateRedis::start();
    let env = TestEnv::with_redis(test, &redis).await;
    let m = mapping(file);
    let mut con = redis::Client::open(env.redis_url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    for (key, ttl, value) in written {
        let () = match value {
            Written::Doc(d) => redis::cmd("SET")
                .arg(key)
                .arg(d.to_string())
                .arg("EX")
                .arg(ttl)
                .query(&mut con)
                .unwrap(),
            Written::List(items) => {
                let texts: Vec<String> = items.iter().map(Value::to_string).collect();
                redis::pipe()
                    .cmd("RPUSH")
                    .arg(key)
                    .arg(texts)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(key)
                    .arg(ttl)
                    .ignore()
                    .query(&mut con)
                    .unwrap()
            }
        };
    }
    let path = doc_path(file);
    let layout = ["--mapping", path.to_str().unwrap()];
    // Due: under the sweep's 2-hour threshold.
    let due: Vec<&(&str, u64, Written)> = written.iter().filter(|w| w.1 < 7200).collect();

    // No --match: the mapping's key template gives it.
    let first = sweep(&env, &layout, None, false);
    assert_eq!(first["scanned"], written.len(), "{first}");
    assert_eq!(first["due"], due.len(), "{first}");
    assert_eq!(first["rejected"], 0, "{first}");
    assert_eq!(first["persisted"], want.len(), "{first}");
    let total: usize = want.values().map(Vec::len).sum();
    assert_eq!(first["messages_added"], total, "{first}");
    assert_eq!(&stored(&env).await, want, "{file}: the rows");
    assert_eq!(
        env.count("SELECT count(*) FROM conversations").await,
        want.len() as i64
    );

    let again = sweep(&env, &layout, None, false);
    assert_eq!(again["persisted"], 0, "a re-sweep changes nothing: {again}");
    assert_eq!(again["unchanged"], want.len(), "{again}");
    assert_eq!(again["messages_added"], 0, "{again}");
    assert_eq!(&stored(&env).await, want);

    let due_keys: Vec<&str> = due.iter().map(|w| w.0).collect();
    let _: () = redis::cmd("DEL").arg(&due_keys).query(&mut con).unwrap();
    for sid in want.keys() {
        restore(&env, sid, &layout);
    }
    assert_eq!(
        keys(&mut con, &m.pattern()),
        {
            let mut all: Vec<String> = written.iter().map(|w| w.0.to_string()).collect();
            all.sort();
            all
        },
        "{file}: the same keys are back"
    );
    for (key, _, value) in &due {
        assert_eq!(
            as_json(&read_back(&mut con, key, value)),
            as_json(value),
            "{key}: what restore wrote is what the chat service wrote"
        );
        let ttl: i64 = redis::cmd("TTL").arg(key).query(&mut con).unwrap();
        assert!(ttl > 0, "{key}: restored with a TTL ({ttl})");
    }
    drop(redis);
    env
}

fn messages(pairs: &[(&str, &str)]) -> Messages {
    pairs
        .iter()
        .map(|(r, t)| (r.to_string(), t.to_string()))
        .collect()
}

#[tokio::test]
async fn sweep_the_session_document_seed() {
    let session = |id: &str, user: Value, msgs: &[(&str, &str)]| {
        let messages: Vec<Value> = msgs
            .iter()
            .enumerate()
            .map(|(i, (sender, text))| {
                json!({"sender": sender, "text": text,
                       "timestamp": format!("2026-11-22T10:00:{:02}Z", 2 * i)})
            })
            .collect();
        json!({"_id": format!("oid-{id}"), "session_id": id, "user_id": user,
               "start_time": "2026-11-22T10:00:00Z", "messages": messages})
    };
    let a = [("user", "Hi"), ("bot", "Hello! How can I help?")];
    let b = [
        ("user", "Où est ma commande ? \"n° 42\""),
        ("bot", "Elle part demain.\nSuivi : ✓"),
        ("user", "Merci 🙏"),
        ("bot", ""),
    ];
    let c = [("user", "still typing")];
    let written = [
        (
            "session:chat-abc-123",
            3600,
            Written::Doc(session("chat-abc-123", json!(456), &a)),
        ),
        (
            "session:chat-def-456",
            1800,
            Written::Doc(session("chat-def-456", json!("u-9"), &b)),
        ),
        // Not due: left alone.
        (
            "session:chat-live",
            5 * 3600,
            Written::Doc(session("chat-live", json!(1), &c)),
        ),
    ];
    let want = BTreeMap::from([
        (
            "chat-abc-123".to_string(),
            messages(&[("user", "Hi"), ("assistant", "Hello! How can I help?")]),
        ),
        (
            "chat-def-456".to_string(),
            messages(&[
                ("user", "Où est ma commande ? \"n° 42\""),
                ("assistant", "Elle part demain.\nSuivi : ✓"),
                ("user", "Merci 🙏"),
                ("assistant", ""),
            ]),
        ),
    ]);
    let env = sweep_round_trip(
        "doc_session_sweep",
        "session-document.toml",
        &written,
        &want,
    )
    .await;
    let rows: Vec<(String, Option<String>, String, String)> = sqlx::query_as(
        "SELECT conversation_id, user_id, to_char(started_at AT TIME ZONE 'UTC', 'HH24:MI:SS'), \
                redis_key FROM conversations ORDER BY conversation_id",
    )
    .fetch_all(&env.pg)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (
                "chat-abc-123".into(),
                Some("456".into()),
                "10:00:00".into(),
                "session:chat-abc-123".into()
            ),
            (
                "chat-def-456".into(),
                Some("u-9".into()),
                "10:00:00".into(),
                "session:chat-def-456".into()
            ),
        ]
    );
    let times: Vec<String> = sqlx::query_scalar(
        "SELECT to_char(created_at AT TIME ZONE 'UTC', 'HH24:MI:SS') FROM messages \
         WHERE conversation_id = 'chat-def-456' ORDER BY seq",
    )
    .fetch_all(&env.pg)
    .await
    .unwrap();
    assert_eq!(times, ["10:00:00", "10:00:02", "10:00:04", "10:00:06"]);
}

#[tokio::test]
async fn sweep_the_chat_recent_list_seed() {
    let msg = |id: &str, chat: &str, sender: &str, text: &str, ts: Value| {
        json!({"messageId": id, "chatId": chat, "senderId": sender, "content": text,
               "timestamp": ts})
    };
    // RPUSH: oldest first, as the design's write path appends; timestamps RFC 3339 or epoch ms.
    let c9 = vec![
        msg("m-1", "c-9", "u-7", "Hi", json!("2026-11-22T10:00:00Z")),
        msg("m-2", "c-9", "u-8", "Hey ✓", json!(1795860002000u64)),
        msg(
            "m-3",
            "c-9",
            "u-7",
            "line one\nline \"two\"",
            json!("2026-11-22T10:00:05.250Z"),
        ),
    ];
    let c10 = vec![msg(
        "m-9",
        "c-10",
        "u-1",
        "ping",
        json!("2026-11-22T11:00:00Z"),
    )];
    let live = vec![msg(
        "m-20",
        "c-11",
        "u-2",
        "not yet",
        json!("2026-11-22T12:00:00Z"),
    )];
    let written = [
        ("chat:recent:c-9", 3600, Written::List(c9)),
        ("chat:recent:c-10", 60, Written::List(c10)),
        // The design's 7-day TTL, far from due.
        ("chat:recent:c-11", 7 * 86400, Written::List(live)),
    ];
    let want = BTreeMap::from([
        (
            "c-9".to_string(),
            messages(&[
                ("u-7", "Hi"),
                ("u-8", "Hey ✓"),
                ("u-7", "line one\nline \"two\""),
            ]),
        ),
        ("c-10".to_string(), messages(&[("u-1", "ping")])),
    ]);
    let env = sweep_round_trip("doc_recent_sweep", "chat-recent-list.toml", &written, &want).await;
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT message_id, message_key, \
                to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS') \
         FROM messages WHERE conversation_id = 'c-9' ORDER BY seq",
    )
    .fetch_all(&env.pg)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (
                "m-1".into(),
                "id:m-1".into(),
                "2026-11-22 10:00:00.000".into()
            ),
            (
                "m-2".into(),
                "id:m-2".into(),
                "2026-11-28 10:00:02.000".into()
            ),
            (
                "m-3".into(),
                "id:m-3".into(),
                "2026-11-22 10:00:05.250".into()
            ),
        ],
        "the message ids and times (epoch milliseconds too), in list order"
    );
}
