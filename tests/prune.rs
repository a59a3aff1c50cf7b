//! `sweeper prune --older-than`: retention. The conversations last updated before the window go
//! with their messages, the rejects last seen before it too; everything newer stays, to the
//! minute; a receipt says what went, batch by batch.

mod common;

use common::*;
use serde_json::Value;

fn prune(env: &TestEnv, args: &[&str]) -> Value {
    let out = env
        .command()
        .args(["prune", "--output", "json"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "prune {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn prune_deletes_what_is_older_than_the_window_to_the_minute() {
    let env = TestEnv::migrated("prune").await;
    for i in 0..6 {
        env.set(
            &format!("p{i}"),
            &doc(Some("2026-11-22T10:00:00Z"), &["m1", "m2"]),
            SOON,
        )
        .await;
    }
    env.set_raw("bad", "not json", SOON).await;
    let s = env.run_json(&[]);
    assert_eq!(
        (s["persisted"].as_u64(), s["rejected"].as_u64()),
        (Some(6), Some(1))
    );
    // Ages around the 10-day window: p0-p2 a minute past it (one without updated_at, judged by
    // when it was saved), p3-p4 a minute inside it, p5 today.
    for sql in [
        "UPDATE conversations SET updated_at = now() - interval '10 days 1 minute' WHERE conversation_id IN ('p0', 'p1')",
        "UPDATE conversations SET updated_at = NULL, last_persisted_at = now() - interval '10 days 1 minute' WHERE conversation_id = 'p2'",
        "UPDATE conversations SET updated_at = now() - interval '9 days 23 hours 59 minutes' WHERE conversation_id IN ('p3', 'p4')",
        "UPDATE conversations SET updated_at = now() WHERE conversation_id = 'p5'",
        "UPDATE sweep_rejects SET last_seen_at = now() - interval '11 days'",
    ] {
        sqlx::query(sql).execute(&env.pg).await.unwrap();
    }

    let dry = prune(&env, &["--older-than", "10d", "--dry-run"]);
    let counts = |v: &Value| {
        (
            v["conversations"].as_u64(),
            v["messages"].as_u64(),
            v["rejects"].as_u64(),
        )
    };
    assert_eq!(counts(&dry), (Some(3), Some(6), Some(1)), "{dry}");
    assert!(dry["receipt"].is_null());
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 6);

    // One conversation per transaction: the receipt adds up across them.
    let r = prune(&env, &["--older-than", "10d", "--prune-batch", "1"]);
    assert_eq!(counts(&r), (Some(3), Some(6), Some(1)), "{r}");
    let mut left: Vec<String> =
        sqlx::query_scalar("SELECT conversation_id FROM conversations ORDER BY 1")
            .fetch_all(&env.pg)
            .await
            .unwrap();
    left.sort();
    assert_eq!(left, ["p3", "p4", "p5"]);
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 6);
    assert_eq!(env.count("SELECT count(*) FROM sweep_rejects").await, 0);
    let receipt = r["receipt"].as_str().unwrap();
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM erasures WHERE receipt = '{receipt}' AND action = 'prune' AND scope = 'age' \
             AND older_than_s = 864000 AND conversations = 3 AND messages = 6 AND rejects = 1 \
             AND finished_at IS NOT NULL"
        ))
        .await,
        1
    );

    // Again: nothing left to prune.
    let again = prune(&env, &["--older-than", "10d"]);
    assert_eq!(counts(&again), (Some(0), Some(0), Some(0)), "{again}");
    let out = env.sweeper(&["prune", "--older-than", "0s"]);
    assert_eq!(out.status.code(), Some(2));
    let out = env.sweeper(&["prune"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn a_sweep_with_retention_prunes_once_a_day() {
    let env = TestEnv::migrated("prune_retention").await;
    env.set("old", &doc(Some("2026-11-22T10:00:00Z"), &["m1"]), SOON)
        .await;
    env.run_json(&[]);
    sqlx::query("UPDATE conversations SET updated_at = now() - interval '30 days'")
        .execute(&env.pg)
        .await
        .unwrap();
    let () = env.redis_cmd(redis::cmd("DEL").arg(env.key("old"))).await;
    env.set("new", &doc(Some("2026-12-06T10:00:00Z"), &["m1"]), SOON)
        .await;
    let s = env.run_json(&["--retention", "10d"]);
    assert_eq!(s["persisted"], 1, "the sweep first: {s}");
    let left: Vec<String> = sqlx::query_scalar("SELECT conversation_id FROM conversations")
        .fetch_all(&env.pg)
        .await
        .unwrap();
    assert_eq!(left, ["new"]);
    let receipts = "SELECT count(*) FROM erasures WHERE action = 'prune' AND reason = '--retention' \
                    AND conversations = 1 AND older_than_s = 864000";
    assert_eq!(env.count(receipts).await, 1);
    // The next sweeps, minutes later, do not prune again.
    env.run_json(&["--retention", "10d"]);
    assert_eq!(
        env.count("SELECT count(*) FROM erasures WHERE action = 'prune'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_prune_killed_at_any_point_and_run_again_finishes_with_receipts_that_add_up() {
    let env = TestEnv::migrated("prune_kill").await;
    env.seed(2000, SOON.unwrap()).await;
    assert_eq!(env.run_json(&[])["persisted"], 2000);
    sqlx::query("UPDATE conversations SET updated_at = now() - interval '30 days'")
        .execute(&env.pg)
        .await
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    for _ in 0..3 {
        let mut child = env
            .command()
            .args(["prune", "--older-than", "10d", "--prune-batch", "10"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.u64(0..300)));
        let _ = child.kill();
        let _ = child.wait();
    }
    let r = prune(&env, &["--older-than", "10d"]);
    eprintln!("after the kills: {r}");
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 0);
    assert_eq!(env.count("SELECT count(*) FROM message_rows").await, 0);
    // Each batch added its counts to its receipt in its own transaction: they add up.
    assert_eq!(
        env.count("SELECT sum(conversations)::int8 FROM erasures WHERE action = 'prune'")
            .await,
        2000
    );
    assert_eq!(
        env.count("SELECT sum(messages)::int8 FROM erasures WHERE action = 'prune'")
            .await,
        6000
    );
}
