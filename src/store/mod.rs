//! The only code that speaks PostgreSQL: the schema (migrations), the bulk upsert of a batch of
//! checkpoints, rejects, and the record of each run.
//!
//! A batch is one transaction of three statements whatever its size (messages, conversations,
//! rejects): either all of a batch is saved or none of it, and a re-run repairs a crash.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::checkpoint::{Checkpoint, MAX_ID_BYTES};
use crate::config::SweepConfig;
use crate::error::{Error, Result};
use crate::redact::redact_url;
use crate::redis::layout::REJECT_SAMPLE_BYTES;
use crate::retry;
use crate::run::{Counters, RunHistory, RunRecord, RunStatus};
use crate::shard::Shard;

pub mod langgraph;

static MIGRATOR: Migrator = sqlx::migrate!();

/// What one batch brings to the store.
#[derive(Debug, Default)]
pub struct Batch {
    pub checkpoints: Vec<Checkpoint>,
    pub rejects: Vec<RejectRecord>,
    /// LangGraph threads (`--format langgraph`), written to LangGraph's own tables.
    pub threads: Vec<crate::langgraph::Thread>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.checkpoints.len() + self.rejects.len() + self.threads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A value set aside, as `sweep_rejects` stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectRecord {
    pub redis_key: String,
    pub reason: String,
    /// The value's first 64 KiB.
    pub raw: Vec<u8>,
    /// The value's whole size in bytes.
    pub raw_size: u64,
    pub value_hash: [u8; 32],
}

impl RejectRecord {
    /// `value` is the whole value, or only its first bytes when `size` says it is larger.
    pub fn new(
        mut redis_key: String,
        reason: impl ToString,
        value: &[u8],
        size: u64,
    ) -> RejectRecord {
        // A key too long for the unique index is kept by its start (with its hash, still unique).
        if redis_key.len() > MAX_ID_BYTES {
            let mut end = MAX_ID_BYTES;
            while !redis_key.is_char_boundary(end) {
                end -= 1;
            }
            redis_key.truncate(end);
            redis_key.push_str("...");
        }
        let mut h = Sha256::new();
        if (value.len() as u64) < size {
            h.update(size.to_le_bytes());
        }
        h.update(value);
        let keep = value.len().min(REJECT_SAMPLE_BYTES as usize);
        RejectRecord {
            redis_key,
            reason: reason.to_string(),
            raw: value[..keep].to_vec(),
            raw_size: size,
            value_hash: h.finalize().into(),
        }
    }
}

/// A conversation's newest checkpoint, as saved.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SavedCheckpoint {
    pub redis_key: String,
    pub document: String,
    pub checkpoint_messages: i32,
    /// Messages stored in all: more than the checkpoint holds when the conversation was started
    /// again after its key expired.
    pub message_count: i32,
}

/// What a batch changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Conversations inserted or updated.
    pub persisted: u64,
    /// Conversations whose checkpoint was already stored (or older than the stored one) and that
    /// brought no new message: nothing written.
    pub unchanged: u64,
    pub messages_added: u64,
    pub rejects: u64,
    /// SQL statements sent, BEGIN and COMMIT included.
    pub statements: u64,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

/// A held sweep lock; see [`Store::try_lock`].
pub struct RunLock {
    conn: sqlx::PgConnection,
}

impl RunLock {
    pub async fn release(self) {
        // Closing the session releases its advisory locks.
        let _ = sqlx::Connection::close(self.conn).await;
    }
}

/// The advisory lock key of sweeps of one pattern (and shard): the first 8 bytes of a SHA-256.
/// An unsharded sweep keeps the key it always had, so binaries of before and after sharding
/// exclude each other.
fn lock_key(pattern: &str, shard: Option<Shard>) -> i64 {
    let name = match shard {
        None => format!("sweeper:{pattern}"),
        Some(s) => format!("sweeper:{pattern}\0shard {s}"),
    };
    let h = Sha256::digest(name.as_bytes());
    i64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
}

