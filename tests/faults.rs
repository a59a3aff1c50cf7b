//! Nothing lost, whatever breaks: servers stopped and restarted mid-sweep, the sweeper killed,
//! signalled, racing another sweep, or out of time. Servers that get stopped are private to the
//! test (tests/common/servers.rs).

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::servers::{PrivatePg, PrivateRedis};
use common::*;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};

/// Makes the first INSERT into `conversations` that finds more than `after` rows stored sleep
/// `secs` seconds inside its transaction: a batch held in flight, so the test can break things
/// while it is. One-shot: a sequence (not rolled back) and, as a crash may lose the sequence's
/// unflushed state, only while the server that installed it is still the one running.
async fn hold_batch_after(pg: &PgPool, after: i64, secs: f64) {
    let server: String = sqlx::query_scalar("SELECT pg_postmaster_start_time()::text")
        .fetch_one(pg)
        .await
        .unwrap();
    let sql = format!(
        "CREATE SEQUENCE hold_once;
         CREATE FUNCTION hold_batch() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF pg_postmaster_start_time() = '{server}'::timestamptz
              AND (SELECT count(*) FROM conversations) > {after} THEN
             IF nextval('hold_once') = 1 THEN PERFORM pg_sleep({secs}); END IF;
           END IF;
           RETURN NULL;
         END $$;
         CREATE TRIGGER hold_batch AFTER INSERT ON conversations
           FOR EACH STATEMENT EXECUTE FUNCTION hold_batch();"
    );
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(pg).await.unwrap();
}

/// A sweep in the background. One writer, so that a held batch holds the whole pipeline and the
/// tests know how much was committed when they break something. Its output read from the start.
fn spawn_run(env: &TestEnv, args: &[&str]) -> Running {
    env.command()
        .args([
            "run",
            "--output",
            "json",
            "--writers",
            "1",
            "--match",
            &env.pattern(),
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .into()
}

fn summary(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}); stderr: {}", stderr(out)))
}

