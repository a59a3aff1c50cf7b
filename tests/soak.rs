//! Zero-loss soak: a chat service played for real with compressed time (TTL 30s refreshed on every
//! turn, threshold 12s, a sweep every 5s) while the sweeper is SIGKILLed at random and PostgreSQL
//! is restarted once. At the end every message the chat service ever wrote must be stored exactly
//! once and every conversation's final state must be the stored one.
//!
//! Spacing keeps the schedule's safety margin: a key becomes due 12s before it expires, so two
//! sweeps start in its due window, and the second has 2s to read it should the first be killed
//! (with a threshold of exactly two gaps, a key expiring just after the second sweep starts would
//! be lost to that sweep's own run time, as `check-schedule` would warn). A killed sweep is never
//! next to another killed sweep or to the sweep PostgreSQL's restart fails (that one protects the
//! due keys instead). Any loss is a bug.
//!
//! `SWEEPER_SOAK_DURATION` (default 60s) sets how long the chat service runs; `make soak
//! DURATION=30m` runs it long.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use common::servers::PrivatePg;
use common::*;
use serde_json::{Value, json};

const TTL_MS: u64 = 30_000;
const THRESHOLD: &str = "12s";
const PROTECT_TTL: &str = "20s";
const SCHEDULE: Duration = Duration::from_secs(5);

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
    rng: fastrand::Rng,
    conversations: HashMap<String, Conversation>,
    turns: u64,
    comebacks: u64,
}

impl Chat {
    async fn turn(&mut self, id: &str, now: Instant) {
        let key = self.env.key(id);
        let exists: bool = self.env.redis_cmd(redis::cmd("EXISTS").arg(&key)).await;
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
        let () = self
            .env
            .redis_cmd(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(doc.to_string())
                    .arg("PX")
                    .arg(TTL_MS),
            )
            .await;
        c.last_doc = Some(doc);
        self.turns += 1;
        c.next_turn = Some(now + Duration::from_millis(self.rng.u64(500..3000)));
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
}

fn soak_duration() -> Duration {
    std::env::var("SWEEPER_SOAK_DURATION")
        .ok()
        .map(|s| humantime::parse_duration(&s).expect("SWEEPER_SOAK_DURATION like 60s or 30m"))
        .unwrap_or(Duration::from_secs(60))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_nothing_lost_while_sweeps_are_killed_and_postgres_restarts() {
    let duration = soak_duration();
    let pg = Arc::new(PrivatePg::start());
    let env = Arc::new(TestEnv::with_pg("soak", &pg).await);
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));

    // The sweeper on its schedule.
    let sweeps = {
        let (env, pg, stop) = (env.clone(), pg.clone(), stop.clone());
        tokio::task::spawn_blocking(move || {
            let mut rng = fastrand::Rng::with_seed(42);
            let mut outcomes: HashMap<String, u32> = HashMap::new();
            let mut restarted = false;
            let mut typical_ms = 50;
            let mut k = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let tick = started + SCHEDULE * k;
                if let Some(wait) = tick.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
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
                let mut child = env
                    .command()
                    .args([
                        "-q",
                        "run",
                        "--match",
                        &env.pattern(),
                        "--threshold",
                        THRESHOLD,
                        "--protect-ttl",
                        PROTECT_TTL,
                    ])
                    .args([
                        "--deadline",
                        "4s",
                        "--connect-timeout",
                        "1s",
                        "--batch-size",
                        "20",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                // Every fourth sweep is SIGKILLed at a random point of a typical run.
                let kill_at = (k % 4 == 2).then(|| {
                    Instant::now() + Duration::from_millis(rng.u64(1..=(typical_ms * 3 / 4).max(2)))
                });
                let run_start = Instant::now();
                let status = loop {
                    if let Some(s) = child.try_wait().unwrap() {
                        break s;
                    }
                    // Only the planned kills: a sweep slowed by a loaded machine is left to end at its
                    // own --deadline (4s, under the 5s gap), as it would in production.
                    if kill_at.is_some_and(|t| Instant::now() >= t) {
                        let _ = child.kill();
                    }
                    std::thread::sleep(Duration::from_millis(1));
                };
                if status.success() {
                    typical_ms = run_start.elapsed().as_millis() as u64;
                }
                let outcome = match status.code() {
                    Some(c) => format!("exit {c}"),
                    None => "killed".into(),
                };
                *outcomes.entry(outcome).or_default() += 1;
                if let Some(r) = restarter {
                    r.join().unwrap();
                }
                k += 1;
            }
            (outcomes, restarted)
        })
    };

    // The chat service, until the duration is up.
    let mut chat = Chat {
        env: env.clone(),
        rng: fastrand::Rng::with_seed(1),
        conversations: HashMap::new(),
        turns: 0,
        comebacks: 0,
    };
    while started.elapsed() < duration {
        chat.tick(Instant::now(), started).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (outcomes, restarted) = sweeps.await.unwrap();
    if duration >= Duration::from_secs(30) {
        assert!(restarted, "PostgreSQL was never restarted");
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
    for o in outcomes.keys() {
        assert!(
            // exit 5: a sweep slowed by a loaded machine stops at its deadline; the next goes on.
            ["exit 0", "exit 4", "exit 5", "killed"].contains(&o.as_str()),
            "unexpected sweep outcome {o}: {outcomes:?}"
        );
    }

    // Conversations still live at the end are not ending yet: a last sweep with a wide threshold
    // saves them too, so the check below covers every conversation. It cannot bring back a key
    // that already expired unsaved: those are the losses.
    let last = env.run_json(&["--threshold", "2h", "--protect-ttl", "3h"]);
    assert_eq!(last["status"], "ok");

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
        "soak {:?}: {} conversations ({} came back), {} turns, {} messages; sweeps {:?}; PostgreSQL restarted: {}",
        duration,
        chat.conversations.len(),
        chat.comebacks,
        chat.turns,
        total_messages,
        outcomes,
        restarted
    );
    println!("lost {lost} / duplicated {duplicated} / regressed {regressed}");
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
