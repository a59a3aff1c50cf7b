//! `make bench`: the sweep measured against the raw limits of the hardware, all in one run.
//!
//! For each keyspace size: load checkpoints with `simulate` (about 2 KB and 10 messages each, 10%
//! due, plus 10% keys of another pattern as noise), then measure, on the same data:
//!   - the Redis floor: a minimal client that only SCANs (COUNT 1000), pipelines PTTL per page and
//!     GETs the due keys, decoding nothing;
//!   - the copy limit: `psql \copy` of the same due rows into empty tables of the same shape;
//!   - `sweeper run --dry-run` and `sweeper run` (wall time, keys/s, rows/s, peak RSS, round trips,
//!     statements), and a second sweep where nothing changed;
//!   - the p99 latency of a concurrent `redis-benchmark` GET/SET load: alone, beside a busy loop
//!     (CPU contention only), during the Redis floor, and during a dry run at the defaults (which
//!     slow down while other clients use Redis) and at full speed;
//!   - with `--naive`, the "write every turn" approach: one INSERT per message.
//!
//! The floor and the dry run are each run three times, alternately, and the fastest kept (noise
//! only adds time).
//!
//! With `--curve` (`make bench-curve`) it measures only the floor, the copy limit, the dry run and
//! the sweep at each size, and ends with the cost curve: how each grows from size to size against
//! the key count, and the peak RSS.
//!
//! With `--format langchain` (`make bench BENCH_ARGS='--format langchain'`) it measures a chat
//! library's layout against the native one instead: the same conversations (the same generator,
//! seeds and TTLs) loaded once as native checkpoints and once as LangChain keeps them (a list
//! `message_store:{id}`, LPUSH, newest first, each element `{"type": "human", "data": {...}}`),
//! each alone in Redis, then the dry run (best of three), the sweep and a re-sweep of each, side
//! by side, with the ratios.
//!
//! With `--storage` (`make bench-storage`) it measures only bytes: the WAL and the table growth of
//! a sweep against the bytes it read from Redis, and what took them (see `storage.rs`).
//!
//! Usage: cargo bench --bench sweep -- [--sizes 100000,1000000] [--naive] [--curve] [--messages 10]
//! [--format langchain] [--storage]
//! (needs REDIS_URL and SWEEPER_TEST_PG_ADMIN, as `tests/servers.sh exec` sets them).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};
use sweeper::checkpoint::{conversation_id, decode};
use sweeper::cmd::simulate::{SimulateConfig, conversation, simulate};
use sweeper::redis::cluster::Nodes;
use sweeper::select::{Ttl, classify};

mod storage;
mod wal;

/// Two hours, not the default ten minutes: on a loaded machine loading and measuring 5M keys
/// takes longer than a due key of a ten-minute threshold lives. Which keys are due depends on the
/// TTL alone, so the work is the same.
const THRESHOLD: Duration = Duration::from_secs(7200);
/// Runs of the reads-only measurements (the floor, the dry run); the best is kept.
const RUNS: usize = 3;
const PREFIX: &str = "checkpoint:";

struct Env {
    redis_url: String,
    admin_url: String,
    db_url: String,
    bin: PathBuf,
    dir: PathBuf,
}

/// A child process's wall time and peak RSS, and its stdout.
struct Measured {
    wall: Duration,
    peak_rss_kb: i64,
    stdout: Vec<u8>,
    code: i32,
}

