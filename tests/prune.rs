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
    // Their ids too, those of partitions pruned whole by a prune killed before it deleted them.
    assert_eq!(env.count("SELECT count(*) FROM conversation_ids").await, 0);
    assert_eq!(env.count("SELECT count(*) FROM pruned_ranges").await, 0);
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

/// `message_rows` cut in partitions of `span` conversation ids instead of the default's, made
/// afresh (a test's conversations are few): what an operator's `UPDATE message_partitioning`
/// does for the partitions made after it.
async fn partitions_of(env: &TestEnv, span: i64) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DO $$ DECLARE p regclass; BEGIN
             FOR p IN SELECT part FROM sweeper_message_partitions() LOOP EXECUTE format('DROP TABLE %s, %s', p, replace(p::text, 'message_rows', 'conversations')); END LOOP;
         END $$;
         UPDATE message_partitioning SET span = {span};
         SELECT sweeper_extend_message_partitions();"
    )))
    .execute(&env.pg)
    .await
    .unwrap();
}

/// The ranged partitions of `message_rows`, by their lower bound.
async fn partitions(env: &TestEnv) -> Vec<i64> {
    sqlx::query_scalar("SELECT lo FROM sweeper_message_partitions()")
        .fetch_all(&env.pg)
        .await
        .unwrap()
}

/// Every message of `ids`, by conversation id, as the `messages` view reads them.
async fn messages_of(env: &TestEnv, ids: &[String]) -> Vec<(String, String, i32, Option<String>)> {
    sqlx::query_as(
        "SELECT conversation_id, message_key, seq, content FROM messages \
         WHERE conversation_id = ANY($1) ORDER BY 1, 2",
    )
    .bind(ids)
    .fetch_all(&env.pg)
    .await
    .unwrap()
}

/// The conversation ids of the conversations whose integer id is in `ids`.
async fn named_by_id(env: &TestEnv, ids: &[i64]) -> Vec<String> {
    sqlx::query_scalar("SELECT conversation_id FROM conversations WHERE id = ANY($1) ORDER BY 1")
        .bind(ids)
        .fetch_all(&env.pg)
        .await
        .unwrap()
}

