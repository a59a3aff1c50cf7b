//! `sweeper restore`: a saved conversation goes back into Redis as a checkpoint the next sweep
//! reads like any other (no duplicate message, no regressed row); a live key is kept unless
//! --force.

mod common;

use common::*;
use serde_json::{Value, json};

fn restore(env: &TestEnv, args: &[&str]) -> std::process::Output {
    let mut all = vec!["restore"];
    all.extend_from_slice(args);
    env.sweeper(&all)
}

#[tokio::test]
async fn a_swept_conversation_comes_back_and_sweeps_again_without_duplicates() {
    let env = TestEnv::migrated("restore").await;
    // Messages with ids, and two identical id-less ones: their identity depends on their exact
    // text, which must survive the trip through PostgreSQL.
    let mut d = doc(Some("2026-11-22T10:05:00Z"), &["m1", "m2"]);
    d["messages"].as_array_mut().unwrap().extend([
        json!({"role": "user", "content": "ok", "ts": "2026-11-22T10:04:00.000+00:00"}),
        json!({"role": "user", "content": "ok", "ts": "2026-11-22T10:04:00.000+00:00"}),
    ]);
    d["extra"] = json!({"kept": [1, 2.50, "x"]});
    env.set("c1", &d, SOON).await;
    let s = env.run_json(&[]);
    assert_eq!(s["persisted"], 1);
    let stored = env.count("SELECT count(*) FROM messages").await;
    assert_eq!(stored, 4);

    // The key expires; the user comes back.
    let () = env.redis_cmd(redis::cmd("DEL").arg(env.key("c1"))).await;
    let conversation = env.key("c1")[env.prefix.len()..].to_string();
    let out = restore(&env, &["--conversation", &conversation, "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["key"], env.key("c1"));
    assert_eq!(r["messages"], 4);
    let value: String = env.redis_cmd(redis::cmd("GET").arg(env.key("c1"))).await;
    let back: Value = serde_json::from_str(&value).unwrap();
    assert_eq!(
        back["messages"], d["messages"],
        "messages as the chat service wrote them"
    );
    assert_eq!(back["extra"]["kept"][0], 1);
    assert_eq!(back["user_id"], d["user_id"]);
    let pttl: i64 = env.redis_cmd(redis::cmd("PTTL").arg(env.key("c1"))).await;
    assert!(pttl > 29 * 60_000 && pttl <= 30 * 60_000, "{pttl}");

    // Ending again: the sweep reads it like any checkpoint, adds nothing twice.
    let () = env
        .redis_cmd(redis::cmd("PEXPIRE").arg(env.key("c1")).arg(60_000))
        .await;
    let s = env.run_json(&[]);
    assert_eq!(s["due"], 1);
    assert_eq!(s["rejected"], 0);
    assert_eq!(s["messages_added"], 0);
    assert_eq!(env.count("SELECT count(*) FROM messages").await, stored);
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 1);
    assert_eq!(
        env.count("SELECT count(*) FROM conversations WHERE updated_at = '2026-11-22T10:05:00Z'")
            .await,
        1,
        "not regressed"
    );
}

#[tokio::test]
async fn a_live_key_is_kept_unless_forced_and_unknown_ids_are_one_line() {
    let env = TestEnv::migrated("restore_live").await;
    env.set("c1", &doc(None, &["m1"]), SOON).await;
    env.run_json(&[]);
    let conversation = env.key("c1")[env.prefix.len()..].to_string();
    // The chat service has moved on: a newer state is live.
    let newer = doc(None, &["m1", "m2"]).to_string();
    env.set_raw("c1", newer.as_str(), FAR).await;

    let out = restore(&env, &["--conversation", &conversation]);
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(line.contains("live") && line.contains("--force"), "{line}");
    let value: String = env.redis_cmd(redis::cmd("GET").arg(env.key("c1"))).await;
    assert_eq!(value, newer, "untouched");

    let out = restore(
        &env,
        &["--conversation", &conversation, "--force", "--ttl", "5m"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let value: Value = serde_json::from_str(
        &env.redis_cmd::<String>(redis::cmd("GET").arg(env.key("c1")))
            .await,
    )
    .unwrap();
    assert_eq!(value["messages"].as_array().unwrap().len(), 1);
    let pttl: i64 = env.redis_cmd(redis::cmd("PTTL").arg(env.key("c1"))).await;
    assert!(pttl > 4 * 60_000 && pttl <= 5 * 60_000, "{pttl}");

    let out = restore(&env, &["--conversation", "no-such-conversation"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(error_line(&out).contains("no conversation `no-such-conversation`"));
    let out = restore(&env, &["--conversation", &conversation, "--ttl", "0s"]);
    assert_eq!(out.status.code(), Some(2));
}
