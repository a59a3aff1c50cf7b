//! `--format`: checkpoints kept as hashes, lists and RedisJSON documents go through the same
//! selection, decoding, guarantees and reject rules as JSON strings, on real servers.

mod common;

use common::layouts::{Kind, write};
use common::servers::PrivateRedis;
use common::*;
use serde_json::Value;

async fn pttl(env: &TestEnv, id: &str) -> i64 {
    env.redis_cmd(redis::cmd("PTTL").arg(env.key(id))).await
}

/// One layout through selection, decoding, rejects and the guarantees.
async fn sweeps_like_json(env: &TestEnv, kind: Kind) {
    let format = kind.format();
    let due = 120_000;
    write(
        env,
        kind,
        "c1",
        &doc(Some("2026-11-22T10:00:00Z"), &["m1", "m2"]),
        due,
    )
    .await;
    write(
        env,
        kind,
        "far",
        &doc(Some("2026-11-22T10:00:00Z"), &["m1"]),
        3_600_000,
    )
    .await;
    // Too large for --max-value-bytes 8KiB: rejected with a sample, never read whole.
    let mut big = doc(Some("2026-11-22T10:00:00Z"), &["m1"]);
    big["messages"][0]["content"] = Value::String("x".repeat(20_000));
    write(env, kind, "big", &big, due).await;
    // A key of another type.
    let _: i64 = env
        .redis_cmd(redis::cmd("SADD").arg(env.key("set")).arg("{}"))
        .await;
    let () = env
        .redis_cmd(redis::cmd("PEXPIRE").arg(env.key("set")).arg(due))
        .await;

    let before = pttl(env, "c1").await;
    let args = ["--format", format, "--max-value-bytes", "8KiB"];
    let s = env.run_json(&args);
    assert_eq!(
        (
            s["scanned"].as_u64(),
            s["due"].as_u64(),
            s["not_due"].as_u64()
        ),
        (Some(4), Some(3), Some(1)),
        "{format}: {s}"
    );
    assert_eq!(s["persisted"], 1, "{format}: {s}");
    assert_eq!(s["rejected"], 2, "{format}: {s}");
    // Reading does not refresh the TTL.
    let after = pttl(env, "c1").await;
    assert!(
        after > 0 && after <= before,
        "{format}: TTL {before} -> {after}"
    );

    let (count, user, checkpoint): (i32, Option<String>, Value) = sqlx::query_as(
        "SELECT message_count, user_id, checkpoint FROM conversations WHERE conversation_id = 'c1'",
    )
    .fetch_one(&env.pg)
    .await
    .unwrap();
    assert_eq!(count, 2, "{format}");
    if kind != Kind::List {
        assert_eq!(user.as_deref(), Some("u-1"), "{format}");
        assert_eq!(
            checkpoint["metadata"]["channel"], "web",
            "{format}: {checkpoint}"
        );
    }
    let contents: Vec<String> = sqlx::query_scalar(
        "SELECT content FROM messages WHERE conversation_id = 'c1' ORDER BY seq",
    )
    .fetch_all(&env.pg)
    .await
    .unwrap();
    assert_eq!(contents, ["text of m1", "text of m2"], "{format}");

    let reason = |id: &str| {
        let key = env.key(id);
        async move {
            sqlx::query_as::<_, (String, Vec<u8>, i64)>(
                "SELECT reason, raw, raw_size FROM sweep_rejects WHERE redis_key = $1",
            )
            .bind(key)
            .fetch_one(&env.pg)
            .await
            .unwrap()
        }
    };
    let (r, _, _) = reason("set").await;
    assert!(
        r.starts_with("wrong_type: a Redis set, not a"),
        "{format}: {r}"
    );
    let (r, raw, size) = reason("big").await;
    assert!(r.starts_with("too_large"), "{format}: {r}");
    assert!(size > 8 * 1024, "{format}: {size}");
    assert!(
        !raw.is_empty() && raw.len() <= 64 * 1024,
        "{format}: a sample, {} bytes",
        raw.len()
    );

    // The same checkpoint again: nothing written.
    let s = env.run_json(&args);
    assert_eq!(
        (s["persisted"].as_u64(), s["unchanged"].as_u64()),
        (Some(0), Some(1)),
        "{format}: {s}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM sweep_rejects").await,
        2,
        "{format}: the same bad values add no rows"
    );

    // A newer checkpoint with one more message: the message is added once.
    write(
        env,
        kind,
        "c1",
        &doc(Some("2026-11-22T10:05:00Z"), &["m1", "m2", "m3"]),
        due,
    )
    .await;
    let s = env.run_json(&args);
    assert_eq!(
        (s["persisted"].as_u64(), s["messages_added"].as_u64()),
        (Some(1), Some(1)),
        "{format}: {s}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM messages WHERE conversation_id = 'c1'")
            .await,
        3,
        "{format}"
    );
}

#[tokio::test]
async fn hashes_sweep_like_json_strings() {
    let env = TestEnv::migrated("layout_hash").await;
    sweeps_like_json(&env, Kind::Hash).await;
}

#[tokio::test]
async fn lists_sweep_like_json_strings() {
    let env = TestEnv::migrated("layout_list").await;
    sweeps_like_json(&env, Kind::List).await;
}