impl Store {
    /// Connects, failing within `timeout` when PostgreSQL is down. The pool holds a connection
    /// for each of `writers` parallel batch writes, and one for the run's own records.
    pub async fn connect(url: &str, timeout: Duration, writers: usize) -> Result<Store> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(Error::Usage(format!(
                "invalid --database-url {}: it must start with postgres:// or postgresql://",
                redact_url(url)
            )));
        }
        let opts: PgConnectOptions = url.parse().map_err(|e| {
            Error::Usage(format!("invalid --database-url {}: {e}", redact_url(url)))
        })?;
        // A statement that hangs (a lock held elsewhere, a stuck server) must end, or it would
        // hold the sweep lock and every later run would be skipped.
        let opts = opts.application_name("sweeper").options([
            ("statement_timeout", "120s"),
            ("lock_timeout", "60s"),
            ("idle_in_transaction_session_timeout", "120s"),
        ]);
        // Refused or reset connections are retried until `timeout`, as sqlx-cli does.
        let pool = retry::within("connecting to PostgreSQL", timeout, || {
            let opts = opts.clone();
            async move {
                PgPoolOptions::new()
                    .max_connections(writers as u32 + 2)
                    .acquire_timeout(timeout)
                    .connect_with(opts)
                    .await
                    .map_err(Error::postgres("connect"))
            }
        })
        .await?;
        Ok(Store { pool })
    }

    /// Takes the lock of sweeps of `pattern` on this database, or None when another sweep holds
    /// it. The lock is a session-level advisory lock on a connection of its own: it is released
    /// by [`RunLock::release`], or by PostgreSQL when the process dies.
    pub async fn try_lock(&self, pattern: &str, shard: Option<Shard>) -> Result<Option<RunLock>> {
        let key = lock_key(pattern, shard);
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(Error::postgres("lock"))?
            .detach();
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .map_err(Error::postgres("lock"))?;
        Ok(locked.then_some(RunLock { conn }))
    }

    /// Applies the migrations not yet applied; returns the versions it applied.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        let before = self.schema_version().await?;
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| Error::Postgres {
                context: "migrate",
                source: e.into(),
            })?;
        Ok(MIGRATOR
            .iter()
            .map(|m| m.version)
            .filter(|v| before.is_none_or(|b| *v > b))
            .collect())
    }

    /// Creates LangGraph's PostgresSaver tables as its `setup()` does; returns the versions
    /// applied.
    pub async fn migrate_langgraph(&self) -> Result<Vec<i64>> {
        crate::store::langgraph::migrate(&self.pool).await
    }

    /// Fails with [`Error::NotMigrated`] unless LangGraph's tables are fully set up.
    pub async fn ensure_langgraph(&self) -> Result<()> {
        let needed = crate::store::langgraph::needed();
        match crate::store::langgraph::version(&self.pool).await? {
            Some(v) if v >= needed => Ok(()),
            found => Err(Error::NotMigrated {
                found: format!(
                    "LangGraph tables at {}: `sweeper migrate --format langgraph` or PostgresSaver.setup() creates them",
                    found.map_or("none".into(), |v| format!("version {v}"))
                ),
                needed,
            }),
        }
    }

    /// The newest migration applied, or None on a database never migrated.
    pub async fn schema_version(&self) -> Result<Option<i64>> {
        let table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                .fetch_one(&self.pool)
                .await
                .map_err(Error::postgres("check schema"))?;
        if table.is_none() {
            return Ok(None);
        }
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
            .map_err(Error::postgres("check schema"))
    }

    /// Fails with [`Error::NotMigrated`] unless every migration this binary has is applied.
    pub async fn ensure_migrated(&self) -> Result<()> {
        let needed = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        match self.schema_version().await? {
            Some(v) if v >= needed => Ok(()),
            found => Err(Error::NotMigrated {
                found: found.map_or("no sweeper schema".into(), |v| {
                    format!("schema version {v}")
                }),
                needed,
            }),
        }
    }

    /// The newest `limit` runs, newest first.
    pub async fn recent_runs(&self, limit: i64) -> Result<Vec<RunRecord>> {
        sqlx::query_as(
            "SELECT id, started_at, finished_at, status, scanned, due, persisted, unchanged, rejected, \
             protected, duration_ms, error, shard_index, shard_count FROM sweep_runs ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::postgres("read runs"))
    }

    /// When the whole keyspace was last swept successfully: the newest `ok` run, if any.
    ///
    /// With sharded runs, the keyspace is swept once every shard of a count has: a sharding's
    /// success is when the last of its shards last succeeded, and a shard that stopped
    /// succeeding holds it back (so `status` alarms although the other shards run fine).
    pub async fn last_success(&self) -> Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar(
            "WITH shards AS ( \
                 SELECT shard_count, shard_index, max(finished_at) AS last FROM sweep_runs \
                 WHERE status = 'ok' AND shard_count IS NOT NULL GROUP BY shard_count, shard_index), \
             covered AS ( \
                 SELECT min(last) AS at FROM shards GROUP BY shard_count HAVING count(*) = shard_count) \
             SELECT greatest( \
                 (SELECT max(finished_at) FROM sweep_runs WHERE status = 'ok' AND shard_count IS NULL), \
                 (SELECT max(at) FROM covered))",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(Error::postgres("read runs"))
    }

    /// How many runs ended with each status, and when the newest `ok` one finished: what the
    /// metrics export as counters that survive the process.
    pub async fn run_history(&self) -> Result<RunHistory> {
        let by_status: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM sweep_runs GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(Error::postgres("read runs"))?;
        Ok(RunHistory {
            by_status: by_status.into_iter().map(|(s, n)| (s, n as u64)).collect(),
            last_success: self.last_success().await?,
        })
    }

    /// The newest checkpoint saved for a conversation, as `restore` puts it back.
    pub async fn saved_checkpoint(&self, conversation_id: &str) -> Result<Option<SavedCheckpoint>> {
        sqlx::query_as(
            "SELECT redis_key, checkpoint::text AS document, checkpoint_messages, message_count \
             FROM conversations WHERE conversation_id = $1",
        )
        .bind(conversation_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(Error::postgres("read the conversation"))
    }

    /// Records the start of a run; returns its id.
    pub async fn start_run(&self, cfg: &SweepConfig) -> Result<i64> {
        sqlx::query_scalar(
            "INSERT INTO sweep_runs (match_pattern, threshold_ms, host, version, shard_index, shard_count) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&cfg.pattern)
        .bind(cfg.threshold.as_millis() as i64)
        .bind(hostname())
        .bind(env!("CARGO_PKG_VERSION"))
        .bind(cfg.shard.map(|s| s.index as i32))
        .bind(cfg.shard.map(|s| s.count as i32))
        .fetch_one(&self.pool)
        .await
        .map_err(Error::postgres("record run start"))
    }

    /// Marks `failed` the runs of `pattern` still recorded as running: the caller holds the
    /// pattern's lock, so their processes are gone (killed before they could record their end).
    /// Returns how many were closed.
    pub async fn close_abandoned_runs(&self, pattern: &str, current: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE sweep_runs SET status = 'failed', \
             error = 'ended before recording its end (the process was killed?)' \
             WHERE status = 'running' AND match_pattern = $1 AND id < $2",
        )
        .bind(pattern)
        .bind(current)
        .execute(&self.pool)
        .await
        .map_err(Error::postgres("close abandoned runs"))?;
        Ok(done.rows_affected())
    }

    /// Records how a run ended.
    pub async fn finish_run(
        &self,
        id: i64,
        status: RunStatus,
        c: &Counters,
        duration: Duration,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE sweep_runs SET finished_at = now(), status = $2, scanned = $3, due = $4, not_due = $5, \
             persisted = $6, unchanged = $7, rejected = $8, no_ttl = $9, expired_before_read = $10, \
             messages_added = $11, duration_ms = $12, error = $13, protected = $14 WHERE id = $1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(c.scanned as i64)
        .bind(c.due as i64)
        .bind(c.not_due as i64)
        .bind(c.persisted as i64)
        .bind(c.unchanged as i64)
        .bind(c.rejected as i64)
        .bind(c.no_ttl as i64)
        .bind(c.expired_before_read as i64)
        .bind(c.messages_added as i64)
        .bind(duration.as_millis() as i64)
        .bind(error)
        .bind(c.protected as i64)
        .execute(&self.pool)
        .await
        .map_err(Error::postgres("record run end"))?;
        Ok(())
    }

    /// Writes one batch in one transaction: conversations already stored with the same content
    /// are skipped without sending anything; messages of new conversations are inserted as they
    /// come; those of changed conversations are merged with what is stored.
    pub async fn write_batch(&self, run_id: Option<i64>, batch: &Batch) -> Result<BatchOutcome> {
        let started = std::time::Instant::now();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Error::postgres("begin batch"))?;
        let mut statements = 2; // BEGIN, COMMIT

        let rows = newest_per_conversation(&batch.checkpoints);
        let mut stored: HashMap<String, Vec<u8>> = HashMap::new();
        if !rows.is_empty() {
            let ids: Vec<&str> = rows.iter().map(|c| c.conversation_id.as_str()).collect();
            let found: Vec<(String, Vec<u8>)> =
                // FOR UPDATE: a concurrent writer of the same conversations (another sweep whose
                // lock was lost with a PostgreSQL restart) waits here; message numbering reads
                // then writes. Two writers inserting the same new conversation collide on a key
                // instead, which is retried (see Error::is_transient).
                sqlx::query_as("SELECT conversation_id, content_hash FROM conversations WHERE conversation_id = ANY($1) FOR UPDATE")
                    .bind(&ids)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(Error::postgres("look up conversations"))?;
            statements += 1;
            stored.extend(found);
        }
        // Unchanged: every copy in the batch is the stored document, so it brings nothing new.
        let mut unchanged: HashSet<&str> = rows
            .iter()
            .filter(|c| {
                stored
                    .get(&c.conversation_id)
                    .is_some_and(|h| h[..] == c.content_hash[..])
            })
            .map(|c| c.conversation_id.as_str())
            .collect();
        for c in &batch.checkpoints {
            if stored
                .get(&c.conversation_id)
                .is_none_or(|h| h[..] != c.content_hash[..])
            {
                unchanged.remove(c.conversation_id.as_str());
            }
        }
        let is_new = |c: &Checkpoint| !stored.contains_key(&c.conversation_id);
        let is_changed =
            |c: &Checkpoint| !is_new(c) && !unchanged.contains(c.conversation_id.as_str());

        // Messages first, so each conversation row can count what was added.
        let mut added_to: Vec<String> = Vec::new();
        let fresh = MessageColumns::of(batch.checkpoints.iter().filter(|c| is_new(c)));
        if !fresh.message_key.is_empty() {
            // COPY: nothing to merge, so the fastest way in (about 20% faster than UNNEST here).
            let n = fresh.copy_in(run_id, &mut tx).await?;
            added_to.extend(fresh.conversation_id.iter().take(n).map(|c| c.to_string()));
            statements += 1;
        }
        let merged = MessageColumns::of(batch.checkpoints.iter().filter(|c| is_changed(c)));
        if !merged.message_key.is_empty() {
            added_to.extend(merged.merge_in(run_id, &mut tx).await?);
            statements += 1;
        }
        let messages_ms = started.elapsed().as_millis() as u64;
        let mut added: HashMap<&str, i32> = HashMap::new();
        for c in &added_to {
            *added.entry(c.as_str()).or_default() += 1;
        }

        let write: Vec<&Checkpoint> = rows
            .iter()
            .copied()
            .filter(|c| !unchanged.contains(c.conversation_id.as_str()))
            .collect();
        let mut persisted = 0;
        if !write.is_empty() {
            let written: Vec<String> = sqlx::query_scalar(include_str!("upsert_conversations.sql"))
                .bind(column(&write, |c| c.conversation_id.as_str()))
                .bind(column(&write, |c| c.user_id.as_deref()))
                .bind(column(&write, |c| c.redis_key.as_str()))
                .bind(column(&write, |c| c.document.as_str()))
                .bind(column(&write, |c| c.messages.len() as i32))
                .bind(column(&write, |c| {
                    added.get(c.conversation_id.as_str()).copied().unwrap_or(0)
                }))
                .bind(column(&write, |c| c.content_hash.to_vec()))
                .bind(column(&write, |c| c.started_at))
                .bind(column(&write, |c| c.updated_at))
                .bind(run_id)
                .fetch_all(&mut *tx)
                .await
                .map_err(Error::postgres("upsert conversations"))?;
            statements += 1;
            persisted = written.len();
        }
        let conversations_ms = started.elapsed().as_millis() as u64 - messages_ms;

        let rejects = distinct_rejects(&batch.rejects);
        if !rejects.is_empty() {
            sqlx::query(include_str!("insert_rejects.sql"))
                .bind(column(&rejects, |r| r.redis_key.as_str()))
                .bind(column(&rejects, |r| r.value_hash.to_vec()))
                .bind(column(&rejects, |r| r.reason.as_str()))
                .bind(column(&rejects, |r| r.raw.as_slice()))
                .bind(column(&rejects, |r| r.raw_size as i64))
                .bind(run_id)
                .execute(&mut *tx)
                .await
                .map_err(Error::postgres("record rejects"))?;
            statements += 1;
        }
        let threads = crate::store::langgraph::write(&mut tx, &batch.threads).await?;
        statements += threads.statements;
        tx.commit().await.map_err(Error::postgres("commit batch"))?;
        tracing::debug!(
            threads = batch.threads.len(),
            thread_rows = threads.rows,
            conversations = rows.len(),
            unchanged = rows.len() - write.len(),
            new_messages = fresh.message_key.len(),
            merged_messages = merged.message_key.len(),
            messages_ms,
            conversations_ms,
            total_ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );

        Ok(BatchOutcome {
            persisted: persisted as u64 + threads.persisted,
            unchanged: (rows.len() - persisted) as u64 + threads.unchanged,
            messages_added: added_to.len() as u64,
            rejects: batch.rejects.len() as u64,
            statements,
        })
    }
}