/// Runs `cmd`, polling its VmHWM (the peak RSS of its own address space) until it exits. Not
/// wait4's ru_maxrss: that keeps the peak of the address space the child had before exec, a
/// copy of this bench's (which holds a parsed 1M-key dry run), and so reported the bench's size.
/// A poll misses at most the last few milliseconds of growth.
fn run_measured(cmd: &mut Command) -> Measured {
    let out_path = std::env::temp_dir().join(format!("sweeper-bench-out-{}", std::process::id()));
    let out_file = std::fs::File::create(&out_path).unwrap();
    let start = Instant::now();
    let mut child = cmd
        .stdout(out_file)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_rss_kb = 0;
    let status = loop {
        if let Some(hwm) = std::fs::read_to_string(&status_path)
            .ok()
            .and_then(|s| vm_hwm_kb(&s))
        {
            peak_rss_kb = peak_rss_kb.max(hwm);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = start.elapsed();
    let stdout = std::fs::read(&out_path).unwrap();
    let _ = std::fs::remove_file(&out_path);
    Measured {
        wall,
        peak_rss_kb,
        stdout,
        code: status.code().unwrap_or(-1),
    }
}

/// `VmHWM:   12345 kB` of /proc/PID/status, in kB.
fn vm_hwm_kb(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Env {
    fn sweeper(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("REDIS_URL", &self.redis_url)
            .env("DATABASE_URL", &self.db_url)
            .env("SWEEPER_THRESHOLD", "2h")
            .env("SWEEPER_PROTECT_TTL", "3h")
            .arg("-q");
        c
    }

    fn psql(&self, sql: &str) -> Duration {
        let start = Instant::now();
        let out = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &self.db_url, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        start.elapsed()
    }
}

#[derive(Default)]
struct Row {
    keys: u64,
    label: String,
    wall: Duration,
    scanned: u64,
    rows: u64,
    rss_mb: Option<f64>,
    round_trips: Option<u64>,
    statements: Option<u64>,
    note: String,
}

fn rate(n: u64, d: Duration) -> String {
    let r = n as f64 / d.as_secs_f64();
    if r >= 10_000.0 {
        format!("{:.0}k", r / 1000.0)
    } else {
        format!("{r:.0}")
    }
}

fn table(rows: &[Row]) -> String {
    let mut t = format!(
        "{:>9}  {:<34} {:>9} {:>11} {:>10} {:>9} {:>9} {:>8}  {}\n",
        "keys", "what", "wall s", "scanned/s", "rows/s", "RSS MB", "redis RT", "pg stmt", "note"
    );
    for r in rows {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let _ = writeln!(
            t,
            "{:>9}  {:<34} {:>9.2} {:>11} {:>10} {:>9} {:>9} {:>8}  {}",
            r.keys,
            r.label,
            r.wall.as_secs_f64(),
            if r.scanned > 0 {
                rate(r.scanned, r.wall)
            } else {
                "-".into()
            },
            if r.rows > 0 {
                rate(r.rows, r.wall)
            } else {
                "-".into()
            },
            r.rss_mb.map_or("-".into(), |m| format!("{m:.1}")),
            opt(r.round_trips),
            opt(r.statements),
            r.note
        );
    }
    t
}

async fn reset(env: &Env) -> PgPool {
    let admin = PgPool::connect(&env.admin_url).await.unwrap();
    sqlx::query("DROP DATABASE IF EXISTS sweeper_bench WITH (FORCE)")
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE sweeper_bench")
        .execute(&admin)
        .await
        .unwrap();
    // The bench's own clients (psql, pools) read sweeper's tables unqualified, as the binary does.
    sqlx::query("ALTER DATABASE sweeper_bench SET search_path = sweeper, public")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let out = env.sweeper().arg("migrate").output().unwrap();
    assert!(out.status.success());
    PgPool::connect(&env.db_url).await.unwrap()
}

/// The minimal client: SCAN COUNT 1000, PTTL pipelined per page, GET of the due keys pipelined.
async fn redis_floor(env: &Env, layout: Layout) -> (Duration, u64, u64, u64) {
    // The command that reads a due key's value, and the keys' pattern.
    let (pattern, read): (&str, &[&str]) = match layout {
        Layout::Native => (PREFIX, &[]),
        Layout::LangChain => ("message_store:", &["0", "-1"]),
    };
    let read_cmd = if read.is_empty() { "GET" } else { "LRANGE" };
    let client = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let start = Instant::now();
    let (mut cursor, mut scanned, mut due, mut trips) = (0u64, 0u64, 0u64, 0u64);
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{pattern}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        trips += 1;
        scanned += keys.len() as u64;
        if !keys.is_empty() {
            let mut p = redis::pipe();
            for k in &keys {
                p.cmd("PTTL").arg(k);
            }
            let ttls: Vec<i64> = p.query_async(&mut conn).await.unwrap();
            trips += 1;
            let mut p = redis::pipe();
            let mut n = 0;
            for (k, t) in keys.iter().zip(ttls) {
                if matches!(classify(t, THRESHOLD), Ttl::Due { .. }) {
                    p.cmd(read_cmd).arg(k).arg(read);
                    n += 1;
                }
            }
            if n > 0 {
                let values: Vec<redis::Value> = p.query_async(&mut conn).await.unwrap();
                trips += 1;
                due += values.len() as u64;
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    (start.elapsed(), scanned, due, trips)
}

fn csv(field: &str) -> String {
    format!("\"{}\"", field.replace('"', "\"\""))
}

/// The benchmark's Redis, as `sweeper` connects to it.
async fn redis_node(env: &Env) -> Nodes {
    Nodes::connect(
        &env.redis_url,
        &Default::default(),
        sweeper::config::Timeouts::default(),
        false,
    )
    .await
    .unwrap()
}

/// The due rows as CSV files for `\copy` (not timed).
struct DueRows {
    conversations: PathBuf,
    /// As `message_rows` takes them: the text left in the document.
    message_rows: PathBuf,
    /// As a writer of every turn stores them (the naive baseline): text ids and text.
    messages: PathBuf,
    rows: u64,
    count: u64,
}

/// `message_rows.message_key` of an identity, as the store computes it.
fn message_key(identity: &str) -> String {
    use sha2::{Digest, Sha256};
    match identity.strip_prefix("h:") {
        Some(h) if h.len() == 32 => h.to_string(),
        _ => Sha256::digest(identity.as_bytes())[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    }
}

async fn due_rows_csv(env: &Env) -> DueRows {
    let mut source = redis_node(env).await;
    let conv_path = env.dir.join("conversations.csv");
    let rows_path = env.dir.join("message_rows.csv");
    let msg_path = env.dir.join("messages.csv");
    let mut conv = std::io::BufWriter::new(std::fs::File::create(&conv_path).unwrap());
    let mut mrows = std::io::BufWriter::new(std::fs::File::create(&rows_path).unwrap());
    let mut msg = std::io::BufWriter::new(std::fs::File::create(&msg_path).unwrap());
    let (mut rows, mut messages) = (0u64, 0u64);
    let ts = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or(String::new(), |t| t.to_rfc3339());
    let mut walk = source.walks(None).await.unwrap().remove(0);
    while let Some(keys) = source
        .next_page(&mut walk, &format!("{PREFIX}*"), 1000)
        .await
        .unwrap()
    {
        let ttls = source.pttls(&keys).await.unwrap();
        let due: Vec<Vec<u8>> = keys
            .into_iter()
            .zip(ttls)
            .filter(|(_, t)| matches!(classify(*t, THRESHOLD), Ttl::Due { .. }))
            .map(|(k, _)| k)
            .collect();
        let values = source
            .read(sweeper::redis::layout::Layout::Json, &due, 16 << 20)
            .await
            .unwrap();
        for (k, v) in due.iter().zip(values) {
            let sweeper::redis::layout::Fetched::Value(v) = v else {
                continue;
            };
            let key = std::str::from_utf8(k).unwrap();
            let c = decode(key, conversation_id(key, PREFIX).unwrap(), &v).unwrap();
            let hash: String = c.content_hash.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(
                conv,
                "{},{},{},{},{},{},{},\\x{hash},{},{}",
                rows + 1,
                csv(&c.conversation_id),
                csv(c.user_id.as_deref().unwrap_or("")),
                csv(&c.redis_key),
                csv(&c.document),
                c.messages.len(),
                c.messages.len(),
                ts(c.started_at),
                ts(c.updated_at)
            )
            .unwrap();
            for (i, m) in c.messages.iter().enumerate() {
                // The text stays in the document (an empty field is NULL), as the sweep writes it.
                writeln!(
                    mrows,
                    "{},{},{i},{},{},{},{}",
                    rows + 1,
                    message_key(&m.identity),
                    csv(m.id.as_deref().unwrap_or("")),
                    csv(&m.role),
                    if c.texts_in_document {
                        String::new()
                    } else {
                        csv(&m.content)
                    },
                    ts(m.created_at)
                )
                .unwrap();
                writeln!(
                    msg,
                    "{},{},{i},{},{},{},{}",
                    csv(&c.conversation_id),
                    csv(&m.identity),
                    csv(m.id.as_deref().unwrap_or("")),
                    csv(&m.role),
                    csv(&m.content),
                    ts(m.created_at)
                )
                .unwrap();
                messages += 1;
            }
            rows += 1;
        }
    }
    conv.flush().unwrap();
    mrows.flush().unwrap();
    msg.flush().unwrap();
    DueRows {
        conversations: conv_path,
        message_rows: rows_path,
        messages: msg_path,
        rows,
        count: messages,
    }
}

fn copy_limit(env: &Env, conv: &Path, msg: &Path) -> Duration {
    env.psql(
        "DROP TABLE IF EXISTS copy_conversations, copy_messages; \
         CREATE TABLE copy_conversations (LIKE conversations INCLUDING ALL); \
         CREATE TABLE copy_messages (LIKE message_rows INCLUDING ALL);",
    );
    let a = env.psql(&format!(
        "\\copy copy_conversations (id, conversation_id, user_id, redis_key, checkpoint, checkpoint_messages, message_count, content_hash, started_at, updated_at) FROM '{}' WITH (FORMAT csv)",
        conv.display()
    ));
    let b = env.psql(&format!(
        "\\copy copy_messages (conversation, message_key, seq, message_id, role, content, created_at) FROM '{}' WITH (FORMAT csv)",
        msg.display()
    ));
    a + b
}

/// p99 latency (ms) of GET and SET from redis-benchmark's CSV output.
fn redis_benchmark_p99(env: &Env) -> (f64, f64) {
    p99_of(start_redis_benchmark(env))
}

/// A GET/SET load of 10 clients, running until `p99_of` waits for it.
fn start_redis_benchmark(env: &Env) -> std::process::Child {
    let url = url::Url::parse(&env.redis_url).unwrap();
    Command::new("redis-benchmark")
        .args([
            "-h",
            url.host_str().unwrap(),
            "-p",
            &url.port().unwrap().to_string(),
        ])
        .args([
            "-t", "get,set", "-n", "100000", "-c", "10", "-d", "100", "-r", "100000", "--csv",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The p99 latencies (ms) of GET and SET, once the load has run.
fn p99_of(load: std::process::Child) -> (f64, f64) {
    let out = load.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut p99 = (0.0, 0.0);
    for line in text.lines() {
        let f: Vec<String> = line
            .split(',')
            .map(|s| s.trim_matches('"').to_string())
            .collect();
        // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
        if f.len() >= 7 {
            match f[0].as_str() {
                "GET" => p99.0 = f[6].parse().unwrap_or(0.0),
                "SET" => p99.1 = f[6].parse().unwrap_or(0.0),
                _ => {}
            }
        }
    }
    p99
}

async fn naive(env: &Env, pg: &PgPool, msg_csv: &Path, messages: u64) -> Duration {
    // The table a writer of every turn would keep (the shape `messages` had before the text was
    // stored once): text ids, the text, two indexes.
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS naive_messages; \
         CREATE TABLE naive_messages (conversation_id text NOT NULL, message_key text NOT NULL, \
             seq integer NOT NULL, message_id text, role text NOT NULL, content text NOT NULL, \
             created_at timestamptz, PRIMARY KEY (conversation_id, message_key)); \
         CREATE INDEX ON naive_messages (conversation_id, created_at);",
    )
    .execute(pg)
    .await
    .unwrap();
    let _ = env;
    let text = std::fs::read_to_string(msg_csv).unwrap();
    // Each message is one autocommitted INSERT, as a chat service writing every turn would do.
    let mut conn = pg.acquire().await.unwrap();
    let start = Instant::now();
    let mut n = 0;
    let sql = "INSERT INTO naive_messages (conversation_id, message_key, seq, message_id, role, content, created_at) \
               VALUES ($1, $2, $3, $4, $5, $6, $7::timestamptz)";
    for line in text.lines() {
        let f = parse_csv_line(line);
        sqlx::query(AssertSqlSafe(sql))
            .bind(&f[0])
            .bind(&f[1])
            .bind(f[2].parse::<i32>().unwrap())
            .bind(&f[3])
            .bind(&f[4])
            .bind(&f[5])
            .bind(&f[6])
            .execute(&mut *conn)
            .await
            .unwrap();
        n += 1;
    }
    assert_eq!(n, messages);
    start.elapsed()
}

fn parse_csv_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// What a run measures besides the sweep itself.
#[derive(Clone, Copy)]
struct Opts {
    naive: bool,
    /// Only the floor, the copy limit, the dry run and the sweep (`--curve`).
    curve: bool,
    /// Messages per checkpoint (10; `--messages` makes them smaller for 5M keys).
    messages: usize,
    /// `--format langchain`: the native layout against LangChain's, nothing else.
    langchain: bool,
}

/// How the conversations are kept in Redis.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// The native checkpoint document, a string per conversation (`simulate`).
    Native,
    /// LangChain's `RedisChatMessageHistory`: a list per conversation, newest first.
    LangChain,
}

/// Loads `keys` conversations of `messages` messages in `layout`: 10% due (TTL 90-96 minutes
/// left, under the 2-hour threshold) and 90% active (3-6 hours), far enough apart that the due set
/// stays the same while every measurement of this size runs; plus 10% native keys of another
/// pattern as noise. Returns the bytes and messages of the conversations.
async fn load_keys(env: &Env, keys: u64, messages: usize, layout: Layout) -> (u64, u64) {
    let mut source = redis_node(env).await;
    let due_cfg = SimulateConfig {
        conversations: keys / 10,
        prefix: PREFIX.into(),
        ttl_min: Duration::from_secs(5400),
        ttl_max: Duration::from_secs(5760),
        messages_min: messages,
        messages_max: messages,
        seed: 1,
    };
    let active = SimulateConfig {
        conversations: keys - keys / 10,
        ttl_min: Duration::from_secs(3 * 3600),
        ttl_max: Duration::from_secs(6 * 3600),
        seed: 2,
        ..due_cfg.clone()
    };
    let (mut bytes, mut msgs) = (0, 0);
    for cfg in [&due_cfg, &active] {
        let (b, m) = match layout {
            Layout::Native => {
                let r = simulate(&mut source, cfg).await.unwrap();
                (r.bytes, r.messages)
            }
            Layout::LangChain => load_langchain(env, cfg).await,
        };
        bytes += b;
        msgs += m;
    }
    simulate(
        &mut source,
        &SimulateConfig {
            conversations: keys / 10,
            prefix: "session:".into(),
            seed: 3,
            ..active.clone()
        },
    )
    .await
    .unwrap();
    (bytes, msgs)
}

/// An empty Redis and a fresh database, then `keys` conversations loaded in `layout`; says how
/// long that took in `notes`.
async fn fresh_load(
    env: &Env,
    keys: u64,
    messages: usize,
    layout: Layout,
    tag: &str,
    notes: &mut Vec<String>,
) -> PgPool {
    eprintln!("bench: {keys} keys: loading{tag}");
    let redis = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    // ASYNC: freeing millions of keys takes longer than the client's response timeout.
    let () = redis::cmd("FLUSHALL")
        .arg("ASYNC")
        .query_async(&mut conn)
        .await
        .unwrap();
    let pg = reset(env).await;
    let load = Instant::now();
    let (bytes, n) = load_keys(env, keys, messages, layout).await;
    notes.push(format!(
        "{keys} keys{tag}: loaded in {:.1}s, {:.0} bytes and {:.1} messages per conversation on average, plus {} noise keys",
        load.elapsed().as_secs_f64(),
        bytes as f64 / keys as f64,
        n as f64 / keys as f64,
        keys / 10
    ));
    pg
}

/// `simulate`'s conversations (the same generator, draws and TTLs, so the same ids, messages and
/// due set) written as LangChain's `RedisChatMessageHistory` keeps them: `LPUSH
/// message_store:{id}` of each message in turn (newest first), then `PEXPIRE`. Returns the bytes
/// of the elements and the messages.
async fn load_langchain(env: &Env, cfg: &SimulateConfig) -> (u64, u64) {
    let client = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let now = chrono::Utc::now();
    let (mut bytes, mut messages) = (0u64, 0u64);
    let mut pipe = redis::pipe();
    for i in 0..cfg.conversations {
        // The draws in simulate's order: messages, the conversation, then the TTL.
        let id = format!("sim-{}-{i:07}", cfg.seed);
        let n = rng.usize(cfg.messages_min..=cfg.messages_max);
        let doc = conversation(&mut rng, &id, n, now);
        let ttl_ms = rng
            .u64(cfg.ttl_min.as_millis() as u64..=cfg.ttl_max.as_millis() as u64)
            .max(1);
        let elements: Vec<String> = doc["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| langchain_element(&m["role"], &m["content"]))
            .collect();
        bytes += elements.iter().map(|e| e.len() as u64).sum::<u64>();
        messages += elements.len() as u64;
        let key = format!("message_store:{id}");
        pipe.cmd("LPUSH").arg(&key).arg(elements).ignore();
        pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
        if i % 500 == 499 || i + 1 == cfg.conversations {
            let () = pipe.query_async(&mut conn).await.unwrap();
            pipe = redis::pipe();
        }
    }
    (bytes, messages)
}

/// One message as langchain-core's `message_to_dict` gives it (what the real client writes).
fn langchain_element(role: &Value, content: &Value) -> String {
    let data = if role == "user" {
        serde_json::json!({"content": content, "additional_kwargs": {}, "response_metadata": {},
            "type": "human", "name": null, "id": null})
    } else {
        serde_json::json!({"content": content, "additional_kwargs": {}, "response_metadata": {},
            "type": "ai", "name": null, "id": null, "tool_calls": [], "invalid_tool_calls": [],
            "usage_metadata": null})
    };
    serde_json::json!({"type": data["type"], "data": data}).to_string()
}

/// The dry run (best of three), the sweep and the re-sweep of one layout's keys, with the extra
/// arguments `args`; rows labelled with `tag`. Returns the three wall times.
async fn sweeps_of(
    env: &Env,
    keys: u64,
    layout: Layout,
    args: &[&str],
    tag: &str,
    rows: &mut Vec<Row>,
) -> [f64; 4] {
    let mut best: Option<Measured> = None;
    let mut floor: Option<(Duration, u64, u64, u64)> = None;
    // Alternately, best of three each (see bench_size).
    for _ in 0..RUNS {
        let f = redis_floor(env, layout).await;
        if floor.is_none_or(|b| f.0 < b.0) {
            floor = Some(f);
        }
        let m = run_measured(
            env.sweeper()
                .args(["run", "--dry-run", "--output", "json"])
                .args(args),
        );
        if best.as_ref().is_none_or(|b| m.wall < b.wall) {
            best = Some(m);
        }
    }
    let dry = best.unwrap();
    assert_eq!(dry.code, 0, "{}", String::from_utf8_lossy(&dry.stdout));
    let s: Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(s["rejected"], 0, "{s}");
    let (floor, scanned, due, trips) = floor.unwrap();
    rows.push(Row {
        keys,
        label: format!("Redis floor{tag}"),
        wall: floor,
        scanned,
        rows: due,
        round_trips: Some(trips),
        note: "SCAN, PTTL, read due".into(),
        ..Row::default()
    });
    rows.push(Row {
        keys,
        label: format!("sweeper run --dry-run{tag}"),
        wall: dry.wall,
        scanned: s["scanned"].as_u64().unwrap(),
        rows: s["due"].as_u64().unwrap(),
        rss_mb: Some(dry.peak_rss_kb as f64 / 1024.0),
        round_trips: s["redis_round_trips"].as_u64(),
        note: format!("{} due", s["due"]),
        ..Row::default()
    });
    let mut walls = [dry.wall.as_secs_f64(), 0.0, 0.0, floor.as_secs_f64()];
    for (i, what) in [(1, "sweeper run"), (2, "sweeper run again")] {
        let m = run_measured(env.sweeper().args(["run", "--output", "json"]).args(args));
        assert_eq!(m.code, 0, "{}", String::from_utf8_lossy(&m.stdout));
        let s: Value = serde_json::from_slice(&m.stdout).unwrap();
        assert_eq!(s["rejected"], 0, "{s}");
        let (n, note) = match i {
            1 => (
                s["persisted"].as_u64().unwrap(),
                format!("{} messages", s["messages_added"]),
            ),
            _ => (
                s["unchanged"].as_u64().unwrap(),
                "nothing written".to_string(),
            ),
        };
        rows.push(Row {
            keys,
            label: format!("{what}{tag}"),
            wall: m.wall,
            scanned: s["scanned"].as_u64().unwrap(),
            rows: n,
            rss_mb: Some(m.peak_rss_kb as f64 / 1024.0),
            round_trips: s["redis_round_trips"].as_u64(),
            statements: s["pg_statements"].as_u64(),
            note,
        });
        walls[i] = m.wall.as_secs_f64();
    }
    walls
}

/// `--format langchain`: the same conversations as native checkpoints and as LangChain's lists,
/// each alone in Redis and swept into a fresh database, side by side.
async fn bench_langchain(
    env: &Env,
    keys: u64,
    opts: Opts,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) {
    let mut walls = Vec::new();
    for (layout, args, tag) in [
        (Layout::Native, &[][..], ""),
        (
            Layout::LangChain,
            &["--format", "langchain"][..],
            " --format langchain",
        ),
    ] {
        fresh_load(env, keys, opts.messages, layout, tag, notes)
            .await
            .close()
            .await;
        eprintln!("bench: {keys} keys: dry run, sweep, re-sweep{tag}");
        walls.push(sweeps_of(env, keys, layout, args, tag, rows).await);
    }
    let (native, lc) = (walls[0], walls[1]);
    notes.push(format!(
        "{keys} keys: --format langchain / native: dry run {:.2}x, sweep {:.2}x, re-sweep {:.2}x (target: within 1.2x); the Redis floor itself {:.2}x (LRANGE of a list against GET of a string)",
        lc[0] / native[0],
        lc[1] / native[1],
        lc[2] / native[2],
        lc[3] / native[3],
    ));
    notes.push(format!(
        "{keys} keys: dry run / its layout's Redis floor: native {:.2}x, --format langchain {:.2}x",
        native[0] / native[3],
        lc[0] / lc[3],
    ));
}

async fn bench_size(
    env: &Env,
    keys: u64,
    opts: Opts,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) {
    let pg = fresh_load(env, keys, opts.messages, Layout::Native, "", notes).await;

    eprintln!("bench: {keys} keys: Redis floor and dry run, alternately");
    // Best of three, for the floor and the dry run: on a shared VM noise only ever adds time,
    // and two whole runs of this bench differed by 40% on the same code. They alternate, so
    // that noise which comes and goes hits both alike.
    let mut best = None;
    let mut best_dry: Option<Measured> = None;
    // Two runs each for the curve: 5M keys are long enough.
    for _ in 0..if opts.curve { 2 } else { RUNS } {
        let r = redis_floor(env, Layout::Native).await;
        if best
            .as_ref()
            .is_none_or(|b: &(Duration, u64, u64, u64)| r.0 < b.0)
        {
            best = Some(r);
        }
        let m = run_measured(env.sweeper().args(["run", "--dry-run", "--output", "json"]));
        if best_dry.as_ref().is_none_or(|b| m.wall < b.wall) {
            best_dry = Some(m);
        }
    }
    let (floor, scanned, due, trips) = best.unwrap();
    rows.push(Row {
        keys,
        label: "Redis floor (SCAN+PTTL+GET)".into(),
        wall: floor,
        scanned,
        rows: due,
        round_trips: Some(trips),
        note: format!("{due} due"),
        ..Row::default()
    });

    eprintln!("bench: {keys} keys: copy limit");
    let due_csv = due_rows_csv(env).await;
    let (msg_csv, due_rows, messages) = (&due_csv.messages, due_csv.rows, due_csv.count);
    let copy = copy_limit(env, &due_csv.conversations, &due_csv.message_rows);
    rows.push(Row {
        keys,
        label: "psql \\copy of the due rows".into(),
        wall: copy,
        rows: due_rows,
        note: format!("{messages} messages"),
        ..Row::default()
    });

    let m = best_dry.unwrap();
    assert_eq!(m.code, 0);
    let s: Value = serde_json::from_slice(&m.stdout).unwrap();
    rows.push(Row {
        keys,
        label: "sweeper run --dry-run".into(),
        wall: m.wall,
        scanned: s["scanned"].as_u64().unwrap(),
        rows: s["due"].as_u64().unwrap(),
        rss_mb: Some(m.peak_rss_kb as f64 / 1024.0),
        round_trips: s["redis_round_trips"].as_u64(),
        note: format!(
            "{:.2}x the Redis floor",
            m.wall.as_secs_f64() / floor.as_secs_f64()
        ),
        ..Row::default()
    });

    eprintln!("bench: {keys} keys: sweep");
    let m = run_measured(env.sweeper().args(["run", "--output", "json"]));
    assert_eq!(m.code, 0, "{}", String::from_utf8_lossy(&m.stdout));
    let s: Value = serde_json::from_slice(&m.stdout).unwrap();
    assert_eq!(s["persisted"].as_u64().unwrap(), due_rows, "{s}");
    let ratio = m.wall.as_secs_f64() / (floor + copy).as_secs_f64();
    rows.push(Row {
        keys,
        label: "sweeper run".into(),
        wall: m.wall,
        scanned: s["scanned"].as_u64().unwrap(),
        rows: s["persisted"].as_u64().unwrap(),
        rss_mb: Some(m.peak_rss_kb as f64 / 1024.0),
        round_trips: s["redis_round_trips"].as_u64(),
        statements: s["pg_statements"].as_u64(),
        note: format!("{ratio:.2}x (Redis floor + copy limit)"),
    });
    notes.push(format!(
        "{keys} keys: sweep / (Redis floor + copy limit) = {ratio:.2}"
    ));
    if opts.curve {
        let _ = std::fs::remove_file(&due_csv.conversations);
        let _ = std::fs::remove_file(msg_csv);
        let _ = std::fs::remove_file(&due_csv.message_rows);
        pg.close().await;
        return;
    }

    let m = run_measured(env.sweeper().args(["run", "--output", "json"]));
    let s: Value = serde_json::from_slice(&m.stdout).unwrap();
    rows.push(Row {
        keys,
        label: "sweeper run again (all unchanged)".into(),
        wall: m.wall,
        scanned: s["scanned"].as_u64().unwrap(),
        rows: s["unchanged"].as_u64().unwrap(),
        rss_mb: Some(m.peak_rss_kb as f64 / 1024.0),
        round_trips: s["redis_round_trips"].as_u64(),
        statements: s["pg_statements"].as_u64(),
        note: "nothing written".into(),
    });

    eprintln!("bench: {keys} keys: live traffic");
    let (get0, set0) = redis_benchmark_p99(env);
    // The raw limit of this figure: on a small machine Redis, redis-benchmark and the sweeper
    // share the cores, so part of any rise is only CPU contention. A busy loop on one core that
    // sends Redis nothing shows how much.
    let spinning = Arc::new(AtomicBool::new(true));
    let spin = {
        let spinning = spinning.clone();
        std::thread::spawn(move || {
            while spinning.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    };
    let (get_busy, set_busy) = redis_benchmark_p99(env);
    spinning.store(false, Ordering::Relaxed);
    spin.join().unwrap();
    notes.push(format!(
        "{keys} keys: redis-benchmark p99 GET {get0:.2} -> {get_busy:.2} ms ({:.2}x), SET {set0:.2} -> {set_busy:.2} ms ({:.2}x) while a busy loop holds one core and sends Redis nothing (CPU contention alone)",
        get_busy / get0.max(0.001),
        set_busy / set0.max(0.001),
    ));
    // And the other raw limit: the Redis floor's own reads, as fast as Redis serves them.
    let load = start_redis_benchmark(env);
    let started = Instant::now();
    redis_floor(env, Layout::Native).await;
    let floor_took = started.elapsed();
    let (get_floor, set_floor) = p99_of(load);
    notes.push(format!(
        "{keys} keys: redis-benchmark p99 GET {get0:.2} -> {get_floor:.2} ms ({:.2}x), SET {set0:.2} -> {set_floor:.2} ms ({:.2}x) while the Redis floor reads (it took {:.1}s)",
        get_floor / get0.max(0.001),
        set_floor / set0.max(0.001),
        floor_took.as_secs_f64()
    ));
    for (label, extra) in [
        ("the default settings", None),
        ("--busy-redis-ops-per-sec 0 (full speed)", Some("0")),
    ] {
        let mut cmd = env.sweeper();
        cmd.args(["run", "--dry-run", "--output", "json"])
            .stdout(Stdio::piped());
        if let Some(busy) = extra {
            cmd.args(["--busy-redis-ops-per-sec", busy]);
        }
        let started = Instant::now();
        let child = cmd.spawn().unwrap();
        let (get1, set1) = redis_benchmark_p99(env);
        let out = child.wait_with_output().unwrap();
        let s: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        notes.push(format!(
            "{keys} keys: redis-benchmark p99 GET {get0:.2} -> {get1:.2} ms ({:.2}x), SET {set0:.2} -> {set1:.2} ms ({:.2}x) while a dry run with {label} reads (it took {:.1}s, {:.1}s of it at the busy pace)",
            get1 / get0.max(0.001),
            set1 / set0.max(0.001),
            started.elapsed().as_secs_f64(),
            s["redis_yield_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
        ));
    }

    if opts.naive {
        eprintln!("bench: {keys} keys: naive");
        let d = naive(env, &pg, msg_csv, messages).await;
        rows.push(Row {
            keys,
            label: "naive: one INSERT per message".into(),
            wall: d,
            rows: messages,
            statements: Some(messages),
            note: "write every turn".into(),
            ..Row::default()
        });
    }
    let _ = std::fs::remove_file(&due_csv.conversations);
    let _ = std::fs::remove_file(msg_csv);
    let _ = std::fs::remove_file(&due_csv.message_rows);
    pg.close().await;
}

/// The cost curve: each size's dry run and sweep against the one before, beside the key ratio.
/// Linear means the time grows no faster than the keys (within 10%).
fn curve(rows: &[Row]) -> Vec<String> {
    let wall = |label: &str| -> Vec<(u64, f64)> {
        rows.iter()
            .filter(|r| r.label == label)
            .map(|r| (r.keys, r.wall.as_secs_f64()))
            .collect()
    };
    let mut notes = Vec::new();
    for label in [
        "Redis floor (SCAN+PTTL+GET)",
        "psql \\copy of the due rows",
        "sweeper run --dry-run",
        "sweeper run",
    ] {
        let w = wall(label);
        for pair in w.windows(2) {
            let (k, t) = (pair[1].0 as f64 / pair[0].0 as f64, pair[1].1 / pair[0].1);
            notes.push(format!(
                "curve: {label}: {} -> {} keys ({k:.1}x): {:.2} s -> {:.2} s, {t:.2}x ({})",
                pair[0].0,
                pair[1].0,
                pair[0].1,
                pair[1].1,
                if t <= k * 1.1 {
                    "linear"
                } else {
                    "FASTER THAN LINEAR"
                }
            ));
        }
    }
    let rss: Vec<String> = rows
        .iter()
        .filter(|r| r.label == "sweeper run" || r.label == "sweeper run --dry-run")
        .map(|r| format!("{} {}: {:.1} MB", r.label, r.keys, r.rss_mb.unwrap_or(0.0)))
        .collect();
    notes.push(format!("curve: peak RSS: {}", rss.join(", ")));
    notes
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut sizes = vec![100_000u64, 1_000_000];
    let mut opts = Opts {
        naive: false,
        curve: false,
        messages: 10,
        langchain: false,
    };
    let mut storage = false;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--storage" => storage = true,
            "--sizes" => {
                sizes = args[i + 1]
                    .split(',')
                    .map(|s| s.parse().expect("--sizes 100000,1000000"))
                    .collect();
                i += 1;
            }
            "--naive" => opts.naive = true,
            "--format" => {
                assert_eq!(
                    args[i + 1],
                    "langchain",
                    "--format langchain is the one compared"
                );
                opts.langchain = true;
                i += 1;
            }
            "--curve" => opts.curve = true,
            "--messages" => {
                opts.messages = args[i + 1].parse().expect("--messages 4");
                i += 1;
            }
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    let redis_url = std::env::var("REDIS_URL").expect("REDIS_URL: run through `make bench`");
    let admin_url = std::env::var("SWEEPER_TEST_PG_ADMIN")
        .expect("SWEEPER_TEST_PG_ADMIN: run through `make bench`");
    let db_url = format!("{}/sweeper_bench", admin_url.rsplit_once('/').unwrap().0);
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/sweeper");
    assert!(
        bin.exists(),
        "build the release binary first (make bench does)"
    );
    let dir = std::env::temp_dir().join(format!("sweeper-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let env = Env {
        redis_url,
        admin_url,
        db_url,
        bin,
        dir: dir.clone(),
    };

    if storage {
        storage::bench(&env).await;
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for &n in &sizes {
        if opts.langchain {
            bench_langchain(&env, n, opts, &mut rows, &mut notes).await;
        } else {
            bench_size(&env, n, opts, &mut rows, &mut notes).await;
        }
    }
    if opts.curve {
        notes.extend(curve(&rows));
    }
    // Memory must not grow with the keyspace.
    let rss: Vec<(u64, f64)> = rows
        .iter()
        .filter(|r| r.label == "sweeper run")
        .map(|r| (r.keys, r.rss_mb.unwrap()))
        .collect();
    if rss.len() >= 2 {
        let (small, large) = (rss[0], rss[rss.len() - 1]);
        notes.push(format!(
            "peak RSS of a sweep: {:.1} MB at {} keys, {:.1} MB at {} keys ({:+.0}%)",
            small.1,
            small.0,
            large.1,
            large.0,
            (large.1 / small.1 - 1.0) * 100.0
        ));
    }
    println!();
    print!("{}", table(&rows));
    println!();
    for n in notes {
        println!("- {n}");
    }
    if !opts.langchain {
        println!(
            "- targets: sweep/(floor+copy) <= 1.25 at 1M keys; RSS at 1M within 10% of 100k and < 100 MB; dry run <= 1.2x floor; p99 rise < 2x"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