async fn wal_lsn(env: &TestEnv) -> String {
    sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&env.pg)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_prune_drops_whole_partitions_and_the_survivors_keep_every_message() {
    // A server of its own: the WAL it writes is this test's alone.
    let pg = common::servers::PrivatePg::start();
    let env = TestEnv::with_pg("prune_partitions", &pg).await;
    partitions_of(&env, 100).await;
    env.seed(250, SOON.unwrap()).await;
    assert_eq!(env.run_json(&[])["persisted"], 250);
    // Older turns the documents no longer hold, their text in their rows: 23 messages each.
    sqlx::raw_sql(
        "INSERT INTO message_rows (conversation, message_key, seq, message_id, role, content)
             SELECT c.id, sweeper_message_key('id:old' || j), 2 + j, 'old' || j, 'user', 'old turn ' || j
             FROM conversations c, generate_series(1, 20) j;
         UPDATE conversations SET message_count = message_count + 20;
         -- Ids 1-199 (two closed partitions) past the window but for two survivors of the first;
         -- 200-250 (the open partition) recent.
         UPDATE conversations SET updated_at = CASE WHEN id < 200 AND id NOT IN (7, 42)
             THEN now() - interval '30 days' ELSE now() END;",
    )
    .execute(&env.pg)
    .await
    .unwrap();
    let survivors = named_by_id(&env, &[7, 42]).await;
    let kept_before = messages_of(&env, &survivors).await;
    assert_eq!(kept_before.len(), 46);
    let restored = |c: &str| {
        let out = env
            .command()
            .args([
                "restore",
                "--conversation",
                c,
                "--force",
                "--output",
                "json",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "restore: {}", stderr(&out));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        r["messages"].clone()
    };
    let restored_before = restored(&survivors[0]);
    // The doomed ones' keys expired (a sweep after the prune must not save them again).
    let doomed = sqlx::query_scalar::<_, String>(
        "SELECT redis_key FROM conversations WHERE id < 200 AND id NOT IN (7, 42)",
    )
    .fetch_all(&env.pg)
    .await
    .unwrap();
    let () = env.redis_cmd(redis::cmd("DEL").arg(&doomed)).await;
    assert_eq!(partitions(&env).await[..3], [0, 100, 200]);
    let file_before = env
        .count("SELECT pg_relation_filenode('message_rows_0')::int8")
        .await;

    let from = wal_lsn(&env).await;
    let r = prune(&env, &["--older-than", "10d"]);
    let wal = env
        .count(&format!(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '{from}')::int8"
        ))
        .await;
    assert_eq!(
        (r["conversations"].as_u64(), r["messages"].as_u64()),
        (Some(197), Some(197 * 23)),
        "{r}"
    );
    // The closed partition without survivors went whole (its relation is gone); the one with
    // two was emptied into a new file holding only theirs; the WAL written is a fraction of the
    // ~50 bytes each deleted message row would write.
    assert_eq!(partitions(&env).await[..2], [0, 200]);
    assert_eq!(
        env.count("SELECT count(*) FROM pg_class WHERE relname = 'message_rows_100'")
            .await,
        0
    );
    assert_eq!(env.count("SELECT count(*) FROM message_rows_0").await, 46);
    assert_ne!(
        env.count("SELECT pg_relation_filenode('message_rows_0')::int8")
            .await,
        file_before
    );
    eprintln!(
        "WAL of the prune: {wal} bytes for {} message rows",
        197 * 23
    );
    assert!(wal < 197 * 23 * 50 / 4, "WAL {wal} bytes");

    // The survivors: their ids, every message as before, restore returns the same.
    assert_eq!(named_by_id(&env, &[7, 42]).await, survivors);
    assert_eq!(messages_of(&env, &survivors).await, kept_before);
    assert_eq!(restored(&survivors[0]), restored_before);
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 53);
    // The pruned conversations' ids are gone, the survivors' kept.
    assert_eq!(
        env.count("SELECT count(*) FROM conversation_ids d JOIN conversations c USING (id, conversation_id)")
            .await,
        53
    );
    assert_eq!(env.count("SELECT count(*) FROM conversation_ids").await, 53);
    assert_eq!(
        env.count("SELECT count(*) FROM message_rows").await,
        53 * 23
    );
    assert_eq!(
        env.count("SELECT count(*) FROM message_rows_default").await,
        0
    );
    let receipt = r["receipt"].as_str().unwrap();
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM erasures WHERE receipt = '{receipt}' AND conversations = 197 \
             AND messages = {} AND finished_at IS NOT NULL",
            197 * 23
        ))
        .await,
        1
    );
    // The next sweep finds the survivors unchanged (but the one restore gave a fresh TTL:
    // not due).
    let s = env.run_json(&[]);
    assert_eq!(
        (
            s["persisted"].as_u64(),
            s["unchanged"].as_u64(),
            s["not_due"].as_u64()
        ),
        (Some(0), Some(52), Some(1)),
        "{s}"
    );

    // Once the survivors are past the window too, their partition goes whole.
    sqlx::query(
        "UPDATE conversations SET updated_at = now() - interval '30 days' WHERE id IN (7, 42)",
    )
    .execute(&env.pg)
    .await
    .unwrap();
    let r = prune(&env, &["--older-than", "10d"]);
    assert_eq!(
        (r["conversations"].as_u64(), r["messages"].as_u64()),
        (Some(2), Some(46)),
        "{r}"
    );
    assert_eq!(partitions(&env).await[0], 200);
}

