//! Bad input gets a clear answer: every malformed checkpoint is set aside in `sweep_rejects` once,
//! counted, and the good checkpoints beside it are all saved.

mod common;

use common::*;

/// (conversation id, value, expected reason code). Strings are written with SET.
fn corpus() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        ("broken-json", b"{\"messages\": [".to_vec(), "not_json"),
        ("plain-text", b"hello there".to_vec(), "not_json"),
        ("empty", b"".to_vec(), "not_json"),
        (
            "array",
            b"[{\"role\": \"user\", \"content\": \"hi\"}]".to_vec(),
            "not_object",
        ),
        ("number", b"42".to_vec(), "not_object"),
        (
            "no-messages",
            b"{\"user_id\": \"u\"}".to_vec(),
            "bad_messages",
        ),
        (
            "messages-object",
            b"{\"messages\": {\"role\": \"user\"}}".to_vec(),
            "bad_messages",
        ),
        (
            "message-no-content",
            b"{\"messages\": [{\"role\": \"user\"}]}".to_vec(),
            "bad_messages",
        ),
        (
            "role-number",
            b"{\"messages\": [{\"role\": 1, \"content\": \"x\"}]}".to_vec(),
            "bad_messages",
        ),
        (
            "bad-updated-at",
            b"{\"messages\": [], \"updated_at\": \"yesterday\"}".to_vec(),
            "bad_field",
        ),
        (
            "nul",
            b"{\"messages\": [{\"role\": \"user\", \"content\": \"a\\u0000b\"}]}".to_vec(),
            "nul_character",
        ),
        (
            "latin1",
            b"{\"messages\": [{\"role\": \"user\", \"content\": \"caf\xe9\"}]}".to_vec(),
            "not_utf8",
        ),
        (
            "deep-200",
            format!(
                "{{\"messages\": [], \"x\": {}{}}}",
                "[".repeat(200),
                "]".repeat(200)
            )
            .into_bytes(),
            "not_json",
        ),
        ("too-large", big_valid_checkpoint(300_000), "too_large"),
    ]
}

fn big_valid_checkpoint(bytes: usize) -> Vec<u8> {
    let content = "x".repeat(bytes);
    format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"{content}\"}}]}}").into_bytes()
}

#[tokio::test]
async fn every_reject_reason_is_recorded_once_and_the_good_checkpoints_are_saved() {
    let env = TestEnv::migrated("rejects").await;
    let bad = corpus();
    for (id, value, _) in &bad {
        env.set_raw(id, value.as_slice(), SOON).await;
    }
    // Keys of other Redis types.
    let () = env
        .redis_cmd(
            redis::cmd("HSET")
                .arg(env.key("a-hash"))
                .arg("messages")
                .arg("[]"),
        )
        .await;
    let () = env
        .redis_cmd(redis::cmd("RPUSH").arg(env.key("a-list")).arg("{}"))
        .await;
    for k in ["a-hash", "a-list"] {
        let () = env
            .redis_cmd(redis::cmd("PEXPIRE").arg(env.key(k)).arg(120_000))
            .await;
    }
    // A key name that is not UTF-8.
    let mut binary_key = env.key("bin-").into_bytes();
    binary_key.extend_from_slice(b"\xff\xfe");
    let () = env
        .redis_cmd(
            redis::cmd("SET")
                .arg(&binary_key)
                .arg(doc(None, &["a"]).to_string())
                .arg("PX")
                .arg(120_000),
        )
        .await;
    // A 50-level nesting is a fine checkpoint, as are these.
    let deep50 = format!(
        "{{\"messages\": [], \"x\": {}1{}}}",
        "[".repeat(50),
        "]".repeat(50)
    );
    env.set_raw("deep-50", deep50.as_str(), SOON).await;
    for i in 0..10 {
        env.set(
            &format!("good{i}"),
            &doc(Some("2026-11-22T10:00:00Z"), &["m1", "m2"]),
            SOON,
        )
        .await;
    }
    let rejects = bad.len() + 3;

    let s = env.run_json(&["--max-value-bytes", "256KiB", "--batch-size", "5"]);
    assert_eq!(s["status"], "ok");
    assert_eq!(s["rejected"].as_u64().unwrap() as usize, rejects, "{s}");
    assert_eq!(s["persisted"], 11);
    assert_eq!(s["due"].as_u64().unwrap() as usize, rejects + 11);
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 11);
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 20);

    assert_eq!(
        env.count("SELECT count(*) FROM sweep_rejects").await as usize,
        rejects
    );
    for (id, value, code) in &bad {
        let (reason, raw, raw_size): (String, Vec<u8>, i64) =
            sqlx::query_as("SELECT reason, raw, raw_size FROM sweep_rejects WHERE redis_key = $1")
                .bind(env.key(id))
                .fetch_one(&env.pg)
                .await
                .unwrap_or_else(|e| panic!("no reject row for {id}: {e}"));
        assert!(reason.starts_with(code), "{id}: {reason}");
        assert_eq!(raw_size as usize, value.len(), "{id}");
        let kept = value.len().min(64 * 1024);
        assert_eq!(
            raw,
            value[..kept],
            "{id}: the raw bytes (first 64 KiB) are kept"
        );
    }
    for (k, code) in [
        ("a-hash", "wrong_type: a Redis hash"),
        ("a-list", "wrong_type: a Redis list"),
    ] {
        let reason: String =
            sqlx::query_scalar("SELECT reason FROM sweep_rejects WHERE redis_key = $1")
                .bind(env.key(k))
                .fetch_one(&env.pg)
                .await
                .unwrap();
        assert!(reason.starts_with(code), "{k}: {reason}");
    }
    let bin_reason: String =
        sqlx::query_scalar("SELECT reason FROM sweep_rejects WHERE redis_key LIKE '%bin-%'")
            .fetch_one(&env.pg)
            .await
            .unwrap();
    assert!(bin_reason.starts_with("key_not_utf8"), "{bin_reason}");

    // The next run sees the same bad values: counted again, but no second row.
    let s2 = env.run_json(&["--max-value-bytes", "256KiB"]);
    assert_eq!(s2["rejected"].as_u64().unwrap() as usize, rejects);
    assert_eq!(s2["unchanged"], 11);
    assert_eq!(
        env.count("SELECT count(*) FROM sweep_rejects").await as usize,
        rejects
    );
    assert_eq!(
        env.count("SELECT count(*) FROM sweep_rejects WHERE seen_count = 2")
            .await as usize,
        rejects
    );

    // A bad value that changes is a new row: the operator sees each distinct value once.
    env.set_raw("plain-text", "still not json", SOON).await;
    env.run_json(&["--max-value-bytes", "256KiB"]);
    assert_eq!(
        env.count("SELECT count(*) FROM sweep_rejects").await as usize,
        rejects + 1
    );
}
