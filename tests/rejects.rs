//! Bad input gets a clear answer: every malformed checkpoint is set aside in `sweep_rejects` once,
//! counted, and the good checkpoints beside it are all saved.

mod common;

use common::*;

#[tokio::test]
async fn every_reject_reason_is_recorded_once_and_the_good_checkpoints_are_saved() {
    let env = TestEnv::migrated("rejects").await;
    let all = corpus();
    let (good, bad): (Vec<_>, Vec<_>) = all.iter().partition(|(_, _, code)| code == "ok");
    for (id, value, _) in &all {
        env.set_raw(id, value.as_slice(), SOON).await;
    }
    // Keys of other Redis types.
    let types: [(&str, &[&str]); 5] = [
        ("a-hash", &["HSET", "messages", "[]"]),
        ("a-list", &["RPUSH", "{}"]),
        ("a-set", &["SADD", "{}"]),
        ("a-zset", &["ZADD", "1", "{}"]),
        ("a-stream", &["XADD", "*", "messages", "[]"]),
    ];
    for (k, args) in types {
        let mut cmd = redis::cmd(args[0]);
        cmd.arg(env.key(k)).arg(&args[1..]);
        let _: redis::Value = env.redis_cmd(&mut cmd).await;
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
    // A 20 MB value (over the 16 MiB default), otherwise a fine checkpoint.
    let huge = big_valid_checkpoint(20_000_000);
    env.set_raw("huge", huge.as_slice(), SOON).await;
    // Good checkpoints beside them.
    for i in 0..10 {
        env.set(
            &format!("good{i}"),
            &doc(Some("2026-11-22T10:00:00Z"), &["m1", "m2"]),
            SOON,
        )
        .await;
    }
    let rejects = bad.len() + types.len() + 2;
    let saved = good.len() + 10;

    let s = env.run_json(&["--batch-size", "5"]);
    assert_eq!(s["status"], "ok");
    assert_eq!(s["rejected"].as_u64().unwrap() as usize, rejects, "{s}");
    assert_eq!(s["persisted"].as_u64().unwrap() as usize, saved, "{s}");
    assert_eq!(s["due"].as_u64().unwrap() as usize, rejects + saved);
    assert_eq!(
        env.count("SELECT count(*) FROM conversations").await as usize,
        saved
    );
    for (id, value, _) in &good {
        let doc: String = sqlx::query_scalar(
            "SELECT checkpoint::text FROM conversations WHERE conversation_id = $1",
        )
        .bind(id)
        .fetch_one(&env.pg)
        .await
        .unwrap_or_else(|e| panic!("{id} was not saved: {e}"));
        let stored: serde_json::Value = serde_json::from_str(&doc).unwrap();
        let written: serde_json::Value = serde_json::from_slice(value).unwrap();
        assert_eq!(
            stored["messages"].as_array().map(Vec::len),
            written["messages"].as_array().map(Vec::len),
            "{id}"
        );
    }

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
        assert!(reason.starts_with(code.as_str()), "{id}: {reason}");
        assert_eq!(raw_size as usize, value.len(), "{id}");
        assert_eq!(raw, *value, "{id}: the raw bytes are kept");
    }
    for (k, _) in types {
        let reason: String =
            sqlx::query_scalar("SELECT reason FROM sweep_rejects WHERE redis_key = $1")
                .bind(env.key(k))
                .fetch_one(&env.pg)
                .await
                .unwrap();
        let t = k.trim_start_matches("a-");
        assert!(
            reason.starts_with(&format!("wrong_type: a Redis {t}")),
            "{k}: {reason}"
        );
    }
    let bin_reason: String =
        sqlx::query_scalar("SELECT reason FROM sweep_rejects WHERE redis_key LIKE '%bin-%'")
            .fetch_one(&env.pg)
            .await
            .unwrap();
    assert!(bin_reason.starts_with("key_not_utf8"), "{bin_reason}");
    let (reason, raw, raw_size): (String, Vec<u8>, i64) =
        sqlx::query_as("SELECT reason, raw, raw_size FROM sweep_rejects WHERE redis_key = $1")
            .bind(env.key("huge"))
            .fetch_one(&env.pg)
            .await
            .unwrap();
    assert!(reason.starts_with("too_large"), "{reason}");
    assert_eq!(raw_size as usize, huge.len());
    assert_eq!(
        raw,
        huge[..64 * 1024],
        "only the first 64 KiB are read and kept"
    );

    // The next run sees the same bad values: counted again, but no second row.
    let s2 = env.run_json(&[]);
    assert_eq!(s2["rejected"].as_u64().unwrap() as usize, rejects);
    assert_eq!(s2["unchanged"].as_u64().unwrap() as usize, saved);
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
    env.set_raw("not_json--plain-text-txt", "still not json", SOON)
        .await;
    env.run_json(&[]);
    assert_eq!(
        env.count("SELECT count(*) FROM sweep_rejects").await as usize,
        rejects + 1
    );
}

