//! The only code that speaks PostgreSQL: the schema (migrations), the bulk upsert of a batch of
//! checkpoints, rejects, and the record of each run; erasure (`erase`) and retention (`prune`).
//!
//! A batch is one transaction of a few statements whatever its size (the tombstones' check,
//! messages, conversations, rejects): either all of a batch is saved or none of it, and a re-run
//! repairs a crash.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, SqlSafeStr};

use crate::checkpoint::{Checkpoint, MAX_ID_BYTES};
use crate::config::Timeouts;
use crate::error::{Error, Result};
use crate::redis::layout::REJECT_SAMPLE_BYTES;
use crate::retry;

pub mod erase;
mod faults;
mod hosts;
mod keepalive;
pub mod langgraph;
mod migrate;
mod partitions;
pub mod prune;
mod runs;
pub mod schema;
mod write;

pub use runs::RunLock;
pub use schema::Schema;

/// What one batch brings to the store.
#[derive(Debug, Default)]
pub struct Batch {
    pub checkpoints: Vec<Checkpoint>,
    pub rejects: Vec<RejectRecord>,
    /// LangGraph threads (`--format langgraph`), written to LangGraph's own tables.
    pub threads: Vec<crate::langgraph::Thread>,
    /// Checkpoints and threads taken out as erased by a write of this batch (kept here: an
    /// attempt that fails has taken them out all the same, and a retry must still count them).
    pub erased: u64,
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
    /// Conversations and threads erased (`sweeper forget`): not written.
    pub erased: u64,
    /// SQL statements sent, BEGIN and COMMIT included.
    pub statements: u64,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// BEGIN with this store's server-side limits; see [`Store::in_tx`].
    begin: Arc<str>,
    /// The client's own deadline for one transaction.
    operation: Duration,
    /// Connections not to reuse after a fault.
    faults: Arc<faults::Faults>,
    /// Where sweeper's tables are.
    schema: Schema,
}

/// Every statement is sent unnamed (`persistent(false)`): sqlx names a statement even with its
/// cache off, a named statement outlives its transaction on the server, and behind a pooler in
/// transaction mode (PgBouncer before 1.21, or without `max_prepared_statements`) the next client
/// of that server then fails with `prepared statement "sqlx_s_1" already exists`. Statements
/// with parameters run inside a transaction ([`Store::in_tx`]), where the pooler keeps the
/// client on one server between their Parse and their Execute.
pub(crate) fn query<'q>(sql: impl SqlSafeStr) -> sqlx::query::Query<'q, Postgres, PgArguments> {
    sqlx::query(sql).persistent(false)
}

/// [`query`], for rows read as `O`.
pub(crate) fn query_as<'q, O>(
    sql: impl SqlSafeStr,
) -> sqlx::query::QueryAs<'q, Postgres, O, PgArguments>
where
    O: for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_as(sql).persistent(false)
}

/// [`query`], for one column read as `O`.
pub(crate) fn query_scalar<'q, O>(
    sql: impl SqlSafeStr,
) -> sqlx::query::QueryScalar<'q, Postgres, O, PgArguments>
where
    (O,): for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_scalar(sql).persistent(false)
}

/// BEGIN, then the server's own limits and the schema for this transaction only (`SET LOCAL`):
/// sent as startup options they are refused by PgBouncer (`unsupported startup parameter:
/// options`) or, ignored there, silently dropped; set for the session, a pooler in transaction
/// mode runs the next transaction on another server. A statement or lock wait that hangs ends
/// on the server about when the client gives up on it.
fn begin_sql(operation: Duration, schema: &Schema) -> String {
    let ms = operation.as_millis().max(1);
    format!(
        "BEGIN; SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {}; \
         SET LOCAL idle_in_transaction_session_timeout = {ms}; SET LOCAL search_path = {}",
        (ms * 2 / 3).max(1),
        schema.search_path()
    )
}

/// A timed-out operation, as sqlx reports a lost connection: transient, retried on a fresh one.
fn timed_out(context: &'static str, after: Duration) -> Error {
    Error::Postgres {
        context,
        source: sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no answer within {} (--operation-timeout)",
                humantime::format_duration(after)
            ),
        )),
    }
}

