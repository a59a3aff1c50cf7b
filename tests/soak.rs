//! Zero-loss soak: a chat service played for real with compressed time (TTL 30s refreshed on every
//! turn, threshold 12s, a sweep every 5s) while the sweeper is SIGKILLed at random, Redis goes
//! silent to a sweep now and then (issue 26), and PostgreSQL is restarted once. At the end every message the chat service ever wrote must be stored exactly
//! once and every conversation's final state must be the stored one.
//!
//! Spacing keeps the schedule's safety margin: a key becomes due 12s before it expires, so two
//! sweeps start in its due window, and the second has 2s to read it should the first be killed
//! (with a threshold of exactly two gaps, a key expiring just after the second sweep starts would
//! be lost to that sweep's own run time, as `check-schedule` would warn). A killed sweep is never
//! next to another killed sweep or to the sweep PostgreSQL's restart fails (that one protects the
//! due keys instead). Any loss is a bug.
//!
//! The second soak plays the same chat service on the topologies of issue 17: sweeps reach
//! PostgreSQL through a fault proxy and Redis through Sentinel (`redis+sentinel://`). Every 30s
//! the chat service fails Redis over (`SENTINEL FAILOVER`), 10s later PostgreSQL goes silent
//! (packets held, nothing reset) at a random point of a sweep, for 7s, and 3s into each cycle the
//! PostgreSQL endpoint moves to a read-only standby for 3s (issue 26's failover). Every
//! sweep's summary must add up (scanned = due + not_due + no_ttl + expired_before_read, due =
//! persisted + unchanged + rejected + protected), and nothing may be lost.
//!
//! `SWEEPER_SOAK_DURATION` (default 60s) sets how long the chat service runs in each; `make soak
//! DURATION=30m` runs both long, side by side.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use common::proxy::FaultProxy;
use common::servers::PrivatePg;
use common::topologies::SentinelSet;
use common::*;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

const TTL_MS: u64 = 30_000;
const THRESHOLD: &str = "12s";
const PROTECT_TTL: &str = "20s";
const SCHEDULE: Duration = Duration::from_secs(5);
/// The topology soak's faults come round this often: a failover 10s into each cycle, when few
/// keys are due yet, a partition 20s into it, when many are.
const CYCLE: Duration = Duration::from_secs(30);
const PARTITION: Duration = Duration::from_secs(7);
/// How long Redis is silent to a sweep of the first soak: about the 4s the sweep takes to give
/// up on it (a pipeline's 3s, a fresh connection's 1s), so the next sweep finds it back.
const REDIS_PARTITION: Duration = Duration::from_secs(4);
/// 3s into each cycle the PostgreSQL endpoint moves to a read-only standby for this long, then
/// back to the primary (a proxy re-pointed during a failover, open connections reset): sweeps
/// meet `cannot execute ... in a read-only transaction` at any step.
const FLIP: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Conversation {
    /// Messages of the checkpoint now in Redis (a new generation starts after the key expired).
    current: Vec<Value>,
    /// Every message id ever written, in order.
    all_ids: Vec<String>,
    /// The last document written.
    last_doc: Option<Value>,
    next_turn: Option<Instant>,
    quiet_at: Option<Instant>,
    come_back_at: Option<Instant>,
    generations: u32,
}

struct Chat {
    env: Arc<TestEnv>,
    /// The chat service's connection: to the primary of the moment.
    redis: MultiplexedConnection,
    rng: fastrand::Rng,
    conversations: HashMap<String, Conversation>,
    turns: u64,
    comebacks: u64,
}

impl Chat {
    fn new(env: Arc<TestEnv>) -> Chat {
        Chat {
            redis: env.redis.clone(),
            env,
            rng: fastrand::Rng::with_seed(1),
            conversations: HashMap::new(),
            turns: 0,
            comebacks: 0,
        }
    }

    /// One command of the chat service. A reply later than redis-rs's own 500 ms (a machine shared
    /// with other builds: a 30-minute soak met one) is asked again, as a chat service would: every
    /// command here (EXISTS, SET, WAIT) is idempotent.
    async fn cmd<T: redis::FromRedisValue>(&mut self, cmd: &mut redis::Cmd) -> T {
        let mut tries = 0;
        loop {
            match cmd.query_async(&mut self.redis).await {
                Err(e) if e.is_timeout() && tries < 10 => tries += 1,
                reply => return reply.unwrap(),
            }
        }
    }

