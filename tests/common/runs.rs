//! Running a sweep under faults and reading what it did: the paced set-up the fault tests share,
//! a sweep in the background with its environment overridden (a URL through a proxy or a
//! pooler), its summary and identity, and the conversations lost (neither saved nor kept).

use std::collections::HashSet;
use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;

use super::{Running, TestEnv, finish, stderr};

/// Conversations a paced run sweeps: long enough for a fault to land in its middle.
pub const N: usize = 3000;
/// Their TTL: due (under the 10m threshold) and gone 90 s after seeding unless saved or
/// protected, so a sweeper that hangs longer than that before protecting them loses them.
pub const DUE_TTL: u64 = 90_000;
/// A key still in Redis with at most this much TTL and not saved is lost: no one raises it again
/// before it expires (the seeded TTLs are under it; protection raises them to 15m).
pub const AT_RISK_MS: i64 = 300_000;
/// One writer and small batches, paced: a run of N keys takes some seconds, so a fault lands
/// while batches are in flight.
pub const PACED: &[&str] = &[
    "--writers",
    "1",
    "--batch-size",
    "100",
    "--scan-count",
    "100",
    "--max-redis-ops-per-sec",
    "400",
];

pub fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c{i:05}")).collect()
}

/// The figures of issue 17's note, past the harness's capture.
pub fn figure(row: &str, what: String) {
    let _ = writeln!(std::io::stderr(), "FIGURE {row}: {what}");
}

pub fn with_port(url: &str, port: u16) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_port(Some(port)).unwrap();
    u.to_string()
}

pub fn port_of(url: &str) -> u16 {
    url::Url::parse(url).unwrap().port().unwrap()
}

/// `sweeper run --output json` of this test's keys in the background, with `vars` overriding the
/// test's environment (a URL through a proxy or a pooler); its output read from the start.
pub fn spawn(env: &TestEnv, vars: &[(&str, &str)], args: &[&str]) -> Running {
    env.command()
        .envs(vars.iter().copied())
        .args(["run", "--output", "json", "--match", &env.pattern()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .into()
}

/// A sweep of this test's keys, waited for at most `within` (killed then: a hang fails the test,
/// its exit code None).
pub fn run_within(env: &TestEnv, vars: &[(&str, &str)], args: &[&str], within: Duration) -> Output {
    finish(spawn(env, vars, args), within)
}

pub fn summary(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}; exit {:?}); stderr: {}",
            out.status,
            stderr(out)
        )
    })
}

pub fn n(s: &Value, k: &str) -> u64 {
    s[k].as_u64().unwrap_or_else(|| panic!("no {k} in {s}"))
}

/// Every scanned key is counted in one bucket (a key SCAN returns twice, twice), and every due
/// key is accounted for once. A run that failed may have scanned a page or two it never read.
pub fn assert_identity(s: &Value) {
    let buckets = n(s, "due") + n(s, "not_due") + n(s, "no_ttl") + n(s, "expired_before_read");
    let whole = s["status"] == "ok" || s["status"] == "partial";
    assert!(
        n(s, "scanned") == buckets || (!whole && n(s, "scanned") > buckets),
        "scanned = due + not_due + no_ttl + expired_before_read: {s}"
    );
    assert_eq!(
        n(s, "due"),
        n(s, "persisted") + n(s, "unchanged") + n(s, "rejected") + n(s, "protected"),
        "due = persisted + unchanged + rejected + protected: {s}"
    );
}

pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit (None: killed, it hung): {}\n{}",
        stderr(out),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Conversations of `ids` neither saved in PostgreSQL (at `pg_url`) nor kept in Redis (at
/// `redis_url`) past [`AT_RISK_MS`]: what the chat service's TTL will take for good.
pub async fn lost(env: &TestEnv, redis_url: &str, pg_url: &str, ids: &[String]) -> usize {
    lost_ids(env, redis_url, pg_url, ids).await.len()
}

/// Which of `ids` are lost, as [`lost`] counts them.
pub async fn lost_ids(env: &TestEnv, redis_url: &str, pg_url: &str, ids: &[String]) -> Vec<String> {
    let pg = super::pg_pool(pg_url).await;
    let saved: HashSet<String> = sqlx::query_scalar("SELECT conversation_id FROM conversations")
        .fetch_all(&pg)
        .await
        .unwrap()
        .into_iter()
        .collect();
    pg.close().await;
    let mut r = redis::Client::open(redis_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let unsaved: Vec<&String> = ids.iter().filter(|id| !saved.contains(*id)).collect();
    let mut lost = Vec::new();
    for chunk in unsaved.chunks(500) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("PTTL").arg(env.key(id));
        }
        let ttls: Vec<i64> = pipe.query_async(&mut r).await.unwrap();
        // -2: gone; -1: no TTL, kept for good.
        let gone = ttls.iter().map(|&t| t != -1 && t < AT_RISK_MS);
        lost.extend(
            chunk
                .iter()
                .zip(gone)
                .filter(|(_, g)| *g)
                .map(|(id, _)| (*id).clone()),
        );
    }
    lost
}

pub async fn rows(pg_url: &str) -> i64 {
    let pg = super::pg_pool(pg_url).await;
    let n = sqlx::query_scalar("SELECT count(*) FROM conversations")
        .fetch_one(&pg)
        .await
        .unwrap();
    pg.close().await;
    n
}

/// Waits until `at_least` conversations are saved (the run is in its middle), or the run has
/// ended (its exit code then tells why).
pub async fn wait_rows(pg: &PgPool, at_least: i64, run: &mut Running) {
    let start = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM conversations")
            .fetch_one(pg)
            .await
            .unwrap();
        if n >= at_least || run.ended() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "only {n} rows after 60s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn runs_left_running(pg_url: &str) -> i64 {
    let pg = super::pg_pool(pg_url).await;
    let n = sqlx::query_scalar("SELECT count(*) FROM sweep_runs WHERE status = 'running'")
        .fetch_one(&pg)
        .await
        .unwrap();
    pg.close().await;
    n
}
