//! `sweeper inspect` on a real Redis: counts, types, the TTL histogram around the threshold, the
//! largest values and samples; it changes nothing. And the spinner: on a terminal only.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

async fn seed_mixed(env: &TestEnv) {
    for i in 0..3 {
        env.set(&format!("due{i}"), &doc(None, &["a"]), SOON).await;
    }
    for i in 0..2 {
        env.set(&format!("later{i}"), &doc(None, &["a"]), Some(20 * 60_000))
            .await;
    }
    env.set("forever", &doc(None, &["a"]), None).await;
    env.set_raw("big", "x".repeat(100_000), Some(2 * 3_600_000))
        .await;
    let () = env
        .redis_cmd(redis::cmd("HSET").arg(env.key("hash")).arg("f").arg("v"))
        .await;
}

#[tokio::test]
async fn inspect_sums_up_the_keyspace_and_changes_nothing() {
    let env = TestEnv::new("inspect").await;
    seed_mixed(&env).await;
    let out = env
        .command()
        .args(["inspect", "--match", &env.pattern(), "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["keys"], 8, "{r}");
    assert_eq!(r["types"]["string"], 7);
    assert_eq!(r["types"]["hash"], 1);
    assert_eq!(r["due"], 3);
    assert_eq!(r["no_ttl"], 2, "the plain key and the hash");
    let bucket = |from_min: u64| {
        r["ttl_histogram"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["from_ms"] == from_min * 60_000)
            .unwrap_or_else(|| panic!("no bucket from {from_min}m in {r}"))
            .clone()
    };
    assert_eq!(bucket(1)["keys"], 3);
    assert_eq!(bucket(1)["due"], true);
    assert_eq!(bucket(5)["to_ms"], 600_000, "the threshold is a bound");
    assert_eq!(bucket(15)["keys"], 2);
    assert_eq!(bucket(15)["due"], false);
    assert_eq!(bucket(60)["keys"], 1);
    let total: u64 = r["ttl_histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["keys"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 6, "every key with a TTL in one bucket");
    assert_eq!(r["largest"][0]["key"], env.key("big"));
    assert_eq!(r["largest"][0]["bytes"], 100_000);
    assert_eq!(r["samples"].as_array().unwrap().len(), 5);
    assert!(
        r["samples"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.as_str().unwrap().starts_with(&env.prefix))
    );

    // Nothing changed: TTLs as they were, no key persisted anywhere.
    let pttl: i64 = env.redis_cmd(redis::cmd("PTTL").arg(env.key("due0"))).await;
    assert!(pttl > 100_000 && pttl <= 120_000, "{pttl}");
    let ttl: i64 = env
        .redis_cmd(redis::cmd("PTTL").arg(env.key("forever")))
        .await;
    assert_eq!(ttl, -1);

    let text = env
        .command()
        .args(["inspect", "--match", &env.pattern()])
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("8 keys match"), "{text}");
    assert!(text.contains("<- threshold"), "{text}");
    assert!(text.contains("never saved"), "{text}");
    assert!(text.contains("3 due now"), "{text}");
    // TTLs as people read them and the flags take them: `9m50s`, never `9m 50s 445ms`.
    assert!(text.contains("5m to 10m"), "{text}");
    assert!(!text.contains("ms "), "whole seconds: {text}");
    let largest = text.lines().find(|l| l.contains("bytes  TTL ")).unwrap();
    let ttl = largest
        .split("TTL ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(
        !ttl.is_empty() && sweeper::config::parse_duration(ttl).is_ok(),
        "{largest}"
    );
}

#[tokio::test]
async fn the_spinner_shows_on_a_terminal_only() {
    let env = TestEnv::new("inspect_tty").await;
    seed_mixed(&env).await;
    let bin = env!("CARGO_BIN_EXE_sweeper");
    let piped = env
        .command()
        .args(["inspect", "--match", &env.pattern()])
        .output()
        .unwrap();
    assert!(piped.status.success());
    assert!(
        !stderr(&piped).contains("keys scanned"),
        "{}",
        stderr(&piped)
    );

    // `script` runs the command on a pseudo-terminal and copies what it shows.
    let shown = Command::new("script")
        .args([
            "-qec",
            &format!("{bin} inspect --match '{}'", env.pattern()),
            "/dev/null",
        ])
        .env("REDIS_URL", &env.redis_url)
        // A terminal names itself: with no TERM, indicatif takes it for a dumb one and draws
        // nothing (a job runner's environment, and a stripped one like a newcomer's `env -i`).
        .env("TERM", "xterm-256color")
        .output()
        .expect("script (util-linux) runs");
    assert!(shown.status.success(), "{}", stderr(&shown));
    let all = String::from_utf8_lossy(&shown.stdout);
    assert!(all.contains("keys scanned"), "{all}");
    assert!(all.contains("8 keys match"), "{all}");

    // The same for a sweep (a dry run here).
    let shown = Command::new("script")
        .args([
            "-qec",
            &format!("{bin} -q run --dry-run --match '{}'", env.pattern()),
            "/dev/null",
        ])
        .env("REDIS_URL", &env.redis_url)
        .env("TERM", "xterm-256color")
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&shown.stdout);
    assert!(all.contains("keys scanned, 3 due"), "{all}");
    assert!(all.contains("dry run: 8 keys"), "{all}");
}

/// LangChain's layout (src/mapping/presets/langchain.toml): a list, LPUSH, newest first.
fn langchain(kind: &str, text: &str) -> String {
    serde_json::json!({"type": kind, "data": {"content": text, "additional_kwargs": {},
        "response_metadata": {}, "type": kind, "name": null, "id": null}})
    .to_string()
}

#[tokio::test]
async fn inspect_decodes_its_samples_with_a_chat_librarys_layout() {
    // A Redis of its own: the preset's key template is the default --match.
    let redis = common::servers::PrivateRedis::start();
    let env = TestEnv::with_redis("inspect_format", &redis).await;
    let lpush = |key: &str, items: Vec<String>| {
        let mut cmd = redis::cmd("LPUSH");
        cmd.arg(key).arg(items);
        cmd
    };
    let _: i64 = env
        .redis_cmd(&mut lpush(
            "message_store:s-1",
            vec![langchain("human", "Hi"), langchain("ai", "Hello!")],
        ))
        .await;
    // An element with neither `data.role` nor `type`: a sweep would reject the key, naming them.
    let _: i64 = env
        .redis_cmd(&mut lpush(
            "message_store:s-2",
            vec![r#"{"data": {"content": "no type"}}"#.to_string()],
        ))
        .await;
    for key in ["message_store:s-1", "message_store:s-2"] {
        let () = env
            .redis_cmd(redis::cmd("PEXPIRE").arg(key).arg(120_000))
            .await;
    }
    // Not LangChain's: not matched.
    env.set_raw("other", "x", SOON).await;

    let out = env
        .command()
        .args(["inspect", "--format", "langchain", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["match"], "message_store:*", "{r}");
    assert_eq!((r["keys"].as_u64(), r["due"].as_u64()), (Some(2), Some(2)));
    assert_eq!(r["types"]["list"], 2, "{r}");
    let mut decoded = r["decoded"].as_array().unwrap().clone();
    decoded.sort_by_key(|d| d["key"].as_str().unwrap().to_string());
    assert_eq!(decoded.len(), 2, "{r}");
    assert_eq!(decoded[0]["key"], "message_store:s-1");
    assert_eq!(decoded[0]["conversation_id"], "s-1");
    assert_eq!(decoded[0]["messages"], 2);
    assert_eq!(decoded[0]["reject"], Value::Null);
    assert_eq!(decoded[1]["key"], "message_store:s-2");
    assert_eq!(
        decoded[1]["reject"], "bad_messages: message 0 has no role (`data.role`, `type`)",
        "the reason names the fields: {r}"
    );

    // The text says the same per sample key.
    let text = env
        .command()
        .args(["inspect", "--format", "langchain"])
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("message_store:s-1  -> conversation \"s-1\", 2 messages"),
        "{text}"
    );
    assert!(
        text.contains("message_store:s-2  -> rejected: bad_messages: message 0 has no role"),
        "{text}"
    );

    // A mapping file, with --match of the user's own; SWEEPER_MAPPING is its twin.
    let mapping =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/layouts/session-document.toml");
    for (key, doc) in [
        (
            "session:a",
            r#"{"session_id": "a", "messages": [{"sender": "user", "text": "Hi"}]}"#,
        ),
        (
            "session:b",
            r#"{"session_id": "b", "messages": [{"from": "user", "text": "Hi"}]}"#,
        ),
    ] {
        let () = env
            .redis_cmd(redis::cmd("SET").arg(key).arg(doc).arg("PX").arg(120_000))
            .await;
    }
    let out = env
        .command()
        .env("SWEEPER_MAPPING", &mapping)
        .args(["inspect", "--match", "session:*", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut decoded = r["decoded"].as_array().unwrap().clone();
    decoded.sort_by_key(|d| d["key"].as_str().unwrap().to_string());
    assert_eq!(decoded[0]["conversation_id"], "a", "{r}");
    assert_eq!(
        decoded[1]["reject"], "bad_messages: message 0 has no role (`sender`)",
        "{r}"
    );
    // Inspect changed nothing.
    let pttl: i64 = env
        .redis_cmd(redis::cmd("PTTL").arg("message_store:s-1"))
        .await;
    assert!(pttl > 100_000 && pttl <= 120_000, "{pttl}");
}
