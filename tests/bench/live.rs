//! `make bench-live`: what the design saves, measured. A chat service is simulated live on a
//! compressed clock and persisted three ways, one after the other, on the same servers:
//!   (a) every turn: one autocommitted INSERT per message (and one per new conversation), as the
//!       seed's Option 1 and the Redis-queue worker of seed 004 write;
//!   (b) `sweeper daemon` (the release binary) on its schedule, the chat path touching only Redis;
//!   (c) one transaction per session, at the session's end (the simulator knows when a session
//!       ends: an oracle a real service would replace with an idle timer).
//!
//! The clock runs 60 times faster: one second here is one minute of a real service. The TTL is
//! 30 s (30 min), the threshold 10 s (10 min), the schedule every 5 s (5 min). Turns come 10-90
//! real seconds apart, a session has 4-20 turns (one message each), and 30% of users come back
//! after 2-25 real minutes of quiet for another 2-10 turns.
//!
//! Per 1000 turns: statements, transactions (pg_stat_database xact_commit), rows (tup_inserted +
//! tup_updated + tup_deleted), WAL bytes (pg_current_wal_lsn differences), database growth; the
//! chat path's latency per turn; and how long after its last turn each conversation was durable.
//! WAL by table comes from pg_walinspect (each record counted for the first relation it touches).
//!
//! Usage: cargo bench --bench live -- [--conversations 2000] [--arrivals 60]
//! (needs REDIS_URL and SWEEPER_TEST_PG_ADMIN, as `tests/servers.sh exec` sets them).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

mod wal;
use wal::{lsn, wal_by_table};

/// One second of the bench is this many seconds of a real service.
const SCALE: f64 = 60.0;
const TTL: Duration = Duration::from_secs(30);
const THRESHOLD: &str = "10s";
const SCHEDULE: &str = "*/5 * * * * *";
/// Connections of the chat service's pool, as a service would size it.
const POOL: u32 = 20;
const WORDS: &[&str] = &[
    "the", "order", "shipping", "refund", "account", "password", "thanks", "please", "could",
    "you", "help", "with", "my", "invoice", "delivery", "tomorrow", "status", "update", "sure",
    "here", "is", "what", "I", "found", "about", "your", "request", "let", "me", "check", "that",
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    EveryTurn,
    Sweeper,
    SessionEnd,
}

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::EveryTurn => "(a) write every turn",
            Way::Sweeper => "(b) sweeper on its schedule",
            Way::SessionEnd => "(c) one write at session end",
        }
    }
}

/// A conversation's plan: when it starts, its sessions (pause before, gaps between turns).
struct Plan {
    start: Duration,
    sessions: Vec<(Duration, Vec<Duration>)>,
    seed: u64,
}

fn plans(n: u64, arrivals: Duration) -> Vec<Plan> {
    let mut rng = fastrand::Rng::with_seed(19);
    let real = |s: u64| Duration::from_secs_f64(s as f64 / SCALE);
    (0..n)
        .map(|i| {
            let start = arrivals.mul_f64(i as f64 / n as f64);
            let gaps = |rng: &mut fastrand::Rng, turns| {
                (0..turns).map(|_| real(rng.u64(10..=90))).collect()
            };
            let turns = rng.usize(4..=20);
            let mut sessions = vec![(Duration::ZERO, gaps(&mut rng, turns))];
            if rng.f64() < 0.3 {
                let pause = real(rng.u64(120..=1500));
                let turns = rng.usize(2..=10);
                sessions.push((pause, gaps(&mut rng, turns)));
            }
            Plan {
                start,
                sessions,
                seed: i,
            }
        })
        .collect()
}

/// What one conversation did.
struct Done {
    id: String,
    turns: usize,
    last_turn: DateTime<Utc>,
    latencies: Vec<Duration>,
    statements: u64,
    /// (c): how long after the last turn its session's write committed.
    lag: Option<Duration>,
}

fn message(rng: &mut fastrand::Rng, id: &str, seq: usize, now: DateTime<Utc>) -> Value {
    let words: Vec<&str> = (0..rng.usize(4..60))
        .map(|_| WORDS[rng.usize(..WORDS.len())])
        .collect();
    json!({
        "id": format!("{id}-m{seq}"),
        "role": if seq.is_multiple_of(2) { "user" } else { "assistant" },
        "content": words.join(" "),
        "ts": now.to_rfc3339_opts(SecondsFormat::Millis, true),
    })
}