/// One checkpoint per conversation (PostgreSQL refuses an upsert touching a row twice): the newest
/// by updated_at, then message count, else the one seen last.
fn newest_per_conversation(all: &[Checkpoint]) -> Vec<&Checkpoint> {
    let mut at: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<&Checkpoint> = Vec::with_capacity(all.len());
    for c in all {
        match at.get(c.conversation_id.as_str()) {
            Some(&i) => {
                let kept = out[i];
                if (c.updated_at, c.messages.len()) >= (kept.updated_at, kept.messages.len()) {
                    out[i] = c;
                }
            }
            None => {
                at.insert(&c.conversation_id, out.len());
                out.push(c);
            }
        }
    }
    out
}

/// Messages as columns for `unnest`, each (conversation, identity) once. `pos` keeps the order
/// messages had in their checkpoints; `seq` numbers each conversation's messages from 0.
#[derive(Default)]
struct MessageColumns<'a> {
    conversation_id: Vec<&'a str>,
    message_key: Vec<&'a str>,
    pos: Vec<i32>,
    seq: Vec<i32>,
    message_id: Vec<Option<&'a str>>,
    role: Vec<&'a str>,
    content: Vec<&'a str>,
    created_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
}

impl<'a> MessageColumns<'a> {
    fn of(checkpoints: impl Iterator<Item = &'a Checkpoint>) -> Self {
        let mut cols = MessageColumns::default();
        let mut seen: HashSet<(&str, &str)> = HashSet::new();
        let mut next_seq: HashMap<&str, i32> = HashMap::new();
        for c in checkpoints {
            for m in &c.messages {
                if !seen.insert((&c.conversation_id, &m.identity)) {
                    continue;
                }
                let seq = next_seq.entry(&c.conversation_id).or_default();
                cols.seq.push(*seq);
                *seq += 1;
                cols.pos.push(cols.conversation_id.len() as i32);
                cols.conversation_id.push(&c.conversation_id);
                cols.message_key.push(&m.identity);
                cols.message_id.push(m.id.as_deref());
                cols.role.push(&m.role);
                cols.content.push(&m.content);
                cols.created_at.push(m.created_at);
            }
        }
        cols
    }

