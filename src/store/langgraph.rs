//! LangGraph's PostgresSaver tables: created as its `setup()` creates them, and written as its
//! `put` and `put_writes` write them, a batch of threads per transaction.
//!
//! Re-sweeping a thread changes nothing: a checkpoint row is updated only when its checkpoint or
//! metadata differ (PostgresSaver's own upsert would rewrite it), blobs are never overwritten (a
//! channel's value at a version does not change), and a write is updated only when it differs.

use std::collections::HashSet;

use sqlx::{PgPool, Postgres, Transaction};

use crate::error::{Error, Result};
use crate::langgraph::Thread;

/// `MIGRATIONS` of langgraph-checkpoint-postgres 3.2.0 (`langgraph/checkpoint/postgres/base.py`),
/// verbatim: the position of each is its version in `checkpoint_migrations`, and `setup()` runs
/// those above the newest recorded. tests/langgraph.rs compares the schema this gives with the one
/// `PostgresSaver.setup()` gives.
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS checkpoint_migrations (
    v INTEGER PRIMARY KEY
);",
    "CREATE TABLE IF NOT EXISTS checkpoints (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL DEFAULT '',
    checkpoint_id TEXT NOT NULL,
    parent_checkpoint_id TEXT,
    type TEXT,
    checkpoint JSONB NOT NULL,
    metadata JSONB NOT NULL DEFAULT '{}',
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
);",
    "CREATE TABLE IF NOT EXISTS checkpoint_blobs (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL DEFAULT '',
    channel TEXT NOT NULL,
    version TEXT NOT NULL,
    type TEXT NOT NULL,
    blob BYTEA,
    PRIMARY KEY (thread_id, checkpoint_ns, channel, version)
);",
    "CREATE TABLE IF NOT EXISTS checkpoint_writes (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL DEFAULT '',
    checkpoint_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    channel TEXT NOT NULL,
    type TEXT,
    blob BYTEA NOT NULL,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
);",
    "ALTER TABLE checkpoint_blobs ALTER COLUMN blob DROP not null;",
    "SELECT 1;",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS checkpoints_thread_id_idx ON checkpoints(thread_id);",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS checkpoint_blobs_thread_id_idx ON checkpoint_blobs(thread_id);",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS checkpoint_writes_thread_id_idx ON checkpoint_writes(thread_id);",
    "ALTER TABLE checkpoint_writes ADD COLUMN IF NOT EXISTS task_path TEXT NOT NULL DEFAULT '';",
];

/// The newest LangGraph migration recorded, or None when `checkpoint_migrations` is absent. In
/// a transaction, so that a pooler in transaction mode keeps each statement on one server; the
/// table named in `public`, where [`migrate`] puts it, whatever the server's search_path.
pub async fn version(pool: &PgPool) -> Result<Option<i64>> {
    let failed = Error::postgres("check LangGraph schema");
    let mut tx = pool.begin().await.map_err(failed)?;
    let table: Option<String> =
        super::query_scalar("SELECT to_regclass('public.checkpoint_migrations')::text")
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::postgres("check LangGraph schema"))?;
    if table.is_none() {
        return Ok(None);
    }
    let v: Option<i32> = super::query_scalar("SELECT max(v) FROM public.checkpoint_migrations")
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::postgres("check LangGraph schema"))?;
    tx.commit()
        .await
        .map_err(Error::postgres("check LangGraph schema"))?;
    Ok(v.map(i64::from))
}

/// The version a fully set-up database records.
pub fn needed() -> i64 {
    MIGRATIONS.len() as i64 - 1
}