// Into today's tables, one statement each as before: a new conversation's id entered in
// `conversation_ids` (which keeps ids unique; `conversations` is partitioned by id) by the
// statement that inserts its row.
const INSERT_CONVERSATION: &str = "WITH d AS (INSERT INTO conversation_ids (conversation_id) \
     VALUES ($1) ON CONFLICT DO NOTHING RETURNING id) \
     INSERT INTO conversations (id, conversation_id, user_id, redis_key, checkpoint, \
     checkpoint_messages, message_count, content_hash, started_at, updated_at) \
     SELECT d.id, $1, $2, $3, '{}', 0, 0, '', now(), now() FROM d";
// `messages` is a view: the conversation's integer id looked up in the same statement, the
// message key as the sweep computes it, the text in the row (no document holds it).
const INSERT_MESSAGE: &str = "INSERT INTO message_rows (conversation, message_key, seq, message_id, \
     role, content, created_at) SELECT c.id, sweeper_message_key($2), $3, $4, $5, $6, $7 \
     FROM conversation_ids c WHERE c.conversation_id = $1";
// The id: entered now (the first turn) or the stored one (a statement sees the rows committed
// before it, not those its own first part inserts).
const UPSERT_SESSION: &str = "WITH d AS (INSERT INTO conversation_ids (conversation_id) \
     VALUES ($1) ON CONFLICT DO NOTHING RETURNING id), \
     i AS (SELECT id FROM d UNION ALL SELECT id FROM conversation_ids WHERE conversation_id = $1) \
     INSERT INTO conversations (id, conversation_id, user_id, redis_key, checkpoint, \
     checkpoint_messages, message_count, content_hash, started_at, updated_at) \
     SELECT i.id, $1, $2, $3, $4::jsonb, $5, $5, '', now(), now() FROM i ON CONFLICT (id) DO UPDATE \
     SET checkpoint = excluded.checkpoint, checkpoint_messages = excluded.checkpoint_messages, \
     message_count = excluded.message_count, updated_at = excluded.updated_at, last_persisted_at = now()";
const INSERT_SESSION: &str = "INSERT INTO message_rows (conversation, message_key, seq, message_id, \
     role, content, created_at) SELECT (SELECT id FROM conversation_ids WHERE conversation_id = $1), \
     sweeper_message_key('id:' || m), s, m, r, c, t \
     FROM unnest($2::text[], $3::int4[], $4::text[], $5::text[], $6::timestamptz[]) AS u(m, s, r, c, t)";

/// (a): the turn's message, committed before the reply.
async fn write_turn(pg: &PgPool, id: &str, key: &str, seq: usize, m: &Value) -> u64 {
    let mut n = 0;
    if seq == 0 {
        sqlx::query(INSERT_CONVERSATION)
            .bind(id)
            .bind("u-1")
            .bind(key)
            .execute(pg)
            .await
            .unwrap();
        n += 1;
    }
    let ts: DateTime<Utc> = m["ts"].as_str().unwrap().parse().unwrap();
    sqlx::query(INSERT_MESSAGE)
        .bind(id)
        .bind(format!("id:{}", m["id"].as_str().unwrap()))
        .bind(seq as i32)
        .bind(m["id"].as_str())
        .bind(m["role"].as_str())
        .bind(m["content"].as_str())
        .bind(ts)
        .execute(pg)
        .await
        .unwrap();
    n + 1
}

/// (c): the session's messages and the checkpoint, in one transaction.
async fn write_session(pg: &PgPool, id: &str, key: &str, doc: &Value, from: usize) -> u64 {
    let msgs = &doc["messages"].as_array().unwrap()[from..];
    let s = |f: &str| -> Vec<String> {
        msgs.iter()
            .map(|m| m[f].as_str().unwrap().to_string())
            .collect()
    };
    let ts: Vec<DateTime<Utc>> = s("ts").iter().map(|t| t.parse().unwrap()).collect();
    let seqs: Vec<i32> = (from..from + msgs.len()).map(|i| i as i32).collect();
    let mut tx = pg.begin().await.unwrap();
    sqlx::query(UPSERT_SESSION)
        .bind(id)
        .bind("u-1")
        .bind(key)
        .bind(doc.to_string())
        .bind((from + msgs.len()) as i32)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(INSERT_SESSION)
        .bind(id)
        .bind(s("id"))
        .bind(seqs)
        .bind(s("role"))
        .bind(s("content"))
        .bind(ts)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    2
}