async fn wait_for_rows(env: &TestEnv, rows: i64, within: Duration) {
    let pg = env.fresh_pg().await;
    let start = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM conversations")
            .fetch_one(&pg)
            .await
            .unwrap();
        if n >= rows {
            return;
        }
        assert!(
            start.elapsed() < within,
            "only {n} of {rows} rows after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a batch is held by `hold_batch_after` (sleeping inside its transaction).
async fn wait_for_held_batch(env: &TestEnv) {
    let start = Instant::now();
    while env
        .count("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")
        .await
        == 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no batch was ever held"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every conversation stored once with its three messages, each message once.
async fn assert_complete(env: &TestEnv, conversations: i64) {
    let pg = env.fresh_pg().await;
    let one = |sql: &'static str| {
        let pg = pg.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pg)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        one("SELECT count(*) FROM conversations").await,
        conversations
    );
    assert_eq!(
        one("SELECT count(*) FROM messages").await,
        conversations * 3
    );
    assert_eq!(
        one("SELECT coalesce(sum(message_count), 0)::bigint FROM conversations").await,
        conversations * 3
    );
    assert_eq!(
        one("SELECT count(*) FROM conversations c WHERE message_count <> (SELECT count(*) FROM messages m WHERE m.conversation_id = c.conversation_id)").await,
        0,
        "message_count disagrees with the stored messages"
    );
}

async fn keys_with_ttl_over(env: &TestEnv, ms: i64) -> usize {
    let keys: Vec<String> = env.redis_cmd(redis::cmd("KEYS").arg(env.pattern())).await;
    let mut n = 0;
    for k in keys {
        let ttl: i64 = env.redis_cmd(redis::cmd("PTTL").arg(&k)).await;
        if ttl > ms {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn postgres_down_at_start_protects_the_due_keys_only_and_exits_4() {
    let env = TestEnv::new("pgdownstart").await;
    env.set("due", &doc(None, &["a"]), Some(120_000)).await;
    env.set("due-soon", &doc(None, &["a"]), Some(5_000)).await;
    env.set("active", &doc(None, &["a"]), Some(3_600_000)).await;
    env.set("twelve", &doc(None, &["a"]), Some(720_000)).await;
    env.set("forever", &doc(None, &["a"]), None).await;
    let pg_down = format!("postgres://u:secret@127.0.0.1:{}/db", closed_port());

    // With protection off, the key is left to the chat service's TTL.
    let out = env
        .command()
        .args([
            "--connect-timeout",
            "1s",
            "--database-url",
            &pg_down,
            "run",
            "--protect-ttl",
            "0",
            "--match",
            &env.pattern(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let ttl: i64 = env.redis_cmd(redis::cmd("PTTL").arg(env.key("due"))).await;
    assert!(ttl <= 120_000, "--protect-ttl 0 protects nothing: {ttl}");

    let started = Instant::now();
    let out = env
        .command()
        .args([
            "--connect-timeout",
            "2s",
            "--database-url",
            &pg_down,
            "run",
            "--match",
            &env.pattern(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(error_line(&out).contains("PostgreSQL"));
    assert!(!stderr(&out).contains("secret"));

    let ttl = |k: &'static str| {
        let env = &env;
        async move {
            env.redis_cmd::<i64>(redis::cmd("PTTL").arg(env.key(k)))
                .await
        }
    };
    for k in ["due", "due-soon"] {
        let t = ttl(k).await;
        assert!(
            (14 * 60_000..=15 * 60_000).contains(&t),
            "{k} protected to 15m: {t}"
        );
    }
    assert!(ttl("active").await > 3_500_000, "never lowered");
    assert!(
        (700_000..=720_000).contains(&ttl("twelve").await),
        "not due: untouched"
    );
    assert_eq!(ttl("forever").await, -1, "a key without TTL stays without");
    let v: String = env.redis_cmd(redis::cmd("GET").arg(env.key("due"))).await;
    assert_eq!(v, doc(None, &["a"]).to_string(), "values are never changed");
}

#[tokio::test]
async fn postgres_killed_mid_sweep_keeps_committed_batches_protects_the_rest_and_the_next_run_completes()
 {
    let pg = PrivatePg::start();
    let env = TestEnv::with_pg("pgkill", &pg).await;
    env.seed(1000, 120_000).await;
    hold_batch_after(&env.pg, 200, 60.0).await;

    let child = spawn_run(&env, &["--batch-size", "100"]);
    wait_for_held_batch(&env).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.kill();
    let out = finish(child, Duration::from_secs(90));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    error_line(&out);

    // The 800 keys PostgreSQL could not take now outlive the outage; the 200 saved are left alone.
    assert_eq!(keys_with_ttl_over(&env, 600_000).await, 800);

    pg.up();
    let env_pg = env.fresh_pg().await;
    let saved: i64 = sqlx::query_scalar("SELECT count(*) FROM conversations")
        .fetch_one(&env_pg)
        .await
        .unwrap();
    assert_eq!(saved, 200, "the batches committed before the crash stay");
    // A later sweep, when the protected keys are due again (a wider threshold stands in for the wait).
    let s = env.run_json(&["--threshold", "20m", "--protect-ttl", "30m"]);
    assert_eq!(s["persisted"], 800);
    assert_eq!(s["unchanged"], 200);
    assert_complete(&env, 1000).await;
}

#[tokio::test]
async fn postgres_back_within_the_deadline_the_sweep_retries_and_succeeds() {
    let pg = PrivatePg::start();
    let env = TestEnv::with_pg("pgbounce", &pg).await;
    env.seed(1000, 120_000).await;
    hold_batch_after(&env.pg, 200, 60.0).await;

    let child = spawn_run(&env, &["--batch-size", "100", "--deadline", "60s"]);
    wait_for_held_batch(&env).await;
    pg.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.up();
    let out = finish(child, Duration::from_secs(90));
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stderr(&out), pg.log());
    let s = summary(&out);
    assert_eq!(s["status"], "ok");
    assert!(stderr(&out).contains("retrying"), "{}", stderr(&out));
    // The failing batch's keys were protected before its retry, and the batches read while it
    // was retried were protected instead of waiting for a writer (issue 17): each due key is
    // saved or protected, and the protected ones, only those, outlive the threshold.
    let (persisted, protected) = (
        s["persisted"].as_i64().unwrap(),
        s["protected"].as_i64().unwrap(),
    );
    assert_eq!(persisted + protected, 1000, "{s}");
    assert_eq!(
        env.count("SELECT count(*) FROM conversations").await,
        persisted
    );
    assert!(keys_with_ttl_over(&env, 600_000).await >= protected as usize);
    // A later sweep, when the protected keys are due again, saves them.
    let next = env.run_json(&["--threshold", "20m", "--protect-ttl", "30m"]);
    assert_eq!(
        next["persisted"].as_i64().unwrap(),
        1000 - persisted,
        "{next}"
    );
    assert_complete(&env, 1000).await;
}

#[tokio::test]
async fn redis_killed_mid_sweep_exits_3_and_leaves_postgres_consistent() {
    let mut redis = PrivateRedis::start();
    let env = TestEnv::with_redis("rediskill", &redis).await;
    env.seed(5000, 120_000).await;
    hold_batch_after(&env.pg, 200, 2.0).await;

    let child = spawn_run(&env, &["--batch-size", "100", "--scan-count", "100"]);
    wait_for_rows(&env, 200, Duration::from_secs(20)).await;
    redis.kill();
    let out = finish(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(error_line(&out).contains("Redis"));

    // What was read before Redis died is written, each conversation with all its messages.
    let n = env.count("SELECT count(*) FROM conversations").await;
    assert!(n > 200 && n < 5000, "{n}");
    // The summary still comes out, counting what was done.
    let s = summary(&out);
    assert_eq!(s["status"], "failed");
    assert_eq!(s["persisted"].as_i64().unwrap(), n);
    assert_eq!(env.count("SELECT count(*) FROM messages").await, n * 3);
    let (status, error): (String, String) = sqlx::query_as("SELECT status, error FROM sweep_runs")
        .fetch_one(&env.pg)
        .await
        .unwrap();
    assert_eq!(status, "failed");
    assert!(error.contains("Redis"), "{error}");
}

#[tokio::test]
async fn sigkill_at_random_points_then_the_next_run_repairs_everything() {
    let env = TestEnv::migrated("sigkill").await;
    env.seed(3000, 120_000).await;
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..4 {
        let child = spawn_run(&env, &["--batch-size", "50"]);
        std::thread::sleep(Duration::from_millis(rng.u64(10..250)));
        let out = finish(child, Duration::ZERO);
        // Killed (or, on a fast machine, done before the kill): never a failure of its own.
        assert!(
            matches!(out.status.code(), None | Some(0)),
            "{:?}: {}",
            out.status,
            stderr(&out)
        );
    }
    let s = env.run_json(&[]);
    assert_eq!(s["status"], "ok");
    assert_eq!(
        s["persisted"].as_u64().unwrap() + s["unchanged"].as_u64().unwrap(),
        3000
    );
    assert_complete(&env, 3000).await;
    // The killed runs' records were closed by the run after them.
    assert_eq!(
        env.count("SELECT count(*) FROM sweep_runs WHERE status = 'running'")
            .await,
        0
    );
}

#[tokio::test]
async fn the_record_of_a_killed_run_is_closed_by_the_next_run() {
    let env = TestEnv::migrated("killed_record").await;
    env.seed(300, 120_000).await;
    hold_batch_after(&env.pg, 50, 3.0).await;
    let child = spawn_run(&env, &["--batch-size", "50", "--scan-count", "50"]);
    wait_for_held_batch(&env).await;
    finish(child, Duration::ZERO);
    let running = "SELECT count(*) FROM sweep_runs WHERE status = 'running'";
    assert_eq!(env.count(running).await, 1, "the killed run's record");
    // Its held transaction dies with its connection; then the next run gets the lock.
    let s = env.run_json(&[]);
    assert_eq!(s["status"], "ok");
    assert_eq!(env.count(running).await, 0);
    let error: String = sqlx::query_scalar("SELECT error FROM sweep_runs WHERE status = 'failed'")
        .fetch_one(&env.pg)
        .await
        .unwrap();
    assert!(error.contains("killed"), "{error}");
    assert_complete(&env, 300).await;
}

async fn signal_finishes_the_batch_in_flight(name: &str, signal: &str, code: i32) {
    let env = TestEnv::migrated(name).await;
    env.seed(1000, 120_000).await;
    hold_batch_after(&env.pg, 200, 2.0).await;
    // A batch held 2 s is a slow write, not a stuck one, under a hand-off bound of 3 s (a tenth
    // of the operation timeout): the batches after it wait for it.
    let child = spawn_run(
        &env,
        &[
            "--batch-size",
            "100",
            "--scan-count",
            "100",
            "--operation-timeout",
            "30s",
        ],
    );
    wait_for_held_batch(&env).await;
    let ok = Command::new("kill")
        .args([signal, &child.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["status"], "interrupted");
    let status: String = sqlx::query_scalar("SELECT status FROM sweep_runs")
        .fetch_one(&env.pg)
        .await
        .unwrap();
    assert_eq!(status, "interrupted");
    // The batch in flight was finished, nothing half-written; the reader stopped early.
    let n = env.count("SELECT count(*) FROM conversations").await;
    assert!(n > 200 && n < 1000, "{n}: {s}\n{}", stderr(&out));
    assert_eq!(s["persisted"].as_i64().unwrap(), n);
    let next = env.run_json(&[]);
    assert_eq!(next["persisted"].as_i64().unwrap(), 1000 - n);
    assert_complete(&env, 1000).await;
}

#[tokio::test]
async fn sigterm_stops_after_the_batch_in_flight_with_exit_143() {
    signal_finishes_the_batch_in_flight("sigterm", "-TERM", 143).await;
}

#[tokio::test]
async fn sigint_stops_after_the_batch_in_flight_with_exit_130() {
    signal_finishes_the_batch_in_flight("sigint", "-INT", 130).await;
}

#[tokio::test]
async fn a_second_sweep_at_the_same_time_is_skipped() {
    let env = TestEnv::migrated("skipped").await;
    env.seed(300, 120_000).await;
    // The first sweep's batch is held long enough that a second one which waited for its lock
    // could only end after it.
    hold_batch_after(&env.pg, 0, 10.0).await;
    // Under a hand-off bound of 12 s, the batches after the held one wait for it.
    let mut first = spawn_run(
        &env,
        &["--batch-size", "100", "--operation-timeout", "120s"],
    );
    // Wait until the first sweep holds its lock and is in the middle of a batch.
    wait_for_held_batch(&env).await;
    let second = env.run_json(&[]);
    assert!(
        !first.ended(),
        "skipping does not wait for the running sweep: the second ended after the first"
    );
    assert_eq!(second["status"], "skipped");
    assert_eq!(second["persisted"], 0);

    let out = finish(first, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(summary(&out)["persisted"], 300);
    let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM sweep_runs ORDER BY id")
        .fetch_all(&env.pg)
        .await
        .unwrap();
    assert_eq!(statuses, ["ok", "skipped"]);
    // The lock is released at the end: the next sweep runs.
    assert_eq!(env.run_json(&[])["status"], "ok");
}

#[tokio::test]
async fn the_deadline_stops_the_scan_saves_what_was_read_and_exits_5() {
    let env = TestEnv::migrated("deadline").await;
    env.seed(2000, 120_000).await;
    hold_batch_after(&env.pg, 0, 2.0).await;
    let child = spawn_run(
        &env,
        &[
            "--batch-size",
            "100",
            "--scan-count",
            "100",
            "--deadline",
            "1s",
            // The batches after the held one wait for it (a hand-off bound of 3 s).
            "--operation-timeout",
            "30s",
        ],
    );
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["status"], "partial");
    let n = env.count("SELECT count(*) FROM conversations").await;
    assert!(n > 0 && n < 2000, "{n}");
    assert_eq!(
        s["persisted"].as_i64().unwrap(),
        n,
        "what was read is saved"
    );
    let status: String = sqlx::query_scalar("SELECT status FROM sweep_runs")
        .fetch_one(&env.pg)
        .await
        .unwrap();
    assert_eq!(status, "partial");
    // The next run goes on.
    let next = env.run_json(&[]);
    assert_eq!(next["persisted"].as_i64().unwrap(), 2000 - n);
    assert_complete(&env, 2000).await;
}

#[tokio::test]
async fn a_dropped_redis_connection_is_reopened_and_the_sweep_goes_on() {
    let redis = PrivateRedis::start();
    let env = TestEnv::with_redis("redisdrop", &redis).await;
    env.seed(3000, 120_000).await;
    hold_batch_after(&env.pg, 200, 1.0).await;
    let child = spawn_run(&env, &["--batch-size", "100", "--scan-count", "100"]);
    wait_for_rows(&env, 200, Duration::from_secs(20)).await;
    // Cut every client's connection but this test's: the sweeper's next read finds it dropped.
    let killed: i64 = env
        .redis_cmd(
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .arg("SKIPME")
                .arg("yes"),
        )
        .await;
    assert!(killed >= 1, "the sweeper was connected");
    let out = finish(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("reading from Redis failed; retrying"),
        "{}",
        stderr(&out)
    );
    assert_eq!(summary(&out)["persisted"], 3000);
    assert_complete(&env, 3000).await;
}

#[tokio::test]
async fn a_redis_error_on_a_read_fails_the_run_instead_of_rejecting_keys() {
    let env = TestEnv::migrated("noperm").await;
    env.seed(50, 120_000).await;
    // A Redis user allowed to scan and read TTLs but not to run GETRANGE: every first read of a
    // value is refused.
    let user = format!("sweeper-noperm-{}", std::process::id());
    let _: redis::Value = env
        .redis_cmd(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&user)
                .arg("on")
                .arg(">pw")
                .arg("~*")
                .arg("+@all")
                .arg("-getrange"),
        )
        .await;
    let url = env
        .redis_url
        .replacen("redis://", &format!("redis://{user}:pw@"), 1);
    let out = env
        .command()
        .args([
            "--redis-url",
            &url,
            "run",
            "--output",
            "json",
            "--match",
            &env.pattern(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("no permissions"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        env.count("SELECT count(*) FROM sweep_rejects").await,
        0,
        "no key was taken for a bad one"
    );
    let _: redis::Value = env
        .redis_cmd(redis::cmd("ACL").arg("DELUSER").arg(&user))
        .await;
}