#[tokio::test]
async fn a_sweep_that_read_ids_before_a_prune_writes_on_and_loses_nothing() {
    let env = TestEnv::migrated("prune_race").await;
    partitions_of(&env, 100).await;
    env.seed(150, SOON.unwrap()).await;
    assert_eq!(env.run_json(&[])["persisted"], 150);
    sqlx::query(
        "UPDATE conversations SET updated_at = CASE WHEN (id < 100 AND id NOT IN (7, 42)) OR id = 120 \
         THEN now() - interval '30 days' ELSE now() END",
    )
    .execute(&env.pg)
    .await
    .unwrap();
    let survivors = named_by_id(&env, &[7, 42]).await;
    // Late writes of conversations the prune deletes (60 in a partition it empties, 120 in the
    // open one, deleted by rows), another old one whose key is still in Redis, unchanged (the
    // sweep skips it), and a new one.
    let late = named_by_id(&env, &[60, 120]).await;
    let unchanged = named_by_id(&env, &[61]).await.remove(0);
    let () = env
        .redis_cmd(redis::cmd("DEL").arg(
            sqlx::query_scalar::<_, String>(
                "SELECT redis_key FROM conversations WHERE id < 100 AND id NOT IN (7, 42, 60, 61)",
            )
            .fetch_all(&env.pg)
            .await
            .unwrap(),
        ))
        .await;
    let newer = doc(
        Some("2026-12-06T09:00:00Z"),
        &["m1", "m2", "m3", "m4", "m5"],
    );
    for id in survivors.iter().chain(&late) {
        env.set(id, &newer, SOON).await;
    }
    env.set("fresh", &newer, SOON).await;

    // The sweep looks its batch up, then waits in its transaction for the erasure lock, held
    // here, while the prune empties the partition but for the survivors' rows and deletes the
    // other conversations.
    let mut hold = env.pg.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(8319381245402718547)")
        .execute(&mut *hold)
        .await
        .unwrap();
    let sweep = env
        .command()
        .args(["run", "--match", &env.pattern(), "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    let t0 = std::time::Instant::now();
    while env.count(waiting).await == 0 {
        assert!(
            t0.elapsed().as_secs() < 30,
            "the sweep never reached its write"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let r = prune(&env, &["--older-than", "10d"]);
    assert_eq!(r["conversations"], 98, "{r}");
    assert_eq!(
        env.count("SELECT count(*) FROM message_rows_0").await,
        6,
        "the survivors' rows only"
    );
    sqlx::query("SELECT pg_advisory_unlock(8319381245402718547)")
        .execute(&mut *hold)
        .await
        .unwrap();
    drop(hold);
    let out = sweep.wait_with_output().unwrap();
    assert!(out.status.success(), "sweep: {}", stderr(&out));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("the sweep beside the prune: {s}");

    // Its batch, looked up before the prune, is written as it was: the survivors' new messages
    // beside their kept ones, the late writes saved anew with all their messages, the new one; the
    // unchanged old one stays gone.
    for id in survivors.iter().chain(&late) {
        let keys: Vec<String> = messages_of(&env, std::slice::from_ref(id))
            .await
            .into_iter()
            .map(|m| m.1)
            .collect();
        assert_eq!(keys, ["id:m1", "id:m2", "id:m3", "id:m4", "id:m5"], "{id}");
        assert_eq!(
            env.count(&format!(
                "SELECT message_count::int8 FROM conversations WHERE conversation_id = '{id}'"
            ))
            .await,
            5,
            "{id}"
        );
    }
    assert_eq!(messages_of(&env, &["fresh".to_string()]).await.len(), 5);
    assert_eq!(
        messages_of(&env, std::slice::from_ref(&unchanged))
            .await
            .len(),
        0
    );
    assert_eq!(
        env.count("SELECT count(*) FROM conversations WHERE conversation_id = ANY(ARRAY['fresh'])")
            .await,
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM conversations").await,
        50 + 2 + 2 + 1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM message_rows_default").await,
        0
    );
}

/// Each prune ends the range ids are drawn in, once its first conversation is older than
/// `message_partitioning.close_after`: run daily, prunes cut the ranges at their own times, a
/// day each, so a window later a whole range is past the window and goes whole, no grace needed.
#[tokio::test]
async fn a_prune_closes_the_range_ids_are_drawn_in_so_a_window_later_it_goes_whole() {
    let env = TestEnv::migrated("prune_close").await;
    partitions_of(&env, 100).await;
    // "Day 1": 30 conversations, ids 1-30 in the range 0-100.
    env.seed(30, SOON.unwrap()).await;
    assert_eq!(env.run_json(&[])["persisted"], 30);
    // That day's prune, its range's first conversation older than close_after (0 here: a test
    // has no day to wait): nothing is past the window (their documents say 2026-11-22), and
    // the range is closed.
    sqlx::query("UPDATE message_partitioning SET close_after = '0'")
        .execute(&env.pg)
        .await
        .unwrap();
    let r = prune(&env, &["--older-than", "20d"]);
    assert_eq!(r["conversations"], 0, "{r}");
    // "Day 2": new conversations draw ids from the next range.
    for i in 0..20 {
        env.set(&format!("day2-{i}"), &doc(None, &["m1"]), SOON)
            .await;
    }
    assert_eq!(env.run_json(&[])["persisted"], 20);
    assert_eq!(
        env.count("SELECT count(*) FROM conversations WHERE id >= 100 AND id < 200")
            .await,
        20
    );
    // A window later, day 1's conversations are past it (their keys long expired), day 2's not:
    // the range 0-100 holds day 1's alone and goes whole, its partitions dropped.
    sqlx::query("UPDATE conversations SET updated_at = now() - interval '30 days' WHERE id < 100")
        .execute(&env.pg)
        .await
        .unwrap();
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT redis_key FROM conversations WHERE id < 100")
            .fetch_all(&env.pg)
            .await
            .unwrap();
    let () = env.redis_cmd(redis::cmd("DEL").arg(&keys)).await;
    let r = prune(&env, &["--older-than", "10d"]);
    assert_eq!(
        (r["conversations"].as_u64(), r["messages"].as_u64()),
        (Some(30), Some(90)),
        "{r}"
    );
    assert_eq!(partitions(&env).await[0], 100);
    assert_eq!(
        env.count(
            "SELECT count(*) FROM pg_class WHERE relname IN ('conversations_0', 'message_rows_0')"
        )
        .await,
        0
    );
    assert_eq!(env.count("SELECT count(*) FROM conversation_ids").await, 20);
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 20);
}

#[tokio::test]
async fn the_partition_at_the_windows_edge_waits_out_the_grace_to_go_whole() {
    let env = TestEnv::migrated("prune_grace").await;
    partitions_of(&env, 100).await;
    env.seed(150, SOON.unwrap()).await;
    assert_eq!(env.run_json(&[])["persisted"], 150);
    // The closed partition 0-100: the even ids past the window, the odd ones recent (too many
    // survivors to go whole); in the open one, id 120 past it.
    sqlx::query(
        "UPDATE conversations SET updated_at = CASE WHEN (id < 100 AND id % 2 = 0) OR id = 120 \
         THEN now() - interval '30 days' ELSE now() END",
    )
    .execute(&env.pg)
    .await
    .unwrap();
    let grace = |g: &'static str| {
        let pg = env.pg.clone();
        async move {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE message_partitioning SET grace = '{g}'"
            )))
            .execute(&pg)
            .await
            .unwrap();
        }
    };
    let counts = |v: &Value| (v["conversations"].as_u64(), v["messages"].as_u64());

    // Within the grace, the edge's old conversations wait; the open partition's go, exact.
    grace("60 days").await;
    let dry = prune(&env, &["--older-than", "10d", "--dry-run"]);
    assert_eq!(counts(&dry), (Some(1), Some(3)), "{dry}");
    let r = prune(&env, &["--older-than", "10d"]);
    assert_eq!(counts(&r), (Some(1), Some(3)), "{r}");
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 149);
    // Past it, they go by rows.
    grace("10 days").await;
    let r = prune(&env, &["--older-than", "10d"]);
    assert_eq!(counts(&r), (Some(49), Some(49 * 3)), "{r}");
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 100);
    assert_eq!(
        env.count("SELECT count(*) FROM conversation_ids").await,
        100
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM conversations WHERE updated_at < now() - interval '10 days'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn rows_past_every_partition_wait_in_the_default_one_until_a_sweep_makes_theirs() {
    let env = TestEnv::migrated("prune_default").await;
    partitions_of(&env, 100).await;
    assert_eq!(partitions(&env).await, [0, 100, 200]);
    // Ids drawn past the partitions made (a sequence moved by hand, or partitions not made in
    // time): a sweep that cannot make theirs (a lock held on the DEFAULT partition past its
    // 200 ms) still saves them, into the DEFAULT partition, with a warning.
    sqlx::query("SELECT setval('conversations_id_seq', 1000)")
        .execute(&env.pg)
        .await
        .unwrap();
    let mut hold = env.pg.begin().await.unwrap();
    sqlx::query("LOCK TABLE message_rows_default IN ACCESS SHARE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    env.set(
        "late",
        &doc(Some("2026-12-06T09:00:00Z"), &["m1", "m2"]),
        SOON,
    )
    .await;
    let out = env
        .command()
        .args(["run", "--match", &env.pattern(), "--output", "json"])
        .output()
        .unwrap();
    hold.rollback().await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("DEFAULT partition"),
        "{}",
        stderr(&out)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["persisted"], 1, "{s}");
    assert_eq!(
        env.count("SELECT count(*) FROM message_rows_default").await,
        2
    );
    // The next sweep makes the partitions the ids need and moves the rows in.
    env.set("next", &doc(Some("2026-12-06T09:00:00Z"), &["m1"]), SOON)
        .await;
    assert_eq!(env.run_json(&[])["persisted"], 1);
    assert_eq!(
        env.count("SELECT count(*) FROM message_rows_default").await,
        0
    );
    assert_eq!(env.count("SELECT count(*) FROM message_rows_1000").await, 3);
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 3);
}