    /// COPYs the messages in (text format); returns how many rows went in. Only for messages of
    /// conversations not stored yet, checked under the batch lock: nothing can conflict.
    async fn copy_in(
        &self,
        run_id: Option<i64>,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<usize> {
        use std::fmt::Write as _;
        let run = run_id.map_or("\\N".to_string(), |r| r.to_string());
        let mut data = String::with_capacity(self.content.iter().map(|c| c.len() + 96).sum());
        for i in 0..self.message_key.len() {
            copy_text(&mut data, self.conversation_id[i]);
            data.push('\t');
            copy_text(&mut data, self.message_key[i]);
            let _ = write!(data, "\t{}\t", self.seq[i]);
            match self.message_id[i] {
                Some(id) => copy_text(&mut data, id),
                None => data.push_str("\\N"),
            }
            data.push('\t');
            copy_text(&mut data, self.role[i]);
            data.push('\t');
            copy_text(&mut data, self.content[i]);
            data.push('\t');
            match self.created_at[i] {
                Some(t) => data.push_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                None => data.push_str("\\N"),
            }
            let _ = writeln!(data, "\t{run}");
        }
        let mut copy = tx
            .copy_in_raw(
                "COPY messages (conversation_id, message_key, seq, message_id, role, content, created_at, run_id) FROM STDIN",
            )
            .await
            .map_err(Error::postgres("copy messages"))?;
        copy.send(data.into_bytes())
            .await
            .map_err(Error::postgres("copy messages"))?;
        let rows = copy
            .finish()
            .await
            .map_err(Error::postgres("copy messages"))?;
        Ok(rows as usize)
    }

    /// Merges the messages of conversations already stored (insert_messages.sql numbers the new
    /// ones after the stored); returns the conversation of each message added.
    async fn merge_in(
        &self,
        run_id: Option<i64>,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<Vec<String>> {
        sqlx::query_scalar(include_str!("insert_messages.sql"))
            .bind(&self.conversation_id)
            .bind(&self.message_key)
            .bind(&self.pos)
            .bind(&self.message_id)
            .bind(&self.role)
            .bind(&self.content)
            .bind(&self.created_at)
            .bind(run_id)
            .fetch_all(&mut **tx)
            .await
            .map_err(Error::postgres("insert messages"))
    }
}

/// One column of a batch, for an `unnest($n::type[])` parameter.
fn column<'a, T, U>(rows: &[&'a T], f: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(|r| f(r)).collect()
}

