//! The mapping presets against the real chat-memory clients: each library writes conversations
//! into a Redis Stack (tests/layouts/client.py, tests/layouts/langchain.mjs), its keys are read
//! as the preset says and decoded by `sweeper::mapping`, the messages compared with what the
//! library wrote (count, roles, text, order); then the keys are deleted, written back by the
//! preset's restore, and the library itself reads the same messages. tests/layouts/setup.sh
//! provides the venvs, the npm install and the server (cached); without them the tests skip,
//! saying why.
//!
//! The `sweep_*` tests go through the binary: the library writes, `sweeper run --format NAME`
//! saves, the rows are checked, a re-sweep changes nothing, the keys are deleted, `sweeper
//! restore --format NAME` puts each conversation back, and the library reads the same messages.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::layouts::{Messages, keys, restore, roles_and_text, stored, sweep};
use common::stack::Stack;
use common::{TestEnv, skip, stderr};
use serde_json::Value;
use sweeper::mapping::{Decoded, Mapping, Raw, RedisType, Unit, Write, decode::group};

fn harness() -> Result<HashMap<String, String>, String> {
    common::setup_script("tests/layouts/setup.sh")
}

/// The library's own client reads each conversation restored as it wrote it.
fn library_reads_back(
    h: &HashMap<String, String>,
    lib: &str,
    url: &str,
    want: &BTreeMap<String, Messages>,
) {
    for (sid, msgs) in want {
        let back = messages(&client(h, lib, &["read", "--url", url, "--id", sid]));
        assert_eq!(
            &back, msgs,
            "{lib}: {sid} read back by the library after restore"
        );
    }
}

