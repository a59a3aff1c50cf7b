//! `sweeper forget --format langgraph` against the real LangGraph client: a thread written by
//! RedisSaver (langgraph-checkpoint-redis), swept into PostgresSaver's tables, forgotten, then
//! written again by the app that still held it (langgraph #7206: a late `put` after
//! `delete_thread` recreates the thread): the sweep leaves it out. Skips without the harness
//! (tests/langgraph/setup.sh).

mod common;

use common::langgraph::{harness, proof};
use common::stack::Stack;
use common::*;
use serde_json::Value;

/// `sweeper ARGS --format langgraph --output json`, which must succeed.
fn langgraph_json(env: &TestEnv, args: &[&str]) -> Value {
    let out = env
        .command()
        .args(args)
        .args(["--format", "langgraph", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Keys of thread `t` and LangGraph rows of it in PostgreSQL.
async fn traces(env: &TestEnv, t: &str) -> (usize, i64) {
    let keys: Vec<String> = env
        .redis_cmd(redis::cmd("KEYS").arg(format!("*:{t}:*")))
        .await;
    let mut rows = 0;
    for table in ["checkpoints", "checkpoint_blobs", "checkpoint_writes"] {
        rows += env
            .count(&format!(
                "SELECT count(*) FROM {table} WHERE thread_id = '{t}'"
            ))
            .await;
    }
    (keys.len(), rows)
}

#[tokio::test]
async fn a_forgotten_langgraph_thread_is_not_brought_back_by_a_late_put() {
    let test = "a_forgotten_langgraph_thread_is_not_brought_back_by_a_late_put";
    let h = match harness() {
        Ok(h) => h,
        Err(why) => return skip(test, &why),
    };
    let stack = Stack::start(&h);
    let admin = std::env::var("SWEEPER_TEST_PG_ADMIN").expect("run through `make test`");
    let env = TestEnv::on("forget_langgraph", &stack.url, &admin)
        .await
        .migrate();
    let out = env.sweeper(&["migrate", "--format", "langgraph"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let state = std::env::temp_dir().join(format!("sweeper-forget-lg-{}.json", std::process::id()));
    proof(&h, &["write", &stack.url, state.to_str().unwrap()]);
    // RedisSaver's keys have 30 minutes left: due under 46m.
    let due = ["--threshold", "46m", "--protect-ttl", "50m"];
    let s = langgraph_json(&env, &[&["run"][..], &due].concat());
    assert!(s["persisted"].as_u64() >= Some(4), "{s}");
    let (keys, rows) = traces(&env, "t-1").await;
    assert!(keys > 3 && rows > 3, "{keys} keys, {rows} rows");
    let other = traces(&env, "t-2").await;

    let r = langgraph_json(
        &env,
        &["forget", "--conversation", "t-1", "--reason", "DSR-1"],
    );
    assert_eq!(r["conversations"], 1, "{r}");
    assert_eq!(r["redis_keys"].as_u64(), Some(keys as u64), "{r}");
    assert_eq!(
        traces(&env, "t-1").await,
        (0, 0),
        "every key and row of the thread"
    );
    assert_eq!(traces(&env, "t-2").await, other, "another thread untouched");

    // The app still holds the thread and takes one more turn on it.
    proof(&h, &["late", &stack.url, "t-1"]);
    assert!(
        traces(&env, "t-1").await.0 > 0,
        "the late put wrote the thread again"
    );
    let s = langgraph_json(&env, &[&["run"][..], &due].concat());
    assert_eq!(s["erased"], 1, "{s}");
    assert_eq!(traces(&env, "t-1").await.1, 0, "not saved again");
    // Forgotten again: its keys go too.
    let r = langgraph_json(&env, &["forget", "--conversation", "t-1"]);
    assert!(r["redis_keys"].as_u64() > Some(0), "{r}");
    assert_eq!(traces(&env, "t-1").await, (0, 0));
    let _ = std::fs::remove_file(state);
}