/// Appends `s` escaped for COPY's text format. Runs between the bytes to escape are copied
/// whole (it was 12% of a sweep's CPU char by char); the escaped bytes are ASCII, so the runs
/// are whole UTF-8 sequences.
fn copy_text(out: &mut String, s: &str) {
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'\\' => "\\\\",
            b'\t' => "\\t",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        out.push_str(escaped);
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

/// Each (key, value) once: an upsert cannot touch the same reject row twice in one statement.
fn distinct_rejects(all: &[RejectRecord]) -> Vec<&RejectRecord> {
    let mut seen = HashSet::new();
    all.iter()
        .filter(|r| seen.insert((&r.redis_key, r.value_hash)))
        .collect()
}

fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::decode;

    fn cp(id: &str, doc: &str) -> Checkpoint {
        decode(&format!("checkpoint:{id}"), id, doc.as_bytes()).unwrap()
    }

    #[test]
    fn copy_text_escapes_what_copy_reads_specially_and_keeps_the_rest() {
        let mut out = String::new();
        copy_text(&mut out, "a\\b\tc\nd\re — ünï\\\\");
        assert_eq!(out, "a\\\\b\\tc\\nd\\re — ünï\\\\\\\\");
        out.clear();
        copy_text(&mut out, "plain");
        assert_eq!(out, "plain");
    }

    #[test]
    fn each_shard_of_a_pattern_has_its_own_lock() {
        let s = |i, n| Some(Shard::new(i, n).unwrap());
        let keys = [
            lock_key("checkpoint:*", None),
            lock_key("checkpoint:*", s(0, 1)),
            lock_key("checkpoint:*", s(0, 3)),
            lock_key("checkpoint:*", s(1, 3)),
            lock_key("other:*", s(1, 3)),
        ];
        let distinct: HashSet<i64> = keys.iter().copied().collect();
        assert_eq!(distinct.len(), keys.len());
        assert_eq!(keys[3], lock_key("checkpoint:*", s(1, 3)), "stable");
    }

    #[test]
    fn duplicates_in_a_batch_keep_the_newest_checkpoint() {
        let old = cp(
            "a",
            r#"{"updated_at": "2026-01-01T00:00:00Z", "messages": [{"id": "1", "role": "u", "content": "x"}]}"#,
        );
        let new = cp(
            "a",
            r#"{"updated_at": "2026-01-02T00:00:00Z", "messages": [{"id": "2", "role": "u", "content": "y"}]}"#,
        );
        let other = cp("b", r#"{"messages": []}"#);
        let all = vec![new.clone(), other.clone(), old.clone()];
        let rows = newest_per_conversation(&all);
        assert_eq!(rows, vec![&new, &other]);
        // Every message of both copies is still written, once.
        let m = MessageColumns::of(all.iter());
        assert_eq!(m.message_key, vec!["id:2", "id:1"]);
        assert_eq!(m.seq, vec![0, 1], "numbered per conversation");
        let twice = [old.clone(), old.clone()];
        assert_eq!(MessageColumns::of(twice.iter()).message_key.len(), 1);
    }

    #[test]
    fn reject_records_keep_a_sample_and_hash_the_value() {
        let big = vec![b'x'; 100_000];
        let r = RejectRecord::new("k".into(), "not_json: x", &big, big.len() as u64);
        assert_eq!(r.raw.len(), REJECT_SAMPLE_BYTES as usize);
        assert_eq!(r.raw_size, 100_000);
        let sample_only = RejectRecord::new("k".into(), "too_large", &big[..65536], 100_000);
        assert_ne!(r.value_hash, sample_only.value_hash);
        let again = RejectRecord::new("k".into(), "not_json: x", &big, big.len() as u64);
        assert_eq!(distinct_rejects(&[r.clone(), again]).len(), 1);
    }
}