/// The library's client writes 3 conversations of 5 messages (TTL 1 h); returns each session's
/// messages as the client wrote them.
fn write_conversations(
    h: &HashMap<String, String>,
    lib: &str,
    url: &str,
) -> BTreeMap<String, Messages> {
    let prefix = format!("{lib}-s");
    let args = [
        "write",
        "--url",
        url,
        "--prefix",
        &prefix,
        "--conversations",
        "3",
        "--messages",
        "5",
        "--ttl",
        "3600",
    ];
    let wrote = client(h, lib, &args);
    wrote["sessions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), messages(v)))
        .collect()
}

/// Runs a library's client: `write` gives each session's messages, `read` one session's.
fn client(h: &HashMap<String, String>, lib: &str, args: &[&str]) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/layouts");
    let mut cmd = if lib == "langchain-js" {
        let mut c = Command::new("node");
        c.env("NODE_PATH", &h["node_path"])
            .arg(dir.join("langchain.mjs"));
        c
    } else {
        // A library's older key form is written by the same library, from its own venv.
        let venv_of = lib.trim_end_matches("-legacy").replace('-', "_");
        let venv = &h[&format!("venv_{venv_of}")];
        let mut c = Command::new(Path::new(venv).join("bin/python"));
        c.arg(dir.join("client.py")).arg(lib);
        c
    };
    let out = cmd.args(args).output().expect("run the client");
    assert!(
        out.status.success(),
        "{lib} {args:?} failed: {}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).expect("the client prints JSON")
}

fn messages(v: &Value) -> Messages {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// What the sweep reads for one key of `m`'s layout, decoded.
fn read(con: &mut redis::Connection, m: &Mapping, key: &str) -> Decoded {
    let got = match m.redis_type {
        RedisType::String => {
            let v: Vec<u8> = redis::cmd("GET").arg(key).query(con).unwrap();
            m.decode(key, Raw::Text(&v))
        }
        RedisType::Json => {
            let v: Vec<u8> = redis::cmd("JSON.GET").arg(key).query(con).unwrap();
            m.decode(key, Raw::Text(&v))
        }
        RedisType::List => {
            let v: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query(con)
                .unwrap();
            m.decode(key, Raw::List(&v))
        }
        RedisType::Hash => {
            let v: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL").arg(key).query(con).unwrap();
            m.decode(key, Raw::Hash(&v))
        }
    };
    got.unwrap_or_else(|r| panic!("{key}: {r}"))
}

fn apply(con: &mut redis::Connection, w: &Write) {
    let c = match w {
        Write::Set { key, value } => {
            let mut c = redis::cmd("SET");
            c.arg(key).arg(value);
            c
        }
        Write::JsonSet { key, value } => {
            let mut c = redis::cmd("JSON.SET");
            c.arg(key).arg("$").arg(value);
            c
        }
        Write::RPush { key, values } => {
            let mut c = redis::cmd("RPUSH");
            c.arg(key).arg(values);
            c
        }
        Write::HSet { key, fields } => {
            let mut c = redis::cmd("HSET");
            c.arg(key);
            for (f, v) in fields {
                c.arg(f).arg(v);
            }
            c
        }
    };
    let _: () = c.query(con).unwrap();
}

/// The whole round trip for one library: write, read and decode, compare, delete, restore, read
/// back through the library.
fn round_trip(test: &str, lib: &str, preset: &str, pattern: Option<&str>) {
    let h = match harness() {
        Ok(h) => h,
        Err(why) => return skip(test, &why),
    };
    let stack = Stack::start(&h);
    let want = write_conversations(&h, lib, &stack.url);
    let m = Mapping::preset(preset).unwrap();
    let pattern = pattern.map_or_else(|| m.pattern(), str::to_string);
    let mut con = redis::Client::open(stack.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let found = keys(&mut con, &pattern);
    assert!(!found.is_empty(), "{lib} wrote no key matching {pattern}");
    let decoded: Vec<Decoded> = found.iter().map(|k| read(&mut con, &m, k)).collect();
    let conversations = if m.unit == Unit::Message {
        group(decoded)
    } else {
        decoded
    };
    let got: BTreeMap<String, Messages> = conversations
        .iter()
        .map(|d| roles_and_text(&d.checkpoint))
        .collect();
    assert_eq!(
        got, want,
        "{lib}: what the preset decodes is what the library wrote"
    );

    // Delete every key the conversations were read from, restore, and have the library read.
    let _: () = redis::cmd("DEL").arg(&found).query(&mut con).unwrap();
    for d in &conversations {
        if m.unit == Unit::Message {
            for (k, e) in d.keys.iter().zip(&d.elements) {
                apply(&mut con, &m.restore_message(k, e).unwrap());
            }
        } else {
            apply(
                &mut con,
                &m.restore_conversation(&d.checkpoint.redis_key, &d.checkpoint.document)
                    .unwrap(),
            );
        }
    }
    assert_eq!(
        keys(&mut con, &pattern),
        found,
        "{lib}: the same keys are back"
    );
    library_reads_back(&h, lib, &stack.url, &want);
}

#[test]
fn langchain_python() {
    round_trip("langchain_python", "langchain", "langchain", None);
}

#[test]
fn langchain_js() {
    // LangChain.js keys are the bare session ids.
    round_trip(
        "langchain_js",
        "langchain-js",
        "langchain",
        Some("langchain-js-s*"),
    );
}

#[test]
fn langchain_redis() {
    round_trip(
        "langchain_redis",
        "langchain-redis",
        "langchain-redis",
        None,
    );
}

#[test]
fn llamaindex() {
    round_trip(
        "llamaindex",
        "llamaindex",
        "llamaindex",
        Some("llamaindex-s*"),
    );
}

#[test]
fn redisvl() {
    round_trip("redisvl", "redisvl", "redisvl", Some("sweeper_test:*"));
}

#[test]
fn openai_agents() {
    round_trip("openai_agents", "openai-agents", "openai-agents", None);
}

#[test]
fn agent_framework() {
    round_trip(
        "agent_framework",
        "agent-framework",
        "agent-framework",
        None,
    );
}

/// Write with the library, sweep, check the rows, re-sweep, delete, restore, read back.
async fn sweep_round_trip(test: &str, lib: &str, format: &str, pattern: Option<&str>, idle: bool) {
    let h = match harness() {
        Ok(h) => h,
        Err(why) => return skip(test, &why),
    };
    let stack = Stack::start(&h);
    let admin = std::env::var("SWEEPER_TEST_PG_ADMIN").expect("run through `make test`");
    let env = TestEnv::on(&test.replace('-', "_"), &stack.url, &admin)
        .await
        .migrate();
    let want = write_conversations(&h, lib, &stack.url);
    let m = Mapping::preset(format).unwrap();
    let layout = ["--format", format];
    let pattern_used = pattern.map_or_else(|| m.pattern(), str::to_string);
    let mut con = redis::Client::open(stack.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let found = keys(&mut con, &pattern_used);
    if idle {
        // The library sets no TTL: --save-idle 1s makes its keys due once left alone that long
        // (OBJECT IDLETIME counts whole seconds).
        let pttls: Vec<i64> = found
            .iter()
            .map(|k| redis::cmd("PTTL").arg(k).query(&mut con).unwrap())
            .collect();
        assert!(
            pttls.iter().all(|&t| t == -1),
            "{lib} set no TTL: {pttls:?}"
        );
        let without = sweep(&env, &layout, pattern, false);
        assert_eq!(
            without["due"], 0,
            "without --save-idle: never due {without}"
        );
        std::thread::sleep(Duration::from_millis(2100));
    }

    let first = sweep(&env, &layout, pattern, idle);
    assert_eq!(first["due"], found.len(), "{first}");
    assert_eq!(first["rejected"], 0, "{first}");
    let total: usize = want.values().map(Vec::len).sum();
    assert_eq!(first["messages_added"], total, "{first}");
    assert_eq!(
        stored(&env).await,
        want,
        "{lib}: the rows hold what the library wrote"
    );

    if idle {
        std::thread::sleep(Duration::from_millis(2100));
    }
    let again = sweep(&env, &layout, pattern, idle);
    assert_eq!(again["persisted"], 0, "a re-sweep changes nothing: {again}");
    assert_eq!(again["messages_added"], 0, "{again}");
    assert_eq!(stored(&env).await, want);

    let _: () = redis::cmd("DEL").arg(&found).query(&mut con).unwrap();
    for sid in want.keys() {
        restore(&env, sid, &layout);
    }
    assert_eq!(
        keys(&mut con, &pattern_used),
        found,
        "{lib}: the same keys are back"
    );
    library_reads_back(&h, lib, &stack.url, &want);
    let swept = (&layout[..], pattern, idle);
    forget_round_trip(&h, &env, lib, &stack.url, swept, &want).await;
}

/// `sweeper forget` of the first session, in the library's layout: its rows and keys go and the
/// library reads it back empty; then the library writes every session again (an app that still
/// holds the forgotten one): the sweep saves the others and never the forgotten one.
async fn forget_round_trip(
    h: &HashMap<String, String>,
    env: &TestEnv,
    lib: &str,
    url: &str,
    (layout, pattern, idle): (&[&str], Option<&str>, bool),
    want: &BTreeMap<String, Messages>,
) {
    let sid = want.keys().next().unwrap().clone();
    let mut cmd = env.command();
    cmd.args(["forget", "--conversation", &sid, "--output", "json"])
        .args(layout);
    if let Some(p) = pattern {
        cmd.args(["--match", p]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{lib}: forget: {}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["conversations"], 1, "{lib}: {r}");
    assert!(r["redis_keys"].as_u64() >= Some(1), "{lib}: {r}");
    assert!(!stored(env).await.contains_key(&sid), "{lib}: its rows");
    let back = messages(&client(h, lib, &["read", "--url", url, "--id", &sid]));
    assert!(back.is_empty(), "{lib}: the library still reads {back:?}");

    write_conversations(h, lib, url);
    if idle {
        std::thread::sleep(Duration::from_millis(2100));
    }
    let s = sweep(env, layout, pattern, idle);
    assert!(s["erased"].as_u64() >= Some(1), "{lib}: {s}");
    let now = stored(env).await;
    assert!(!now.contains_key(&sid), "{lib}: saved again");
    assert_eq!(now.len(), want.len() - 1, "{lib}: the others saved");
}

#[tokio::test]
async fn sweep_langchain_python() {
    sweep_round_trip(
        "sweep_langchain_python",
        "langchain",
        "langchain",
        None,
        false,
    )
    .await;
}

#[tokio::test]
async fn sweep_langchain_js() {
    sweep_round_trip(
        "sweep_langchain_js",
        "langchain-js",
        "langchain",
        Some("langchain-js-s*"),
        false,
    )
    .await;
}

#[tokio::test]
async fn sweep_llamaindex() {
    sweep_round_trip(
        "sweep_llamaindex",
        "llamaindex",
        "llamaindex",
        Some("llamaindex-s*"),
        false,
    )
    .await;
}

#[tokio::test]
async fn sweep_openai_agents() {
    sweep_round_trip(
        "sweep_openai_agents",
        "openai-agents",
        "openai-agents",
        None,
        false,
    )
    .await;
}

#[tokio::test]
async fn sweep_langchain_redis() {
    sweep_round_trip(
        "sweep_langchain_redis",
        "langchain-redis",
        "langchain-redis",
        None,
        false,
    )
    .await;
}

#[tokio::test]
async fn sweep_redisvl() {
    sweep_round_trip(
        "sweep_redisvl",
        "redisvl",
        "redisvl",
        Some("sweeper_test:*"),
        true,
    )
    .await;
}

#[tokio::test]
async fn sweep_agent_framework() {
    sweep_round_trip(
        "sweep_agent_framework",
        "agent-framework",
        "agent-framework",
        None,
        true,
    )
    .await;
}

/// The keys earlier Agent Framework releases wrote (`chat_messages:{session}`, the library's
/// `key_format="legacy"`): swept by `--format agent-framework` under their session ids, restored
/// under the same keys, read back by the library.
#[tokio::test]
async fn sweep_agent_framework_older_keys() {
    sweep_round_trip(
        "sweep_agent_framework_older_keys",
        "agent-framework-legacy",
        "agent-framework",
        None,
        true,
    )
    .await;
}

/// Redis Agent Memory Server 0.14.0 declares Python >= 3.12; Debian 12 has 3.11.2 and neither
/// Debian nor PyPI ships a 3.12 interpreter. Its frozen set is installed as it is, without
/// resolution (tests/layouts/setup.sh): the same code writes the same keys (the working-memory
/// JSON its own client reads back below), and nothing it imports needs 3.12 (async-timeout is
/// added for redis-py below 3.11.3). Faithful as long as its own client reads back what it wrote.
#[test]
fn agent_memory_server() {
    round_trip(
        "agent_memory_server",
        "agent-memory-server",
        "agent-memory-server",
        None,
    );
}

#[tokio::test]
async fn sweep_agent_memory_server() {
    sweep_round_trip(
        "sweep_agent_memory_server",
        "agent-memory-server",
        "agent-memory-server",
        None,
        false,
    )
    .await;
}

/// Rasa 3.6 declares Python < 3.11 (for TensorFlow); its RedisTrackerStore imports none of
/// TensorFlow. Installed the same way, without resolution; its tracker store reads back what
/// it wrote, on the 3.11 here.
#[test]
fn rasa() {
    round_trip("rasa", "rasa", "rasa", None);
}

#[tokio::test]
async fn sweep_rasa() {
    sweep_round_trip("sweep_rasa", "rasa", "rasa", None, false).await;
}