/// Runs what `PostgresSaver.setup()` would: the first migration, then each one above the newest
/// recorded, recording it. Outside a transaction, as setup() (CREATE INDEX CONCURRENTLY cannot
/// run in one): give it a direct URL, not a pooler in transaction mode. Returns the versions
/// applied.
///
/// In `public`, not sweeper's schema: a LangGraph app reads them with the default search_path.
pub async fn migrate(pool: &PgPool) -> Result<Vec<i64>> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(Error::postgres("LangGraph migrate"))?;
    // This connection's search_path no longer starts with sweeper's schema: not back to the pool.
    conn.close_on_drop();
    sqlx::raw_sql("SET search_path = public")
        .execute(&mut *conn)
        .await
        .map_err(Error::postgres("LangGraph migrate"))?;
    sqlx::raw_sql(MIGRATIONS[0])
        .execute(&mut *conn)
        .await
        .map_err(Error::postgres("LangGraph migrate"))?;
    let newest: Option<i32> =
        super::query_scalar("SELECT v FROM checkpoint_migrations ORDER BY v DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::postgres("LangGraph migrate"))?;
    let mut applied = Vec::new();
    for (v, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(newest.map_or(0, |n| n as usize + 1))
    {
        sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
            .execute(&mut *conn)
            .await
            .map_err(Error::postgres("LangGraph migrate"))?;
        super::query("INSERT INTO checkpoint_migrations (v) VALUES ($1)")
            .bind(v as i32)
            .execute(&mut *conn)
            .await
            .map_err(Error::postgres("LangGraph migrate"))?;
        applied.push(v as i64);
    }
    Ok(applied)
}

/// What writing a batch of threads changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Threads with at least one row inserted or changed.
    pub persisted: u64,
    /// Threads already stored as read.
    pub unchanged: u64,
    /// Rows inserted or changed, all tables.
    pub rows: u64,
    pub statements: u64,
}

/// Writes `threads` in the caller's transaction: three statements whatever their number.
pub async fn write(tx: &mut Transaction<'_, Postgres>, threads: &[Thread]) -> Result<Written> {
    let mut w = Written::default();
    if threads.is_empty() {
        return Ok(w);
    }
    let mut touched: HashSet<(String, String)> = HashSet::new();

    // Each primary key once: an upsert cannot touch a row twice (a thread read twice by SCAN).
    for rows in [
        write_checkpoints(tx, threads).await?,
        write_blobs(tx, threads).await?,
        write_writes(tx, threads).await?,
    ]
    .into_iter()
    .flatten()
    {
        w.statements += 1;
        w.rows += rows.len() as u64;
        touched.extend(rows);
    }

    let distinct: HashSet<(&str, &str)> = threads
        .iter()
        .map(|t| (t.thread_id.as_str(), t.checkpoint_ns.as_str()))
        .collect();
    w.persisted = distinct
        .iter()
        .filter(|(t, ns)| touched.contains(&(t.to_string(), ns.to_string())))
        .count() as u64;
    w.unchanged = distinct.len() as u64 - w.persisted;
    Ok(w)
}

/// The `checkpoints` rows of `threads`, each primary key once; returns the (thread, namespace) of the
/// rows inserted or changed, None when there was nothing to send.
async fn write_checkpoints(
    tx: &mut Transaction<'_, Postgres>,
    threads: &[Thread],
) -> Result<Option<Vec<(String, String)>>> {
    let mut seen = HashSet::new();
    let (mut t, mut ns, mut id, mut cp, mut md) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut parent: Vec<Option<&str>> = Vec::new();
    for th in threads {
        for c in &th.checkpoints {
            if !seen.insert((&th.thread_id, &th.checkpoint_ns, &c.checkpoint_id)) {
                continue;
            }
            t.push(th.thread_id.as_str());
            ns.push(th.checkpoint_ns.as_str());
            id.push(c.checkpoint_id.as_str());
            parent.push(c.parent_checkpoint_id.as_deref());
            cp.push(c.checkpoint.as_str());
            md.push(c.metadata.as_str());
        }
    }
    if !t.is_empty() {
        let rows: Vec<(String, String)> = super::query_as(
            "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata) \
             SELECT t, ns, id, p, c::jsonb, m::jsonb \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS u(t, ns, id, p, c, m) \
             ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET \
               checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata \
             WHERE checkpoints.checkpoint IS DISTINCT FROM EXCLUDED.checkpoint \
               OR checkpoints.metadata IS DISTINCT FROM EXCLUDED.metadata \
             RETURNING thread_id, checkpoint_ns",
        )
        .bind(&t)
        .bind(&ns)
        .bind(&id)
        .bind(&parent)
        .bind(&cp)
        .bind(&md)
        .fetch_all(&mut **tx)
        .await
        .map_err(Error::postgres("upsert LangGraph checkpoints"))?;
        return Ok(Some(rows));
    }
    Ok(None)
}