    async fn turn(&mut self, id: &str, now: Instant) {
        let key = self.env.key(id);
        let exists: bool = self.cmd(redis::cmd("EXISTS").arg(&key)).await;
        let c = self.conversations.get_mut(id).unwrap();
        if !exists && !c.current.is_empty() {
            // The key expired: the chat service starts over with only the new turns.
            c.current.clear();
            c.generations += 1;
        }
        for role in ["user", "assistant"] {
            let mid = format!("{id}-m{}", c.all_ids.len());
            let ts = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
            c.current.push(json!({"id": mid, "role": role, "content": format!("{role} says {} things", self.rng.u32(..1000)), "ts": ts}));
            c.all_ids.push(mid);
        }
        let doc = json!({"conversation_id": id, "user_id": "u", "updated_at": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
                         "messages": c.current, "metadata": {"generation": c.generations}});
        c.last_doc = Some(doc.clone());
        c.next_turn = Some(now + Duration::from_millis(self.rng.u64(500..3000)));
        let () = self
            .cmd(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(doc.to_string())
                    .arg("PX")
                    .arg(TTL_MS),
            )
            .await;
        self.turns += 1;
    }

    /// One tick of the chat service: conversations start, talk, go quiet, and some come back.
    async fn tick(&mut self, now: Instant, started: Instant) {
        if self.rng.f64() < 0.3 {
            let id = format!("conv{:05}", self.conversations.len());
            let quiet = now + Duration::from_millis(self.rng.u64(2_000..20_000));
            self.conversations.insert(
                id.clone(),
                Conversation {
                    quiet_at: Some(quiet),
                    ..Conversation::default()
                },
            );
            self.turn(&id, now).await;
        }
        let ids: Vec<String> = self.conversations.keys().cloned().collect();
        for id in ids {
            let c = &self.conversations[&id];
            let talking =
                c.quiet_at.is_some_and(|q| now < q) && c.next_turn.is_some_and(|t| now >= t);
            let back = c.come_back_at.is_some_and(|b| now >= b);
            if talking {
                self.turn(&id, now).await;
            } else if back {
                self.comebacks += 1;
                let c = self.conversations.get_mut(&id).unwrap();
                c.come_back_at = None;
                c.quiet_at = Some(now + Duration::from_millis(self.rng.u64(2_000..10_000)));
                self.turn(&id, now).await;
            } else if c.quiet_at.is_some_and(|q| now >= q) && c.next_turn.is_some() {
                // Gone quiet. A third come back later: half after their key expired, half before.
                let c = self.conversations.get_mut(&id).unwrap();
                c.next_turn = None;
                if self.rng.f64() < 0.33 && now.duration_since(started) < Duration::from_secs(3600)
                {
                    c.come_back_at =
                        Some(now + Duration::from_millis(self.rng.u64(15_000..45_000)));
                }
            }
        }
    }