/// One conversation, live: each turn appends a message, SETs the checkpoint with a fresh TTL and,
/// by `way`, writes to PostgreSQL on the chat path.
async fn converse(
    plan: Plan,
    t0: Instant,
    way: Way,
    mut redis: redis::aio::MultiplexedConnection,
    pg: PgPool,
) -> Done {
    tokio::time::sleep_until((t0 + plan.start).into()).await;
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let id = format!("live-{:06}", plan.seed);
    let key = format!("checkpoint:{id}");
    let now = Utc::now();
    let mut doc = json!({
        "conversation_id": id, "user_id": format!("u-{}", rng.u32(1..5000)),
        "started_at": now.to_rfc3339_opts(SecondsFormat::Millis, true),
        "updated_at": now.to_rfc3339_opts(SecondsFormat::Millis, true),
        "messages": [], "metadata": {"channel": "web", "model": "chat-large"},
    });
    let (mut seq, mut statements, mut lag) = (0, 0, None);
    let mut latencies = Vec::new();
    let mut last_turn = now;
    for (pause, gaps) in plan.sessions {
        tokio::time::sleep(pause).await;
        let from = seq;
        for (t, gap) in gaps.iter().enumerate() {
            tokio::time::sleep(*gap).await;
            let start = Instant::now();
            let now = Utc::now();
            let m = message(&mut rng, &id, seq, now);
            doc["messages"].as_array_mut().unwrap().push(m.clone());
            doc["updated_at"] = json!(now.to_rfc3339_opts(SecondsFormat::Millis, true));
            let () = redis::cmd("SET")
                .arg(&key)
                .arg(doc.to_string())
                .arg("PX")
                .arg(TTL.as_millis() as u64)
                .query_async(&mut redis)
                .await
                .unwrap();
            last_turn = Utc::now();
            let replied = Instant::now();
            match way {
                Way::EveryTurn => statements += write_turn(&pg, &id, &key, seq, &m).await,
                Way::SessionEnd if t + 1 == gaps.len() => {
                    statements += write_session(&pg, &id, &key, &doc, from).await;
                    lag = Some(replied.elapsed());
                }
                _ => {}
            }
            latencies.push(start.elapsed());
            seq += 1;
        }
    }
    Done {
        id,
        turns: seq,
        last_turn,
        latencies,
        statements,
        lag,
    }
}

/// Counters of one database and the cluster's WAL position.
#[derive(Clone, Copy, Default)]
struct Stats {
    wal: i64,
    commits: i64,
    rollbacks: i64,
    rows: i64,
    size: i64,
}

async fn stats(admin: &PgPool, db: &str) -> Stats {
    let (wal, commits, rollbacks, rows, size): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8, xact_commit, xact_rollback, \
         tup_inserted + tup_updated + tup_deleted, pg_database_size(datname) \
         FROM pg_stat_database WHERE datname = $1",
    )
    .bind(db)
    .fetch_one(admin)
    .await
    .unwrap();
    Stats {
        wal,
        commits,
        rollbacks,
        rows,
        size,
    }
}

struct Outcome {
    way: Way,
    turns: u64,
    conversations: u64,
    statements: u64,
    delta: Stats,
    latencies: Vec<Duration>,
    /// Seconds after the last turn each conversation was durable.
    lags: Vec<f64>,
    lost: u64,
    wal_tables: Vec<(String, i64)>,
    sweeps: u64,
}

struct Env {
    redis_url: String,
    admin_url: String,
    bin: PathBuf,
}

impl Env {
    fn db_url(&self, db: &str) -> String {
        format!("{}/{db}", self.admin_url.rsplit_once('/').unwrap().0)
    }

    fn sweeper(&self, db: &str) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("REDIS_URL", &self.redis_url)
            .env("DATABASE_URL", self.db_url(db))
            .arg("-q");
        c
    }
}