#[tokio::test]
async fn a_list_element_that_is_not_json_rejects_the_key_with_its_elements() {
    let env = TestEnv::migrated("layout_list_bad").await;
    let key = env.key("c1");
    let _: i64 = env
        .redis_cmd(
            redis::cmd("RPUSH")
                .arg(&key)
                .arg(r#"{"role":"user","content":"hi"}"#)
                .arg("oops"),
        )
        .await;
    let () = env
        .redis_cmd(redis::cmd("PEXPIRE").arg(&key).arg(120_000))
        .await;
    let s = env.run_json(&["--format", "list"]);
    assert_eq!(s["rejected"], 1, "{s}");
    let (reason, raw): (String, Vec<u8>) =
        sqlx::query_as("SELECT reason, raw FROM sweep_rejects WHERE redis_key = $1")
            .bind(&key)
            .fetch_one(&env.pg)
            .await
            .unwrap();
    assert!(reason.starts_with("not_json: list element 1"), "{reason}");
    assert_eq!(raw, br#"["{\"role\":\"user\",\"content\":\"hi\"}","oops"]"#);
}

#[tokio::test]
async fn auto_reads_each_key_by_its_type() {
    let env = TestEnv::migrated("layout_auto").await;
    for (id, kind) in [("s", Kind::Json), ("h", Kind::Hash), ("l", Kind::List)] {
        write(
            &env,
            kind,
            id,
            &doc(Some("2026-11-22T10:00:00Z"), &["m1", "m2"]),
            120_000,
        )
        .await;
    }
    let _: i64 = env
        .redis_cmd(redis::cmd("ZADD").arg(env.key("z")).arg(1).arg("{}"))
        .await;
    let () = env
        .redis_cmd(redis::cmd("PEXPIRE").arg(env.key("z")).arg(120_000))
        .await;
    // json (the default) reads the string only.
    let s = env.run_json(&["--dry-run"]);
    assert_eq!(
        (s["due"].as_u64(), s["rejected"].as_u64()),
        (Some(4), Some(3)),
        "{s}"
    );
    let s = env.run_json(&["--format", "auto"]);
    assert_eq!(
        (s["persisted"].as_u64(), s["rejected"].as_u64()),
        (Some(3), Some(1)),
        "{s}"
    );
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 6);
    let reason: String = sqlx::query_scalar("SELECT reason FROM sweep_rejects")
        .fetch_one(&env.pg)
        .await
        .unwrap();
    assert_eq!(
        reason,
        "wrong_type: a Redis zset, not a string, hash, list or RedisJSON document"
    );
    // SWEEPER_FORMAT is the flag's twin.
    let out = env
        .command()
        .env("SWEEPER_FORMAT", "auto")
        .args([
            "run",
            "--dry-run",
            "--output",
            "json",
            "--match",
            &env.pattern(),
        ])
        .output()
        .unwrap();
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["rejected"], 1, "{s}");
}

#[tokio::test]
async fn rejson_documents_sweep_like_json_strings() {
    let module = match rejson_module() {
        Ok(m) => m,
        Err(why) => return skip("rejson_documents_sweep_like_json_strings", &why),
    };
    let module = module.to_string_lossy().into_owned();
    let redis = match PrivateRedis::try_start(&["--loadmodule", &module]) {
        Ok(r) => r,
        Err(why) => {
            return skip(
                "rejson_documents_sweep_like_json_strings",
                &format!("Redis cannot load {module}: {why}"),
            );
        }
    };
    let env = TestEnv::with_redis("layout_rejson", &redis).await;
    sweeps_like_json(&env, Kind::ReJson).await;

    // auto tells a RedisJSON document from the other layouts.
    let env = TestEnv::with_redis("layout_rejson_auto", &redis).await;
    for (id, kind) in [
        ("s", Kind::Json),
        ("h", Kind::Hash),
        ("l", Kind::List),
        ("r", Kind::ReJson),
    ] {
        write(
            &env,
            kind,
            id,
            &doc(Some("2026-11-22T10:00:00Z"), &["m1"]),
            120_000,
        )
        .await;
    }
    let s = env.run_json(&["--format", "auto"]);
    assert_eq!(
        (s["persisted"].as_u64(), s["rejected"].as_u64()),
        (Some(4), Some(0)),
        "{s}"
    );
}

#[test]
fn a_preset_without_a_prefix_of_its_own_needs_a_match() {
    // LlamaIndex keeps conversations under the application's own keys (`{id}`: every key), RedisVL
    // under `{name}:...`: without --match a sweep would read every key of every application.
    for (format, pattern) in [("llamaindex", "*"), ("redisvl", "*:*:*:*")] {
        for cmd in [&["run", "--dry-run"][..], &["run"], &["inspect"]] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_sweeper"))
                .args(cmd)
                .args(["--format", format])
                .env("REDIS_URL", "redis://127.0.0.1:1/")
                .env("DATABASE_URL", "postgres://x@127.0.0.1:1/x")
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(2),
                "{format} {cmd:?}: {}",
                stderr(&out)
            );
            let line = error_line(&out);
            assert!(
                line.contains(&format!(
                    "--format {format} has no key prefix of its own (its keys are {pattern}"
                )) && line.contains("give --match the pattern of your conversation keys"),
                "{line}"
            );
        }
    }
    // The same for a mapping file whose template has no word of its own.
    let dir = std::env::temp_dir().join(format!("sweeper-nomatch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("m.toml");
    std::fs::write(
        &file,
        "key = \"{id}\"\nredis_type = \"list\"\n[message]\nrole = \"r\"\ncontent = \"c\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sweeper"))
        .args(["run", "--dry-run", "--mapping"])
        .arg(&file)
        .env("REDIS_URL", "redis://127.0.0.1:1/")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(error_line(&out).contains("this --mapping has no key prefix of its own"));
    let _ = std::fs::remove_dir_all(dir);
}
