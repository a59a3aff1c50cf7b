//! `sweeper daemon`: sweeps on its own schedule, one at a time, catches up once (not in a burst)
//! after a sweep that ran over, and exits 0 on SIGTERM after the sweep in flight.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use serde_json::Value;

/// A row of sweep_runs: id, started_at, finished_at, status.
type Run = (i64, DateTime<Utc>, Option<DateTime<Utc>>, String);

/// The daemon, killed if the test fails before it stops it (it would sweep on forever).
struct Daemon(Option<Running>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut run) = self.0.take() {
            let _ = run.child.kill();
            let _ = run.child.wait();
        }
    }
}

/// Its output read from the start: it logs and prints a summary per sweep for as long as it runs.
fn spawn_daemon(env: &TestEnv, schedule: &str) -> Running {
    env.command()
        .args(["daemon", "--schedule", schedule, "--output", "json"])
        .args(["--match", &env.pattern()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .into()
}

async fn wait_until(env: &TestEnv, sql: &str, at_least: i64, within: Duration) {
    let start = Instant::now();
    while env.count(sql).await < at_least {
        assert!(
            start.elapsed() < within,
            "`{sql}` stayed under {at_least} for {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_daemon_sweeps_on_schedule_one_at_a_time_and_stops_on_sigterm() {
    let env = TestEnv::migrated("daemon").await;
    env.seed(3, 120_000).await;
    // The first sweep is held 3.5 s (its run record's insert sleeps), so it runs over three
    // firings of an every-second schedule.
    sqlx::raw_sql(
        "CREATE SEQUENCE hold_once;
         CREATE FUNCTION hold_first_run() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF nextval('hold_once') = 1 THEN PERFORM pg_sleep(3.5); END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER hold_first_run BEFORE INSERT ON sweep_runs
           FOR EACH ROW EXECUTE FUNCTION hold_first_run();",
    )
    .execute(&env.pg)
    .await
    .unwrap();

    let mut daemon = Daemon(Some(spawn_daemon(&env, "* * * * * *")));
    let finished = "SELECT count(*) FROM sweep_runs WHERE status = 'ok'";
    wait_until(&env, finished, 6, Duration::from_secs(30)).await;
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 3);
    // It keeps sweeping: a conversation ending now is saved by a later sweep.
    env.set("late", &doc(None, &["a"]), SOON).await;
    wait_until(
        &env,
        "SELECT count(*) FROM conversations",
        4,
        Duration::from_secs(10),
    )
    .await;

    let run = daemon.0.take().unwrap();
    unsafe { libc::kill(run.child.id() as i32, libc::SIGTERM) };
    let out = finish(run, Duration::from_secs(15));
    assert_eq!(
        out.status.code(),
        Some(0),
        "the daemon did not stop on SIGTERM within 15 s (None: killed): {}",
        stderr(&out)
    );

    // One JSON summary per sweep, every sweep recorded and ended.
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summaries: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let runs: Vec<Run> =
        sqlx::query_as("SELECT id, started_at, finished_at, status FROM sweep_runs ORDER BY id")
            .fetch_all(&env.pg)
            .await
            .unwrap();
    assert_eq!(summaries.len(), runs.len(), "{stdout}");
    assert!(summaries.iter().all(|s| s["status"] == "ok"), "{stdout}");
    assert!(
        runs.iter().all(|r| r.3 == "ok" && r.2.is_some()),
        "{runs:?}"
    );

    // One at a time: each run started after the one before finished.
    for pair in runs.windows(2) {
        assert!(pair[1].1 >= pair[0].2.unwrap(), "overlap: {pair:?}");
    }
    // The three firings the first sweep ran over were swept once, not in a burst: within a
    // second of its end at most the catch-up and the next regular firing started.
    let first_end = runs[0].2.unwrap();
    assert!((first_end - runs[0].1).num_milliseconds() >= 3000);
    let soon_after = runs[1..]
        .iter()
        .filter(|r| r.1 < first_end + chrono::Duration::milliseconds(1000))
        .count();
    assert!(soon_after <= 2, "a burst after the long sweep: {runs:?}");
}

#[tokio::test]
async fn the_daemon_refuses_bad_settings_before_starting() {
    let env = TestEnv::migrated("daemon_usage").await;
    let out = env.sweeper(&["daemon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(error_line(&out).contains("--schedule"));
    let out = env.sweeper(&["daemon", "--schedule", "*/5 * * * *", "--threshold", "4m"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(error_line(&out).contains("--threshold"));
    let out = env.sweeper(&["daemon", "--schedule", "every minute"]);
    assert_eq!(out.status.code(), Some(2));
    error_line(&out);
    assert_eq!(env.count("SELECT count(*) FROM sweep_runs").await, 0);
}