async fn fresh_db(env: &Env, admin: &PgPool, db: &str) {
    for sql in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
        // The bench's own clients read sweeper's tables unqualified, as the binary does.
        format!("ALTER DATABASE {db} SET search_path = sweeper, public"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(admin)
            .await
            .unwrap();
    }
    let out = env.sweeper(db).arg("migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until Redis holds no key (each has expired), at most `limit`.
async fn drained(redis: &mut redis::aio::MultiplexedConnection, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        let n: u64 = redis::cmd("DBSIZE").query_async(redis).await.unwrap();
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("bench-live: keys still in Redis after {limit:?}");
}

async fn run_way(env: &Env, admin: &PgPool, way: Way, n: u64, arrivals: Duration) -> Outcome {
    let db = format!("live_{}", format!("{way:?}").to_lowercase());
    eprintln!(
        "bench-live: {} ({n} conversations over {arrivals:?})",
        way.label()
    );
    fresh_db(env, admin, &db).await;
    let client = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut redis)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (before, lsn0) = (stats(admin, &db).await, lsn(admin).await);
    let daemon = (way == Way::Sweeper).then(|| {
        env.sweeper(&db)
            .args(["daemon", "--schedule", SCHEDULE, "--threshold", THRESHOLD])
            .args(["--deadline", "4s", "--protect-ttl", "0", "--output", "json"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    });
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(POOL)
        .connect(&env.db_url(&db))
        .await
        .unwrap();
    let t0 = Instant::now();
    let tasks: Vec<_> = plans(n, arrivals)
        .into_iter()
        .map(|p| tokio::spawn(converse(p, t0, way, redis.clone(), pg.clone())))
        .collect();
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    pg.close().await;
    let mut sweeps = 0;
    let mut sweeper_statements = 0;
    if let Some(child) = daemon {
        // Every key is due for 10 s and swept every 5 s: all are saved before they expire.
        drained(&mut redis, TTL + Duration::from_secs(15)).await;
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let out = child.wait_with_output().unwrap();
        for s in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            sweeps += 1;
            sweeper_statements += s["pg_statements"].as_u64().unwrap_or(0);
        }
    }
    // Backends flush their counters when they disconnect; give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (after, lsn1) = (stats(admin, &db).await, lsn(admin).await);
    let dbpool = PgPool::connect(&env.db_url(&db)).await.unwrap();
    let wal_tables = wal_by_table(admin, &dbpool, &lsn0, &lsn1).await;
    let stored: HashMap<String, (i32, DateTime<Utc>)> = sqlx::query_as::<_, (String, i32, DateTime<Utc>)>(
        "SELECT c.conversation_id, (SELECT count(*)::int4 FROM messages m WHERE m.conversation_id = c.conversation_id), c.last_persisted_at FROM conversations c",
    )
    .fetch_all(&dbpool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, n, at)| (id, (n, at)))
    .collect();
    dbpool.close().await;
    let mut lags = Vec::new();
    let mut lost = 0;
    for d in &done {
        match (way, stored.get(&d.id)) {
            (_, Some((m, _))) if (*m as usize) < d.turns => lost += 1,
            (_, None) => lost += 1,
            (Way::EveryTurn, _) => lags.push(0.0),
            (Way::SessionEnd, _) => lags.push(d.lag.unwrap().as_secs_f64()),
            (Way::Sweeper, Some((_, at))) => {
                lags.push((*at - d.last_turn).num_milliseconds() as f64 / 1000.0)
            }
        }
    }
    Outcome {
        way,
        turns: done.iter().map(|d| d.turns as u64).sum(),
        conversations: n,
        statements: done.iter().map(|d| d.statements).sum::<u64>() + sweeper_statements,
        delta: Stats {
            wal: after.wal - before.wal,
            commits: after.commits - before.commits,
            rollbacks: after.rollbacks - before.rollbacks,
            rows: after.rows - before.rows,
            size: after.size - before.size,
        },
        latencies: done.into_iter().flat_map(|d| d.latencies).collect(),
        lags,
        lost,
        wal_tables,
        sweeps,
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn report(o: &[Outcome]) {
    let per = |x: i64, t: u64| x as f64 * 1000.0 / t as f64;
    let col = |f: &dyn Fn(&Outcome) -> String| -> String {
        o.iter().map(|x| format!(" {:>30} |", f(x))).collect()
    };
    println!();
    println!(
        "| {:<44} |{}",
        "per 1000 turns",
        col(&|x| x.way.label().to_string())
    );
    println!("|{}|{}", "-".repeat(46), " ---: |".repeat(o.len()));
    let line = |label: &str, f: &dyn Fn(&Outcome) -> String| println!("| {label:<44} |{}", col(f));
    line("write frequency: PostgreSQL statements", &|x| {
        format!("{:.0}", per(x.statements as i64, x.turns))
    });
    line("write frequency: transactions (xact_commit)", &|x| {
        format!("{:.0}", per(x.delta.commits, x.turns))
    });
    line("Postgres I/O: rows written", &|x| {
        format!("{:.0}", per(x.delta.rows, x.turns))
    });
    line("Postgres I/O: WAL", &|x| {
        format!("{:.0} kB", per(x.delta.wal, x.turns) / 1024.0)
    });
    line("Postgres I/O: database growth", &|x| {
        format!("{:.0} kB", per(x.delta.size, x.turns) / 1024.0)
    });
    let lat = |x: &Outcome, p: f64| {
        let mut v: Vec<f64> = x
            .latencies
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        pct(&mut v, p)
    };
    line("chat path per turn, p50 / p99", &|x| {
        format!("{:.2} / {:.2} ms", lat(x, 0.5), lat(x, 0.99))
    });
    // The sweep's delay comes from the (compressed) clock; the others' from a write's own time.
    let lag = |x: &Outcome, p: f64| {
        let s = pct(&mut x.lags.clone(), p);
        match x.way {
            Way::Sweeper => format!("{s:.1} s = {:.1} min real", s * SCALE / 60.0),
            Way::EveryTurn => "0 (before the reply)".to_string(),
            Way::SessionEnd => format!("{s:.2} s"),
        }
    };
    line("data freshness: durable after last turn p50", &|x| {
        lag(x, 0.5)
    });
    line("data freshness: ... max", &|x| lag(x, 1.0));
    line("conversations not durable (turns missing)", &|x| {
        x.lost.to_string()
    });
    println!();
    let base = &o.iter().find(|x| x.way == Way::Sweeper).unwrap().latencies;
    let mut b: Vec<f64> = base.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let (b50, b99) = (pct(&mut b, 0.5), pct(&mut b, 0.99));
    for x in o {
        let mut v: Vec<f64> = x
            .latencies
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        println!(
            "- {}: {} conversations, {} turns, {} statements, {} commits, {} rollbacks, {} rows, {} WAL bytes, database +{} bytes{}; added latency against Redis only: p50 {:+.2} ms, p99 {:+.2} ms",
            x.way.label(),
            x.conversations,
            x.turns,
            x.statements,
            x.delta.commits,
            x.delta.rollbacks,
            x.delta.rows,
            x.delta.wal,
            x.delta.size,
            if x.sweeps > 0 {
                format!(", {} sweeps", x.sweeps)
            } else {
                String::new()
            },
            pct(&mut v, 0.5) - b50,
            pct(&mut v, 0.99) - b99,
        );
        let t: Vec<String> = x
            .wal_tables
            .iter()
            .take(8)
            .map(|(n, b)| format!("{n} {:.0} kB", *b as f64 / 1024.0))
            .collect();
        println!("  WAL by relation: {}", t.join(", "));
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mut n, mut arrivals) = (2000u64, Duration::from_secs(60));
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--conversations" => {
                n = args[i + 1].parse().expect("--conversations 2000");
                i += 1;
            }
            "--arrivals" => {
                arrivals = Duration::from_secs(args[i + 1].parse().expect("--arrivals 60"));
                i += 1;
            }
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    let env = Env {
        redis_url: std::env::var("REDIS_URL").expect("REDIS_URL: run through `make bench-live`"),
        admin_url: std::env::var("SWEEPER_TEST_PG_ADMIN")
            .expect("SWEEPER_TEST_PG_ADMIN: run through `make bench-live`"),
        bin: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/sweeper"),
    };
    assert!(
        env.bin.exists(),
        "build the release binary first (make bench-live does)"
    );
    let admin = PgPool::connect(&env.admin_url).await.unwrap();
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        .execute(&admin)
        .await
        .unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    for way in [Way::EveryTurn, Way::Sweeper, Way::SessionEnd] {
        out.push(run_way(&env, &admin, way, n, arrivals).await);
    }
    report(&out);
    println!(
        "- clock: 1 s here = {SCALE:.0} s of a real service: TTL {TTL:?} (30 min), threshold {THRESHOLD} (10 min), schedule `{SCHEDULE}` (every 5 min); bench took {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
