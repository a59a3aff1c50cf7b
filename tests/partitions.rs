//! PostgreSQL or Redis failing mid-run, each faulted run beside healthy controls of the same
//! set-up at the same time (issue 26): a silent partition to either side, and a PostgreSQL
//! endpoint that is a read-only standby when the run starts and flips to the primary. Each
//! faulted run must lose no more conversations than its controls (plus the noise between two
//! controls side by side), and end within 2 x `--operation-timeout` + `--connect-timeout` of
//! the cut, or about when its controls reach the end of the keyspace.
//!
//! Every run has a Redis of its own, so that the pace of one is not slowed by seeing the
//! others' commands. Each test writes one `FIGURE` line past the harness's capture.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::proxy::FaultProxy;
use common::runs::*;
use common::servers::{PrivatePg, PrivateRedis};
use common::*;

/// The paced set-up ([`PACED`]) runs with short timeouts, so that each test takes well under a
/// minute: a batch waits at most 0.5 s for a writer, and a partition ends a run within
/// 2 x 5 s + 3 s of the cut. `SWEEPER_PARTITIONS_TIMEOUTS=defaults` runs the partitions with the
/// defaults instead (15 s and 10 s: 1.5 s and 40 s), as docs/operating.md measures them too.
const TIMEOUTS: &[&str] = &["--operation-timeout", "5s", "--connect-timeout", "3s"];
/// The defaults, said (the tests' environment sets a `--connect-timeout` of its own).
const DEFAULTS: &[&str] = &["--operation-timeout", "15s", "--connect-timeout", "10s"];

fn defaults() -> bool {
    std::env::var("SWEEPER_PARTITIONS_TIMEOUTS").is_ok_and(|v| v == "defaults")
}

/// 2 x `--operation-timeout` + `--connect-timeout`.
fn bound() -> Duration {
    Duration::from_secs(if defaults() { 40 } else { 13 })
}

/// `--connect-timeout`: once the scan has reached the end, the run's record gets one try.
fn connect() -> Duration {
    Duration::from_secs(if defaults() { 10 } else { 3 })
}
/// Time a run takes to exit once it has decided to (the summary, the process's end).
const SLACK: Duration = Duration::from_secs(3);
/// Time a run takes to start reading (the process, its connections).
const STARTING: Duration = Duration::from_millis(200);

fn args() -> Vec<&'static str> {
    let timeouts = if defaults() { DEFAULTS } else { TIMEOUTS };
    [PACED, timeouts].concat()
}

/// TTLs spread 4-34 s from `t0` over the conversations, in no order the scan follows: some
/// expire before any paced sweep reaches them, as in production, so a sweep that reads late
/// loses more. The same instants for every side, whichever is seeded first: a side seeded half
/// a second later lost some 35 fewer.
fn expiring(t0: Instant) -> impl Fn(usize) -> u64 {
    move |i| {
        expires_at(t0, i)
            .saturating_duration_since(Instant::now())
            .as_millis() as u64
    }
}

/// When conversation `i` of [`expiring`] runs out of TTL.
fn expires_at(t0: Instant, i: usize) -> Instant {
    t0 + Duration::from_millis(4_000 + (i * 7919 % N) as u64 * 10)
}

/// A run on a Redis of its own, with the spread seed.
struct Side {
    env: TestEnv,
    _redis: PrivateRedis,
}

impl Side {
    async fn new(name: &str) -> Side {
        let redis = PrivateRedis::start();
        let env = TestEnv::with_redis(name, &redis).await;
        Side { env, _redis: redis }
    }

    async fn lost(&self) -> usize {
        self.lost_ids().await.len()
    }

    /// The conversations lost, by their number in [`expiring`].
    async fn lost_ids(&self) -> Vec<usize> {
        let env = &self.env;
        let lost = lost_ids(env, &env.redis_url, &env.database_url, &ids(N)).await;
        lost.iter().map(|id| id[1..].parse().unwrap()).collect()
    }
}