/// The `blobs` rows of `threads`, each primary key once; returns the (thread, namespace) of the
/// rows inserted or changed, None when there was nothing to send.
async fn write_blobs(
    tx: &mut Transaction<'_, Postgres>,
    threads: &[Thread],
) -> Result<Option<Vec<(String, String)>>> {
    let mut seen = HashSet::new();
    let (mut t, mut ns, mut ch, mut ver, mut kind) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut blob: Vec<Option<Vec<u8>>> = Vec::new();
    for th in threads {
        for b in &th.blobs {
            if !seen.insert((&th.thread_id, &th.checkpoint_ns, &b.channel, &b.version)) {
                continue;
            }
            t.push(th.thread_id.as_str());
            ns.push(th.checkpoint_ns.as_str());
            ch.push(b.channel.as_str());
            ver.push(b.version.as_str());
            kind.push(b.kind.as_str());
            blob.push(b.blob.clone());
        }
    }
    if !t.is_empty() {
        let rows: Vec<(String, String)> = super::query_as(
            "INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[]) \
             ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO NOTHING \
             RETURNING thread_id, checkpoint_ns",
        )
        .bind(&t)
        .bind(&ns)
        .bind(&ch)
        .bind(&ver)
        .bind(&kind)
        .bind(&blob)
        .fetch_all(&mut **tx)
        .await
        .map_err(Error::postgres("insert LangGraph blobs"))?;
        return Ok(Some(rows));
    }
    Ok(None)
}

/// The `writes` rows of `threads`, each primary key once; returns the (thread, namespace) of the
/// rows inserted or changed, None when there was nothing to send.
async fn write_writes(
    tx: &mut Transaction<'_, Postgres>,
    threads: &[Thread],
) -> Result<Option<Vec<(String, String)>>> {
    let mut seen = HashSet::new();
    let (mut t, mut ns, mut id, mut task, mut path, mut ch, mut kind) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut idx: Vec<i32> = Vec::new();
    let mut blob: Vec<&[u8]> = Vec::new();
    for th in threads {
        for x in &th.writes {
            if !seen.insert((
                &th.thread_id,
                &th.checkpoint_ns,
                &x.checkpoint_id,
                &x.task_id,
                x.idx,
            )) {
                continue;
            }
            t.push(th.thread_id.as_str());
            ns.push(th.checkpoint_ns.as_str());
            id.push(x.checkpoint_id.as_str());
            task.push(x.task_id.as_str());
            path.push(x.task_path.as_str());
            idx.push(x.idx);
            ch.push(x.channel.as_str());
            kind.push(x.kind.as_str());
            blob.push(x.blob.as_slice());
        }
    }
    if !t.is_empty() {
        let rows: Vec<(String, String)> = super::query_as(
            "INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::text[], $8::text[], $9::bytea[]) \
             ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) DO UPDATE SET \
               channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob \
             WHERE (checkpoint_writes.channel, checkpoint_writes.type, checkpoint_writes.blob) \
               IS DISTINCT FROM (EXCLUDED.channel, EXCLUDED.type, EXCLUDED.blob) \
             RETURNING thread_id, checkpoint_ns",
        )
        .bind(&t)
        .bind(&ns)
        .bind(&id)
        .bind(&task)
        .bind(&path)
        .bind(&idx)
        .bind(&ch)
        .bind(&kind)
        .bind(&blob)
        .fetch_all(&mut **tx)
        .await
        .map_err(Error::postgres("upsert LangGraph writes"))?;
        return Ok(Some(rows));
    }
    Ok(None)
}
