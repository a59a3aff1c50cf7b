//! Sweeping a chat service's own layout through the binary (`--format NAME` or `--mapping FILE`):
//! the sweep, the rows it left, the keys there are and the restore, for tests/chat_libraries.rs
//! (the real clients) and tests/doc_mappings.rs (the mapping files shipped in docs/).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{TestEnv, stderr};

/// Each message's (role, text), in conversation order.
pub type Messages = Vec<(String, String)>;

/// A decoded checkpoint's conversation id and messages.
pub fn roles_and_text(c: &sweeper::checkpoint::Checkpoint) -> (String, Messages) {
    let msgs = c
        .messages
        .iter()
        .map(|m| (m.role.clone(), m.content.clone()))
        .collect();
    (c.conversation_id.clone(), msgs)
}

/// Each conversation's messages as stored, by seq.
pub async fn stored(env: &TestEnv) -> BTreeMap<String, Messages> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT conversation_id, role, content FROM messages ORDER BY conversation_id, seq",
    )
    .fetch_all(&env.pg)
    .await
    .unwrap();
    let mut out: BTreeMap<String, Messages> = BTreeMap::new();
    for (c, r, t) in rows {
        out.entry(c).or_default().push((r, t));
    }
    out
}

/// The keys matching `pattern`, sorted.
pub fn keys(con: &mut redis::Connection, pattern: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(con).unwrap();
    keys.sort();
    keys
}

/// `sweeper run` of the layout `layout` (`["--format", NAME]` or `["--mapping", FILE]`) with a
/// 2-hour threshold, which must succeed; its JSON summary. `pattern`: a `--match` of the test's
/// own; `idle`: `--save-idle 1s`.
pub fn sweep(env: &TestEnv, layout: &[&str], pattern: Option<&str>, idle: bool) -> Value {
    let mut cmd = env.command();
    cmd.arg("run").args(layout).args([
        "--threshold",
        "2h",
        "--protect-ttl",
        "3h",
        "--output",
        "json",
    ]);
    if let Some(p) = pattern {
        cmd.args(["--match", p]);
    }
    if idle {
        cmd.args(["--save-idle", "1s"]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "sweep failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `sweeper restore --conversation ID` in the layout `layout`, which must succeed.
pub fn restore(env: &TestEnv, conversation: &str, layout: &[&str]) {
    let out = env
        .command()
        .args(["restore", "--conversation", conversation])
        .args(layout)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore {conversation}: {}",
        stderr(&out)
    );
}

/// A native `--format` a test writes conversations in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Json,
    Hash,
    List,
    ReJson,
}

impl Kind {
    pub fn format(self) -> &'static str {
        match self {
            Kind::Json => "json",
            Kind::Hash => "hash",
            Kind::List => "list",
            Kind::ReJson => "rejson",
        }
    }
}

/// Writes conversation `id` in layout `kind`: messages `ids`, as the chat service would.
pub async fn write(env: &TestEnv, kind: Kind, id: &str, d: &Value, ttl_ms: u64) {
    let key = env.key(id);
    let () = env.redis_cmd(redis::cmd("DEL").arg(&key)).await;
    match kind {
        Kind::Json => env.set(id, d, Some(ttl_ms)).await,
        Kind::Hash => {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&key);
            for (field, v) in d.as_object().unwrap() {
                match v {
                    Value::String(s) => cmd.arg(field).arg(s),
                    other => cmd.arg(field).arg(other.to_string()),
                };
            }
            let _: i64 = env.redis_cmd(&mut cmd).await;
        }
        Kind::List => {
            let mut cmd = redis::cmd("RPUSH");
            cmd.arg(&key);
            for m in d["messages"].as_array().unwrap() {
                cmd.arg(m.to_string());
            }
            let _: i64 = env.redis_cmd(&mut cmd).await;
        }
        Kind::ReJson => {
            let () = env
                .redis_cmd(redis::cmd("JSON.SET").arg(&key).arg("$").arg(d.to_string()))
                .await;
        }
    }
    if kind != Kind::Json {
        let () = env
            .redis_cmd(redis::cmd("PEXPIRE").arg(&key).arg(ttl_ms))
            .await;
    }
}
