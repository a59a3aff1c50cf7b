//! `make bench-storage` (`--storage`): what a sweep costs PostgreSQL in bytes, against the bytes it
//! read from Redis. 20,000 simulated conversations of 10-30 messages, all due, swept once; then
//! each conversation two messages longer (a user coming back), swept again. For each sweep: the
//! bytes of the due values, the WAL written (pg_current_wal_lsn before and after), the growth of
//! the sweeper's tables (tables, indexes and TOAST, pg_relation_size), and what took the bytes
//! (pg_walinspect, by relation). Bytes, not times: the figures do not depend on the machine's load.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use sweeper::cmd::simulate::{SimulateConfig, simulate};

use super::wal::{lsn, sizes, wal_by_table, wal_bytes};
use super::{Env, PREFIX, redis_node, reset, run_measured};

const CONVERSATIONS: u64 = 20_000;
/// Targets of issue 19 on this data: WAL and growth against the bytes read from Redis.
const WAL_TARGET: f64 = 1.3;
const GROWTH_TARGET: f64 = 1.2;

/// One sweep's bytes.
struct Step {
    label: &'static str,
    read: u64,
    wal: i64,
    growth: i64,
    wal_tables: Vec<(String, i64)>,
    sizes: Vec<(String, i64)>,
}

fn mb(b: i64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

/// Sweeps (everything due) and measures; `read` is the bytes of the due values.
async fn measured_sweep(
    env: &Env,
    admin: &PgPool,
    db: &PgPool,
    label: &'static str,
    read: u64,
) -> Step {
    let total = |s: &[(String, i64)]| s.iter().map(|(_, b)| b).sum::<i64>();
    let (size0, lsn0) = (total(&sizes(db).await), lsn(admin).await);
    let m = run_measured(env.sweeper().args(["run", "--output", "json"]));
    assert_eq!(m.code, 0, "{}", String::from_utf8_lossy(&m.stdout));
    let s: Value = serde_json::from_slice(&m.stdout).unwrap();
    assert_eq!(s["persisted"].as_u64(), Some(CONVERSATIONS), "{s}");
    let lsn1 = lsn(admin).await;
    let after = sizes(db).await;
    Step {
        label,
        read,
        wal: wal_bytes(admin, &lsn0, &lsn1).await,
        growth: total(&after) - size0,
        wal_tables: wal_by_table(admin, db, &lsn0, &lsn1).await,
        sizes: after,
    }
}

/// Every checkpoint two messages longer (a question and its answer), its TTL kept; returns the
/// bytes of the new values.
async fn grow(env: &Env) -> u64 {
    let client = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut bytes = 0;
    for n in 0..CONVERSATIONS {
        let key = format!("{PREFIX}sim-1-{n:07}");
        let raw: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut doc: Value = serde_json::from_str(&raw).unwrap();
        let at = doc["updated_at"].as_str().unwrap().to_string();
        let messages = doc["messages"].as_array_mut().unwrap();
        let next = messages.len();
        for (i, role) in ["user", "assistant"].into_iter().enumerate() {
            messages.push(json!({
                "id": format!("sim-1-{n:07}-m{}", next + i),
                "role": role,
                "content": "thanks, that works now: could you also check the delivery status of my other order please",
                "ts": at,
            }));
        }
        let text = doc.to_string();
        bytes += text.len() as u64;
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(&text)
            .arg("KEEPTTL")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    bytes
}

pub async fn bench(env: &Env) {
    let redis = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let db = reset(env).await;
    let admin = PgPool::connect(&env.admin_url).await.unwrap();
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        .execute(&admin)
        .await
        .unwrap();
    let mut source = redis_node(env).await;
    // Due under the bench's two-hour threshold, and for as long as the bench runs.
    let cfg = SimulateConfig {
        conversations: CONVERSATIONS,
        prefix: PREFIX.into(),
        ttl_min: Duration::from_secs(5400),
        ttl_max: Duration::from_secs(5760),
        messages_min: 10,
        messages_max: 30,
        seed: 1,
    };
    let report = simulate(&mut source, &cfg).await.unwrap();
    eprintln!("bench: storage: first sweep");
    let first = measured_sweep(
        env,
        &admin,
        &db,
        "first sweep: 20,000 new conversations",
        report.bytes,
    )
    .await;
    eprintln!("bench: storage: two more messages each, swept again");
    let read = grow(env).await;
    let again = measured_sweep(env, &admin, &db, "re-sweep: each 2 messages longer", read).await;
    print(&[first, again], report.messages);
}

fn print(steps: &[Step], messages: u64) {
    println!();
    println!(
        "| sweep | read from Redis | WAL | WAL / read (target <= {WAL_TARGET}x) | table growth | growth / read (target <= {GROWTH_TARGET}x) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for s in steps {
        let r = s.read as f64;
        println!(
            "| {} | {} | {} | {:.2}x | {} | {:.2}x |",
            s.label,
            mb(s.read as i64),
            mb(s.wal),
            s.wal as f64 / r,
            mb(s.growth),
            s.growth as f64 / r
        );
    }
    for s in steps {
        let top: Vec<String> = s
            .wal_tables
            .iter()
            .take(6)
            .map(|(t, b)| format!("{t} {} ({:.0}%)", mb(*b), *b as f64 * 100.0 / s.wal as f64))
            .collect();
        println!("- {}: WAL by relation: {}", s.label, top.join(", "));
    }
    let last = &steps[steps.len() - 1];
    let on_disk: Vec<String> = last
        .sizes
        .iter()
        .filter(|(_, b)| *b > 1 << 20)
        .map(|(t, b)| format!("{t} {}", mb(*b)))
        .collect();
    println!("- on disk after both sweeps: {}", on_disk.join(", "));
    println!(
        "- data: {CONVERSATIONS} simulated conversations, {messages} messages ({:.1} each) before the re-sweep",
        messages as f64 / CONVERSATIONS as f64
    );
}