/// Two healthy controls, started now beside the faulted run; returns their runs and when each
/// ended, measured from `start`.
struct Controls {
    sides: [Side; 2],
    runs: [Option<Running>; 2],
    ended: [Option<Duration>; 2],
    summaries: Vec<serde_json::Value>,
}

impl Controls {
    async fn new(name: &str) -> Controls {
        let sides = [
            Side::new(&format!("{name}_ctl_a")).await,
            Side::new(&format!("{name}_ctl_b")).await,
        ];
        Controls {
            sides,
            runs: [None, None],
            ended: [None, None],
            summaries: Vec::new(),
        }
    }

    async fn seed(&self, t0: Instant) {
        for s in &self.sides {
            s.env.seed_with(N, expiring(t0)).await;
        }
    }

    fn start(&mut self) {
        for (i, s) in self.sides.iter().enumerate() {
            self.runs[i] = Some(spawn(&s.env, &[], &args()));
        }
    }

    /// Waits for the faulted run and both controls, each killed after 120 s (a hang fails the
    /// test on its exit code); notes when each ended. The controls must end ok.
    fn wait_with(&mut self, mut faulted: Running, start: Instant) -> (Output, Instant) {
        let mut ended = None;
        while ended.is_none() || self.ended.iter().any(Option::is_none) {
            if ended.is_none() && faulted.ended() {
                ended = Some(Instant::now());
            }
            for i in 0..2 {
                let run = self.runs[i].as_mut().unwrap();
                if self.ended[i].is_none() && run.ended() {
                    self.ended[i] = Some(start.elapsed());
                }
            }
            if start.elapsed() > Duration::from_secs(120) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for run in &mut self.runs {
            let out = finish(run.take().unwrap(), Duration::ZERO);
            assert_exit(&out, 0);
            self.summaries.push(summary(&out));
        }
        let out = finish(faulted, Duration::ZERO);
        (out, ended.unwrap_or_else(Instant::now))
    }

    /// The conversations each control lost, and the noise between them.
    async fn lost(&self) -> (usize, usize, usize) {
        let (a, b) = (self.sides[0].lost().await, self.sides[1].lost().await);
        (a, b, a.abs_diff(b))
    }

    /// Due keys seen alive by the controls' selection and gone before they were read: the
    /// more of the two.
    fn expired_before_read(&self) -> u64 {
        let each = self.summaries.iter().map(|s| n(s, "expired_before_read"));
        each.max().unwrap()
    }

    fn last_end(&self) -> Duration {
        self.ended.iter().map(|e| e.unwrap()).max().unwrap()
    }
}

/// A silent partition to PostgreSQL 300 rows into the run. Reading never waits on the stuck
/// writer: the batches it cannot take are protected and the scan goes on at the healthy pace,
/// so no more conversations expire unread than beside it in the controls; once writing has
/// failed for good the rest is protected, and the run ends with exit 4 within the bound (or,
/// if later, one try to record its end after the scan reaches the end, when the controls' do).
/// Once the network heals, the next run saves the rest.
#[tokio::test]
async fn silent_partition_to_postgres_loses_no_more_than_healthy_runs_beside_it() {
    let mut controls = Controls::new("part_pg").await;
    let faulted = Side::new("part_pg").await;
    let proxy = FaultProxy::start(port_of(&faulted.env.database_url));
    let via = with_port(&faulted.env.database_url, proxy.port);
    let t0 = Instant::now();
    controls.seed(t0).await;
    faulted.env.seed_with(N, expiring(t0)).await;
    let start = Instant::now();
    controls.start();
    let mut run = spawn(&faulted.env, &[("DATABASE_URL", &via)], &args());
    wait_rows(&faulted.env.pg, 300, &mut run).await;
    proxy.blackhole();
    let cut = Instant::now();
    let (out, ended) = controls.wait_with(run, start);
    let after_cut = ended - cut;
    let s = summary(&out);
    drop(proxy);
    let next = faulted
        .env
        .run_json(&["--threshold", "20m", "--protect-ttl", "30m"]);
    let lost = faulted.lost().await;
    let (a, b, noise) = controls.lost().await;
    let controls_end = controls.last_end().saturating_sub(cut - start);
    figure(
        "silent partition to PostgreSQL",
        format!(
            "exit {:?} {:.1}s after the cut (controls reached the end {:.1}s after it), lost {lost} vs controls {a}, {b} (gone before saved or protected: controls {}); {s}",
            out.status.code(),
            after_cut.as_secs_f64(),
            controls_end.as_secs_f64(),
            controls.expired_before_read()
        ),
    );
    assert_exit(&out, 4);
    assert_identity(&s);
    assert!(
        after_cut <= bound().max(controls_end + connect()) + SLACK,
        "ended {after_cut:?} after the cut; bound {:?}, controls {controls_end:?}",
        bound()
    );
    // One pair of controls is one sample of a run's spread and can agree by chance (0 apart
    // while single runs differ by 30-40, fifteen runs at 630fe2d): the spread is at least twice
    // the square root of their mean loss, as for counts of independent expiries.
    let spread = noise.max((2.0 * ((a + b) as f64 / 2.0).sqrt()) as usize);
    assert!(
        lost <= a.max(b) + spread + N / 100,
        "lost {lost}, controls {a} and {b} (spread {spread}): {s}"
    );
    // A due key seen alive is saved or protected before it runs out, as in a healthy run: the
    // batch the decode stage held when protecting began was once held until the scan's end,
    // and up to 34 of its keys ran out meanwhile.
    let healthy = controls.expired_before_read();
    assert!(
        n(&s, "expired_before_read") <= healthy + 10,
        "gone before saved or protected: {s}; controls {healthy}"
    );
    assert_identity(&next);
}

/// A silent partition to Redis 300 rows into the run ends it with exit 3 within the bound, what
/// it saved consistent and recorded; once the network heals the next run saves the rest. A
/// partition loses what expires in Redis while no sweep can reach it, whatever the sweep does:
/// those conversations (their TTLs, set by the test, ran out between the cut and the next run)
/// are counted apart, and the rest must be lost no more than by the controls (the same
/// conversations, which expire at the same instants there), plus their noise.
#[tokio::test]
async fn silent_partition_to_redis_ends_within_the_bound_and_the_next_run_saves_the_rest() {
    let mut controls = Controls::new("part_redis").await;
    let faulted = Side::new("part_redis").await;
    let proxy = FaultProxy::start(port_of(&faulted.env.redis_url));
    let via = format!("redis://127.0.0.1:{}/", proxy.port);
    let t0 = Instant::now();
    controls.seed(t0).await;
    faulted.env.seed_with(N, expiring(t0)).await;
    let start = Instant::now();
    controls.start();
    let mut run = spawn(&faulted.env, &[("REDIS_URL", &via)], &args());
    wait_rows(&faulted.env.pg, 300, &mut run).await;
    proxy.blackhole();
    let cut = Instant::now();
    let (out, ended) = controls.wait_with(run, start);
    let after_cut = ended - cut;
    drop(proxy);
    // The network heals and the next run starts: Redis is out of reach from `cut` to here.
    let healed = Instant::now();
    let next = faulted.env.run_json(&[]);
    let cut_off = |i: &usize| (cut..healed).contains(&expires_at(t0, *i));
    let (in_window, rest): (Vec<usize>, Vec<usize>) =
        faulted.lost_ids().await.into_iter().partition(cut_off);
    // Expired as the next run started, before it could read them (a process starting up).
    let starting = |i: &&usize| (healed..healed + STARTING).contains(&expires_at(t0, **i));
    let at_start = rest.iter().filter(starting).count();
    let mut beside = Vec::new();
    for side in &controls.sides {
        let lost = side.lost_ids().await;
        beside.push(lost.iter().filter(|i| !cut_off(i)).count());
    }
    let (a, b) = (beside[0], beside[1]);
    let noise = a.abs_diff(b);
    let window = (0..N).filter(cut_off).count();
    figure(
        "silent partition to Redis",
        format!(
            "exit {:?} {:.1}s after the cut, lost {} = {} whose TTL ran out in the {:.1}s Redis was cut off (of {window} expiring then) + {} others ({at_start} in the next run's first {STARTING:?}) vs controls {a}, {b} (controls in all: {}, {})",
            out.status.code(),
            after_cut.as_secs_f64(),
            in_window.len() + rest.len(),
            in_window.len(),
            (healed - cut).as_secs_f64(),
            rest.len(),
            controls.sides[0].lost().await,
            controls.sides[1].lost().await,
        ),
    );
    assert_exit(&out, 3);
    assert!(error_line(&out).contains("Redis"));
    let s = summary(&out);
    assert_eq!(s["status"], "failed");
    assert_identity(&s);
    let saved = rows(&faulted.env.database_url).await;
    assert!(n(&s, "persisted") as i64 <= saved, "{s}");
    assert_eq!(runs_left_running(&faulted.env.database_url).await, 0);
    assert!(
        after_cut <= bound() + SLACK,
        "ended {after_cut:?} after the cut"
    );
    assert_identity(&next);
    assert!(
        rest.len() <= a.max(b) + noise + N / 100,
        "lost {} besides the {} cut off, controls {a} and {b}",
        rest.len(),
        in_window.len()
    );
}

/// How long the endpoint stays on the standby: longer than the ride-out of other errors
/// (`RIDE_OUT`, 30 s), which is where a read-only endpoint's retries used to end, and under
/// half the `--deadline` of 80 s, how long the steps before the scan wait for a failover.
const READ_ONLY: Duration = Duration::from_secs(35);

/// The PostgreSQL endpoint is a read-only standby when the run starts and flips to the primary
/// 35 s later, as a DNS name or a proxy re-pointed does: open connections stay on the standby.
/// Every step (the schema check, the lock, the run's record, the batches) is retried on fresh
/// connections, those that saw the standby leave the pool, and the run ends ok with everything
/// saved.
#[tokio::test]
async fn read_only_endpoint_at_the_start_flips_to_the_primary_and_the_run_ends_ok() {
    let primary = PrivatePg::start();
    let env = TestEnv::with_pg("part_flip", &primary).await;
    let standby = PrivatePg::standby_of(&primary);
    let endpoint = FaultProxy::start(standby.port);
    let via = with_port(&env.database_url, endpoint.port);
    env.seed(1000, DUE_TTL).await;
    let args = [args(), vec!["--deadline", "80s"]].concat();
    let run = spawn(&env, &[("DATABASE_URL", &via)], &args);
    std::thread::sleep(READ_ONLY);
    endpoint.set_target(primary.port);
    let flipped = Instant::now();
    let out = finish(run, Duration::from_secs(90));
    let lost = lost(&env, &env.redis_url, &env.database_url, &ids(1000)).await;
    figure(
        "read-only endpoint flipping to the primary 35 s in",
        format!(
            "exit {:?} {:.1}s after the flip, lost {lost}",
            out.status.code(),
            flipped.elapsed().as_secs_f64()
        ),
    );
    assert_exit(&out, 0);
    let s = summary(&out);
    assert_eq!(s["status"], "ok", "{s}");
    assert_identity(&s);
    assert_eq!(n(&s, "persisted"), 1000, "{s}");
    assert_eq!(lost, 0);
    assert_eq!(runs_left_running(&env.database_url).await, 0);
}

/// The endpoint moves to a read-only standby 300 rows into the run (a proxy re-pointed, its
/// connections reset) and back to the primary 35 s later: the batch in flight is retried until
/// it goes in, not given up after the 30 s other errors get, while the reader protects the due
/// keys instead of reading them. The run ends ok, and the next run saves what it protected.
#[tokio::test]
async fn read_only_endpoint_mid_run_for_longer_than_the_ride_out_ends_ok() {
    let primary = PrivatePg::start();
    let env = TestEnv::with_pg("part_ro_mid", &primary).await;
    let standby = PrivatePg::standby_of(&primary);
    let endpoint = FaultProxy::start(primary.port);
    let via = with_port(&env.database_url, endpoint.port);
    env.seed(1000, DUE_TTL).await;
    let args = [args(), vec!["--deadline", "80s"]].concat();
    let mut run = spawn(&env, &[("DATABASE_URL", &via)], &args);
    wait_rows(&env.pg, 300, &mut run).await;
    endpoint.set_target(standby.port);
    endpoint.reset_all();
    std::thread::sleep(READ_ONLY);
    endpoint.set_target(primary.port);
    endpoint.reset_all();
    let flipped = Instant::now();
    let out = finish(run, Duration::from_secs(90));
    let s = summary(&out);
    // Protected keys are not due under the default threshold: the next run looks further.
    let next = env.run_json(&["--threshold", "20m", "--protect-ttl", "30m"]);
    let lost = lost(&env, &env.redis_url, &env.database_url, &ids(1000)).await;
    figure(
        "read-only endpoint for 35 s mid-run",
        format!(
            "exit {:?} {:.1}s after the flip back, persisted {}, protected {}, lost {lost}",
            out.status.code(),
            flipped.elapsed().as_secs_f64(),
            n(&s, "persisted"),
            n(&s, "protected")
        ),
    );
    assert_exit(&out, 0);
    assert_eq!(s["status"], "ok", "{s}");
    assert_identity(&s);
    assert!(
        n(&s, "protected") > 0,
        "the reader protected meanwhile: {s}"
    );
    assert_identity(&next);
    assert_eq!(rows(&env.database_url).await, 1000);
    assert_eq!(lost, 0);
    assert_eq!(runs_left_running(&env.database_url).await, 0);
}

/// The endpoint stays on the standby past the run's `--deadline` (10 s): the run gives up
/// waiting at half of it, protects every due key in the other half, and exits 4 naming the
/// read-only transaction by the deadline; the summary adds up. Nothing is lost: the next run,
/// once the endpoint takes writes, saves them.
#[tokio::test]
async fn read_only_endpoint_past_the_deadline_ends_the_run_by_it_with_the_due_keys_protected() {
    let primary = PrivatePg::start();
    let env = TestEnv::with_pg("part_ro_deadline", &primary).await;
    let standby = PrivatePg::standby_of(&primary);
    let endpoint = FaultProxy::start(standby.port);
    let via = with_port(&env.database_url, endpoint.port);
    env.seed(1000, DUE_TTL).await;
    let deadline = Duration::from_secs(10);
    let args = [args(), vec!["--deadline", "10s"]].concat();
    let start = Instant::now();
    let out = run_within(
        &env,
        &[("DATABASE_URL", &via)],
        &args,
        Duration::from_secs(90),
    );
    let took = start.elapsed();
    let s = summary(&out);
    let protected_lost = lost(&env, &env.redis_url, &env.database_url, &ids(1000)).await;
    // Protected keys are not due under the default threshold: the next run looks further.
    let next = env.run_json(&["--threshold", "20m", "--protect-ttl", "30m"]);
    let lost = lost(&env, &env.redis_url, &env.database_url, &ids(1000)).await;
    figure(
        "read-only endpoint past a 10 s deadline",
        format!(
            "exit {:?} after {:.1}s, protected {}, lost {lost}",
            out.status.code(),
            took.as_secs_f64(),
            n(&s, "protected")
        ),
    );
    assert_exit(&out, 4);
    assert!(
        error_line(&out).contains("read-only"),
        "{}",
        error_line(&out)
    );
    assert_eq!(s["status"], "failed", "{s}");
    assert_identity(&s);
    assert_eq!(n(&s, "protected"), 1000, "every due key protected: {s}");
    assert_eq!(protected_lost, 0);
    // Half the deadline waiting, then a paced scan protecting 1000 keys (some 3 s, 9.1-10.3 s in
    // all alone; beside this file's other runs in a full `make test` on 2 cores, 13.8 s once).
    assert!(
        took >= deadline / 2 && took <= deadline + 2 * SLACK,
        "ended {took:?} after the start, deadline {deadline:?}"
    );
    assert_eq!(n(&next, "persisted"), 1000, "{next}");
    assert_eq!(lost, 0);
}
