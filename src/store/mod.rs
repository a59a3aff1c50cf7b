//! The only code that speaks PostgreSQL: the schema (migrations), the bulk upsert of a batch of
//! checkpoints, rejects, and the record of each run.
//!
//! A batch is one transaction of three statements whatever its size (messages, conversations,
//! rejects): either all of a batch is saved or none of it, and a re-run repairs a crash.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::checkpoint::{Checkpoint, MAX_ID_BYTES};
use crate::error::{Error, Result};
use crate::redact::redact_url;
use crate::redis::layout::REJECT_SAMPLE_BYTES;
use crate::retry;

pub mod langgraph;
mod migrate;
mod runs;
mod write;

pub use runs::RunLock;

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