    /// The chat service through a `SENTINEL FAILOVER`: it waits for its writes to reach the
    /// replica (`WAIT`), so Redis's own asynchronous replication loses none of them (that loss
    /// would not be the sweeper's), then writes to the new primary. Returns its port.
    async fn fail_over(&mut self, set: &Arc<SentinelSet>) -> u16 {
        let acked: i64 = self.cmd(redis::cmd("WAIT").arg(1).arg(5000)).await;
        assert_eq!(acked, 1, "the replica has the chat service's writes");
        let set = set.clone();
        let primary = tokio::task::spawn_blocking(move || {
            let p = set.failover();
            // The old primary is a replica again before anything else happens.
            set.wait_settled(None);
            p
        })
        .await
        .unwrap();
        self.redis = redis::Client::open(format!("redis://127.0.0.1:{primary}/"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        primary
    }
}

fn soak_duration() -> Duration {
    std::env::var("SWEEPER_SOAK_DURATION")
        .ok()
        .map(|s| humantime::parse_duration(&s).expect("SWEEPER_SOAK_DURATION like 60s or 30m"))
        .unwrap_or(Duration::from_secs(60))
}

/// How the sweeps ended, and their summaries.
#[derive(Default)]
struct Sweeps {
    /// `exit N` or `killed`, counted.
    outcomes: HashMap<String, u32>,
    /// Summaries read (every sweep not killed prints one) whose identity was checked.
    summaries: u32,
    protected: u64,
    /// The longest sweep, as its summary says (`duration_ms`).
    slowest_ms: u64,
    /// Summaries that did not add up, or sweeps that ended without one.
    wrong: Vec<String>,
}

impl Sweeps {
    /// Records a finished sweep: its outcome and, unless it was killed, its summary's identity.
    fn record(&mut self, child: Child) -> Option<i32> {
        let out = child.wait_with_output().unwrap();
        let outcome = match out.status.code() {
            Some(c) => format!("exit {c}"),
            None => "killed".into(),
        };
        *self.outcomes.entry(outcome.clone()).or_default() += 1;
        let code = out.status.code()?;
        let s: Value = match serde_json::from_slice(&out.stdout) {
            Ok(s) => s,
            Err(e) => {
                self.wrong.push(format!("{outcome} without a summary: {e}"));
                return Some(code);
            }
        };
        let n = |k: &str| s[k].as_u64().unwrap_or(u64::MAX / 8);
        // Every scanned key in one bucket (a key SCAN returns twice, twice), every due key
        // saved, unchanged, rejected or protected.
        let buckets = n("due") + n("not_due") + n("no_ttl") + n("expired_before_read");
        let due = n("persisted") + n("unchanged") + n("rejected") + n("protected");
        // A run that failed may have scanned a page or two it never read.
        let whole = s["status"] == "ok" || s["status"] == "partial";
        if n("due") != due || n("scanned") < buckets || (whole && n("scanned") != buckets) {
            self.wrong.push(format!("{outcome}: {s}"));
        }
        self.summaries += 1;
        self.protected += n("protected");
        self.slowest_ms = self.slowest_ms.max(n("duration_ms"));
        Some(code)
    }
}

/// One scheduled sweep, its summary on stdout.
fn sweep(env: &TestEnv, vars: &[(&str, &str)]) -> Child {
    env.command()
        .envs(vars.iter().copied())
        .args(["-q", "run", "--output", "json", "--match", &env.pattern()])
        .args(["--threshold", THRESHOLD, "--protect-ttl", PROTECT_TTL])
        .args([
            "--deadline",
            "4s",
            "--connect-timeout",
            "1s",
            "--batch-size",
            "20",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits for `child`, running `act` once when `at` comes (if it does before the child ends).
fn wait_acting(child: &mut Child, at: Option<Instant>, act: impl FnOnce(&mut Child)) {
    let mut act = Some(act);
    while child.try_wait().unwrap().is_none() {
        if at.is_some_and(|t| Instant::now() >= t)
            && let Some(act) = act.take()
        {
            act(child);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sleeps until sweep `k`'s tick.
fn wait_tick(started: Instant, k: u32) {
    if let Some(wait) = (started + SCHEDULE * k).checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}

/// A point at random in the first three quarters of a typical sweep.
fn during(rng: &mut fastrand::Rng, typical_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(rng.u64(1..=(typical_ms * 3 / 4).max(2)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_nothing_lost_while_sweeps_are_killed_and_postgres_restarts() {
    let duration = soak_duration();
    let pg = Arc::new(PrivatePg::start());
    let env = Arc::new(TestEnv::with_pg("soak", &pg).await);
    // The sweeps reach Redis through a fault proxy, the chat service directly: a partition
    // between the sweeper and Redis only.
    let redis_proxy = Arc::new(FaultProxy::start(port_of(&env.redis_url)));
    let via = {
        let mut u = url::Url::parse(&env.redis_url).unwrap();
        u.set_port(Some(redis_proxy.port)).unwrap();
        u.to_string()
    };
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));

    // The sweeper on its schedule.
    let sweeps = {
        let (env, pg, stop) = (env.clone(), pg.clone(), stop.clone());
        let redis_proxy = redis_proxy.clone();
        tokio::task::spawn_blocking(move || {
            let vars = [("REDIS_URL", via.as_str())];
            let mut rng = fastrand::Rng::with_seed(42);
            let mut sweeps = Sweeps::default();
            let mut restarted = false;
            let mut redis_cuts = 0u32;
            let mut typical_ms = 50;
            let mut k = 0u32;
            while !stop.load(Ordering::SeqCst) {
                wait_tick(started, k);
                // PostgreSQL goes down just as this sweep starts and comes back 3s later: the
                // sweep protects the due keys and exits 4; its neighbours run normally.
                let restart_pg =
                    !restarted && k.is_multiple_of(4) && started.elapsed() >= duration * 2 / 5;
                let restarter = restart_pg.then(|| {
                    restarted = true;
                    pg.kill();
                    let pg = pg.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_secs(3));
                        pg.up();
                    })
                });
                let mut child = sweep(&env, &vars);
                // Every fourth sweep is SIGKILLed at a random point of a typical run. Only the
                // planned kills: a sweep slowed by a loaded machine is left to end at its own
                // --deadline (4s, under the 5s gap), as it would in production. Another fourth,
                // two sweeps from any kill and not the one PostgreSQL's restart fails, loses
                // Redis to a silent partition at a random point: it ends with exit 3 (or rides
                // it out), and the next sweep finds Redis back.
                let kill = k % 4 == 2;
                let cut_redis = k.is_multiple_of(4) && k > 0 && !restart_pg;
                let act_at = (kill || cut_redis).then(|| during(&mut rng, typical_ms));
                let run_start = Instant::now();
                let mut healer = None;
                wait_acting(&mut child, act_at, |c| match kill {
                    true => {
                        let _ = c.kill();
                    }
                    false => healer = Some(silence_for(&redis_proxy, REDIS_PARTITION)),
                });
                redis_cuts += u32::from(healer.is_some());
                if sweeps.record(child) == Some(0) && !cut_redis {
                    typical_ms = run_start.elapsed().as_millis() as u64;
                }
                if let Some(h) = healer {
                    h.join().unwrap();
                }
                if let Some(r) = restarter {
                    r.join().unwrap();
                }
                k += 1;
            }
            (sweeps, restarted, redis_cuts)
        })
    };

    let mut chat = Chat::new(env.clone());
    while started.elapsed() < duration {
        chat.tick(Instant::now(), started).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (sweeps, restarted, redis_cuts) = sweeps.await.unwrap();
    let outcomes = &sweeps.outcomes;
    if duration >= Duration::from_secs(30) {
        assert!(restarted, "PostgreSQL was never restarted");
        assert!(redis_cuts >= 1, "Redis was never partitioned");
        assert!(
            outcomes.contains_key("exit 4"),
            "no sweep met PostgreSQL down: {outcomes:?}"
        );
        // Three kills are attempted; one may land after its sweep already finished.
        assert!(
            outcomes.contains_key("killed"),
            "no sweep was killed: {outcomes:?}"
        );
    }
    let last = final_sweep(&env, env.command());
    check(
        &env,
        &chat,
        &sweeps,
        &last,
        &format!(
            "PostgreSQL restarted: {restarted}; Redis silent to a sweep {redis_cuts} times for {REDIS_PARTITION:?}"
        ),
    )
    .await;
}

/// Issue 17's soak: PostgreSQL partitioned silently mid-sweep and Redis failed over through
/// Sentinel, again and again, while the chat service talks and the sweeps run on schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_nothing_lost_through_silent_partitions_and_sentinel_failovers() {
    let duration = soak_duration();
    let set = Arc::new(SentinelSet::start());
    let primary = PrivatePg::start();
    let env = TestEnv::on("soak_topo", &set.nodes[0].url(), &primary.admin_url()).await;
    let env = Arc::new(env.migrate());
    let standby = PrivatePg::standby_of(&primary);
    let ends = (primary.port, standby.port);
    let proxy = Arc::new(FaultProxy::start(port_of(&env.database_url)));
    let via = {
        let mut u = url::Url::parse(&env.database_url).unwrap();
        u.set_port(Some(proxy.port)).unwrap();
        u.to_string()
    };
    let sentinel_url = set.url();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));

    let sweeps = {
        let (env, proxy, stop) = (env.clone(), proxy.clone(), stop.clone());
        let vars = [
            ("REDIS_URL".to_string(), sentinel_url.clone()),
            ("DATABASE_URL".to_string(), via),
        ];
        tokio::task::spawn_blocking(move || {
            let vars: Vec<(&str, &str)> =
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut rng = fastrand::Rng::with_seed(42);
            let mut sweeps = Sweeps::default();
            let (mut partitions, mut flips) = (0u32, 0u32);
            let mut typical_ms = 50;
            let mut k = 0u32;
            while !stop.load(Ordering::SeqCst) {
                wait_tick(started, k);
                // PostgreSQL goes silent at a random point of the first sweep 20s into a cycle
                // (a batch in flight, most often), and heals 7s later: the held bytes then go
                // through, as TCP would retransmit them.
                let partition = started.elapsed() >= CYCLE * partitions + Duration::from_secs(20);
                let flip =
                    !partition && started.elapsed() >= CYCLE * flips + Duration::from_secs(3);
                let mut child = sweep(&env, &vars);
                let run_start = Instant::now();
                let mut healer = None;
                let fault = || match partition {
                    true => silence_for(&proxy, PARTITION),
                    false => flip_for(&proxy, ends),
                };
                let at = (partition || flip).then(|| during(&mut rng, typical_ms));
                wait_acting(&mut child, at, |_| healer = Some(fault()));
                if partition || flip {
                    // A sweep that ended before its fault came: the fault starts now.
                    healer.get_or_insert_with(fault);
                    partitions += u32::from(partition);
                    flips += u32::from(flip);
                }
                if sweeps.record(child) == Some(0) && healer.is_none() {
                    typical_ms = run_start.elapsed().as_millis() as u64;
                }
                // Not joined: the next sweeps run into the partition.
                drop(healer);
                k += 1;
            }
            (sweeps, partitions, flips)
        })
    };

    let mut chat = Chat::new(env.clone());
    let mut failovers = Vec::new();
    while started.elapsed() < duration {
        let due = CYCLE * failovers.len() as u32 + Duration::from_secs(10);
        if started.elapsed() >= due {
            let t = Instant::now();
            chat.fail_over(&set).await;
            failovers.push(t.elapsed().as_secs_f64());
        }
        chat.tick(Instant::now(), started).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (sweeps, partitions, flips) = sweeps.await.unwrap();
    proxy.heal();
    let mut last = env.command();
    last.env("REDIS_URL", &sentinel_url);
    let last = final_sweep(&env, last);
    check(
        &env,
        &chat,
        &sweeps,
        &last,
        &format!(
            "PostgreSQL partitioned {partitions} times for {PARTITION:?}, its endpoint on a read-only standby {flips} times for {FLIP:?}; Redis failed over {} times (chat paused {failovers:.1?} s)",
            failovers.len()
        ),
    )
    .await;
    // Checked after the losses, so that a run without faults still says what it lost.
    if duration >= Duration::from_secs(30) {
        assert!(partitions >= 1, "PostgreSQL was never partitioned");
        assert!(
            flips >= 1,
            "the PostgreSQL endpoint never moved to the standby"
        );
        assert!(!failovers.is_empty(), "Redis was never failed over");
        assert!(
            sweeps.outcomes.contains_key("exit 4"),
            "no sweep met the partition: {:?}",
            sweeps.outcomes
        );
        assert!(
            sweeps.protected > 0,
            "no sweep protected anything: {:?}",
            sweeps.outcomes
        );
    }
}

/// The PostgreSQL endpoint on the standby (`ends.1`) for [`FLIP`] from now, then back on the
/// primary (`ends.0`); the thread that moves it back. Open connections are reset both times.
fn flip_for(proxy: &Arc<FaultProxy>, ends: (u16, u16)) -> std::thread::JoinHandle<()> {
    proxy.set_target(ends.1);
    proxy.reset_all();
    let proxy = proxy.clone();
    std::thread::spawn(move || {
        std::thread::sleep(FLIP);
        proxy.set_target(ends.0);
        proxy.reset_all();
    })
}

/// The server behind `proxy` silent for `how_long` from now; the thread that heals it.
fn silence_for(proxy: &Arc<FaultProxy>, how_long: Duration) -> std::thread::JoinHandle<()> {
    proxy.blackhole();
    let proxy = proxy.clone();
    std::thread::spawn(move || {
        std::thread::sleep(how_long);
        proxy.heal();
    })
}

fn port_of(url: &str) -> u16 {
    url::Url::parse(url).unwrap().port().unwrap()
}

/// Conversations still live at the end are not ending yet: a last sweep with a wide threshold
/// saves them too, so the check covers every conversation. It cannot bring back a key that
/// already expired unsaved: those are the losses.
fn final_sweep(env: &TestEnv, mut cmd: Command) -> Value {
    let out = cmd
        .args(["run", "--output", "json", "--match", &env.pattern()])
        .args(["--threshold", "2h", "--protect-ttl", "3h"])
        .output()
        .unwrap();
    assert!(out.status.success(), "last sweep: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every message the chat service wrote is stored once, every conversation's stored checkpoint is
/// the last one written, and every sweep's summary added up.
async fn check(env: &TestEnv, chat: &Chat, sweeps: &Sweeps, last: &Value, faults: &str) {
    assert_eq!(last["status"], "ok", "{last}");
    for o in sweeps.outcomes.keys() {
        assert!(
            // exit 5: a sweep slowed by a loaded machine stops at its deadline; the next goes on.
            // exit 3: a sweep that met Redis partitioned.
            ["exit 0", "exit 3", "exit 4", "exit 5", "killed"].contains(&o.as_str()),
            "unexpected sweep outcome {o}: {:?}",
            sweeps.outcomes
        );
    }
    let pg_pool = env.fresh_pg().await;
    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT conversation_id, message_key FROM messages")
            .fetch_all(&pg_pool)
            .await
            .unwrap();
    let mut stored_ids: HashMap<String, HashSet<String>> = HashMap::new();
    for (c, k) in &stored {
        stored_ids
            .entry(c.clone())
            .or_default()
            .insert(k.trim_start_matches("id:").to_string());
    }
    let rows: Vec<(String, Value, i32)> =
        sqlx::query_as("SELECT conversation_id, checkpoint, message_count FROM conversations")
            .fetch_all(&pg_pool)
            .await
            .unwrap();
    let rows: HashMap<String, (Value, i32)> =
        rows.into_iter().map(|(c, d, n)| (c, (d, n))).collect();

    let (mut lost, mut regressed, mut total_messages) = (0usize, 0usize, 0usize);
    let mut report = Vec::new();
    for (id, c) in &chat.conversations {
        total_messages += c.all_ids.len();
        let have = stored_ids.get(id);
        let missing = c
            .all_ids
            .iter()
            .filter(|m| !have.is_some_and(|h| h.contains(*m)))
            .count();
        if missing > 0 && report.len() < 10 {
            report.push(format!(
                "{id}: {missing} of {} messages lost",
                c.all_ids.len()
            ));
        }
        lost += missing;
        match rows.get(id) {
            Some((doc, count)) => {
                if Some(doc) != c.last_doc.as_ref() {
                    regressed += 1;
                    if report.len() < 10 {
                        report.push(format!(
                            "{id}: stored checkpoint is not the last one written"
                        ));
                    }
                }
                assert_eq!(
                    *count as usize,
                    have.map_or(0, |h| h.len()),
                    "{id}: message_count"
                );
            }
            None => {
                regressed += 1;
                report.push(format!("{id}: no conversation row"));
            }
        }
    }
    let duplicated = stored.len() - stored_ids.values().map(HashSet::len).sum::<usize>();
    println!(
        "soak {:?}: {} conversations ({} came back), {} turns, {} messages; sweeps {:?}, {} summaries add up, {} keys protected, slowest sweep {} ms; {faults}",
        soak_duration(),
        chat.conversations.len(),
        chat.comebacks,
        chat.turns,
        total_messages,
        sweeps.outcomes,
        sweeps.summaries,
        sweeps.protected,
        sweeps.slowest_ms,
    );
    println!("lost {lost} / duplicated {duplicated} / regressed {regressed}");
    assert!(
        sweeps.wrong.is_empty(),
        "summaries that do not add up: {:?}",
        sweeps.wrong
    );
    assert!(
        chat.conversations.len() > 50 && total_messages > 500,
        "the chat service did too little to prove anything"
    );
    assert_eq!(
        (lost, duplicated, regressed),
        (0, 0, 0),
        "{}",
        report.join("\n")
    );
    assert_eq!(
        stored.len(),
        total_messages,
        "messages stored that the chat service never wrote"
    );
}