impl Store {
    /// Connects, failing within `timeouts.connect` when PostgreSQL is down. A multi-host URL
    /// (`host=a,b`, `target_session_attrs=read-write`) connects to the first host that answers
    /// (and takes writes, when asked). The pool holds a connection for each of `writers`
    /// parallel batch writes and one for the run's records and lock: bounded, so two sweeps
    /// through a small pooler pool cannot each hold part of it while waiting for more.
    ///
    /// No session state is set: every statement runs in a transaction that sets the schema
    /// ([`begin_sql`]), which holds behind a pooler in transaction mode (where a session `SET`
    /// stays on a server other clients then get) as well as direct, with no role setting.
    pub async fn connect(
        url: &str,
        schema: &Schema,
        timeouts: Timeouts,
        writers: usize,
    ) -> Result<Store> {
        let targets = hosts::Hosts::parse(url)?;
        let faults = Arc::new(faults::Faults::default());
        // Refused or reset connections are retried until `timeout`, as sqlx-cli does; the hosts
        // are tried again each time, so a standby promoted meanwhile is found.
        let pool = retry::within("connecting to PostgreSQL", timeouts.connect, || async {
            let opts: PgConnectOptions = targets.pick(timeouts.connect).await?;
            // No startup parameter a pooler may refuse: PgBouncer knows application_name and
            // the few sqlx always sends, not extra_float_digits (unless told to ignore it).
            let opts = opts.application_name("sweeper").extra_float_digits(None);
            let (port, deadline) = (opts.get_port(), timeouts.operation);
            match faults
                .guard(PgPoolOptions::new(), timeouts.operation)
                .after_connect(move |_, _| {
                    keepalive::apply(port, deadline);
                    Box::pin(async { Ok(()) })
                })
                .max_connections(writers as u32 + 1)
                .acquire_timeout(timeouts.connect)
                .connect_with(opts.clone())
                .await
            {
                Ok(pool) => Ok(pool),
                Err(sqlx::Error::PoolTimedOut) => {
                    Err(hosts::why_not(&opts, timeouts.connect).await)
                }
                Err(e) => Err(Error::postgres("connect")(e)),
            }
        })
        .await?;
        Ok(Store {
            pool,
            begin: begin_sql(timeouts.operation, schema).into(),
            operation: timeouts.operation,
            faults,
            schema: schema.clone(),
        })
    }

    /// Runs `work` in one transaction with the server-side limits set, within the client's own
    /// deadline (`--operation-timeout`): a server that goes silent fails the operation instead
    /// of hanging it.
    pub(crate) async fn in_tx<T>(
        &self,
        context: &'static str,
        work: impl AsyncFnOnce(&mut PgConnection) -> sqlx::Result<T>,
    ) -> Result<T> {
        let run = async {
            let mut tx = self
                .pool
                .begin_with(AssertSqlSafe(self.begin.to_string()))
                .await?;
            let out = work(&mut tx).await?;
            tx.commit().await?;
            Ok(out)
        };
        self.within(context, run).await
    }

    /// `op`, failed as a lost connection when it takes longer than `--operation-timeout`.
    pub(crate) async fn within<T>(
        &self,
        context: &'static str,
        op: impl Future<Output = sqlx::Result<T>>,
    ) -> Result<T> {
        self.bounded(context, async {
            op.await.map_err(Error::postgres(context))
        })
        .await
    }

    /// `op` within `--operation-timeout`; a fault it meets spoils the pool's connections open
    /// now. The fault is noted before `op` is dropped: its connection, released then, is closed
    /// rather than checked (a check on a silent connection waits forever).
    pub(crate) async fn bounded<T>(
        &self,
        context: &'static str,
        op: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let mut op = Box::pin(op);
        let r = match tokio::time::timeout(self.operation, op.as_mut()).await {
            Ok(r) => r,
            Err(_) => Err(timed_out(context, self.operation)),
        };
        if let Err(e) = &r {
            self.faults.saw(e);
        }
        drop(op);
        r
    }

    /// A transaction with the server-side limits set, for callers that hold it across steps
    /// (the batch write); the caller bounds it with [`Store::within`].
    pub(crate) async fn begin(&self) -> sqlx::Result<sqlx::Transaction<'static, Postgres>> {
        self.pool
            .begin_with(AssertSqlSafe(self.begin.to_string()))
            .await
    }

    /// `--operation-timeout`: how long one transaction may take.
    pub fn operation_timeout(&self) -> Duration {
        self.operation
    }

    /// The newest checkpoint saved for a conversation, as `restore` puts it back.
    pub async fn saved_checkpoint(&self, conversation_id: &str) -> Result<Option<SavedCheckpoint>> {
        self.in_tx("read the conversation", async |c| {
            query_as(
                "SELECT redis_key, checkpoint::text AS document, checkpoint_messages, message_count \
                 FROM conversations WHERE conversation_id = $1",
            )
            .bind(conversation_id)
            .fetch_optional(c)
            .await
        })
        .await
    }

    /// The key and value each message of a conversation was read from (one key per message),
    /// oldest first; empty when its messages came from a document.
    pub async fn saved_message_sources(
        &self,
        conversation_id: &str,
    ) -> Result<Vec<(String, String)>> {
        self.in_tx("read the conversation's messages", async |c| {
            query_as(
                "SELECT redis_key, element::text FROM messages \
                 WHERE conversation_id = $1 AND redis_key IS NOT NULL ORDER BY seq",
            )
            .bind(conversation_id)
            .fetch_all(c)
            .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use write::distinct_rejects;

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