#[tokio::test]
async fn keys_that_vanish_mid_sweep_are_counted_not_failed() {
    let env = TestEnv::migrated("vanish").await;
    let mut rng = fastrand::Rng::with_seed(11);
    let mut pipe = redis::pipe();
    for i in 0..3000 {
        // Some keys live a few milliseconds: they expire between SCAN, PTTL and GET.
        let ttl = if i % 2 == 0 { rng.u64(1..40) } else { 120_000 };
        pipe.cmd("SET")
            .arg(env.key(&format!("k{i}")))
            .arg(doc(None, &["a"]).to_string())
            .arg("PX")
            .arg(ttl)
            .ignore();
    }
    let () = pipe.query_async(&mut env.redis.clone()).await.unwrap();
    let s = env.run_json(&["--scan-count", "10"]);
    let n = |f: &str| s[f].as_u64().unwrap();
    assert_eq!(s["status"], "ok");
    assert_eq!(
        n("scanned"),
        n("not_due") + n("no_ttl") + n("expired_before_read") + n("due"),
        "{s}"
    );
    assert_eq!(
        n("due"),
        n("persisted") + n("unchanged") + n("rejected"),
        "{s}"
    );
    assert!(n("persisted") >= 1500, "every long-lived key is saved: {s}");
    assert_eq!(n("rejected"), 0);
}

fn big_valid_checkpoint(bytes: usize) -> Vec<u8> {
    let content = "x".repeat(bytes);
    format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"{content}\"}}]}}").into_bytes()
}

#[tokio::test]
async fn a_row_postgres_refuses_is_set_aside_and_the_rest_of_its_batch_is_saved() {
    let env = TestEnv::migrated("refused").await;
    // Stands in for any value PostgreSQL refuses that the decoder let through.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.conversation_id = 'poison' THEN
             RAISE EXCEPTION 'poisoned value' USING ERRCODE = '22023';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON conversations
           FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(&env.pg)
    .await
    .unwrap();
    env.set("poison", &doc(None, &["p1"]), SOON).await;
    for i in 0..9 {
        env.set(&format!("ok{i}"), &doc(None, &["m1", "m2"]), SOON)
            .await;
    }
    let s = env.run_json(&["--batch-size", "100"]);
    assert_eq!(s["status"], "ok");
    assert_eq!(s["persisted"], 9);
    assert_eq!(s["rejected"], 1);
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 9);
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 18);
    let reason: String =
        sqlx::query_scalar("SELECT reason FROM sweep_rejects WHERE redis_key = $1")
            .bind(env.key("poison"))
            .fetch_one(&env.pg)
            .await
            .unwrap();
    assert!(
        reason.starts_with("postgres_refused") && reason.contains("poisoned value"),
        "{reason}"
    );
}

/// A checkpoint is first read in one command, its first 64 KiB; one that may be longer is probed
/// and fetched whole. None is cut short at the edge of that first read.
#[tokio::test]
async fn checkpoints_around_and_past_the_first_read_are_saved_whole() {
    let env = TestEnv::migrated("firstread").await;
    let wrapper = big_valid_checkpoint(0).len();
    let sizes = [64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 300_000];
    for size in sizes {
        let value = big_valid_checkpoint(size - wrapper);
        assert_eq!(value.len(), size);
        env.set_raw(&format!("s{size}"), value.as_slice(), SOON)
            .await;
    }
    let s = env.run_json(&[]);
    assert_eq!(s["persisted"], sizes.len() as u64, "{s}");
    assert_eq!(s["rejected"], 0, "{s}");
    for size in sizes {
        let content: i32 = sqlx::query_scalar(
            "SELECT length(checkpoint->'messages'->0->>'content') FROM conversations WHERE conversation_id = $1",
        )
        .bind(format!("s{size}"))
        .fetch_one(&env.pg)
        .await
        .unwrap();
        assert_eq!(content as usize, size - wrapper, "{size}");
    }
}
