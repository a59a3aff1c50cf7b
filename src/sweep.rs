//! One sweep: Redis -> selection -> decoding -> PostgreSQL -> report.
//!
//! A reader task scans Redis, selects the due keys by TTL, reads and decodes them, and sends
//! batches through a bounded channel to the writer, which upserts each batch in one transaction.
//! Reading the next batch overlaps with writing the last, and memory is bounded by the batch size
//! and the channel depth, not by the number of keys.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::checkpoint::{self, Reject};
use crate::config::SweepConfig;
use crate::error::{Error, Result};
use crate::layout::{Fetched, Layout};
use crate::report::{Counters, DueKey, Summary};
use crate::select::{Ttl, classify};
use crate::source::{Source, display_key};
use crate::store::{Batch, RejectRecord, Store};

/// Batches waiting for the writer. Two lets Redis reads run ahead of one PostgreSQL write.
const CHANNEL_DEPTH: usize = 2;

/// A batch is also sent once its checkpoints hold this many bytes, whatever their number.
const BATCH_BYTES: usize = 32 * 1024 * 1024;

struct ReadBatch {
    batch: Batch,
    /// Filled on dry runs only: what the table shows.
    due_keys: Vec<DueKey>,
}

/// Runs one sweep. With `cfg.dry_run`, `store` is not used (and may be None): nothing is written.
pub async fn run(cfg: &SweepConfig, source: Source, store: Option<&Store>) -> Result<Summary> {
    let started = Instant::now();
    let store = if cfg.dry_run { None } else { store };
    if !cfg.dry_run && store.is_none() {
        return Err(Error::Usage(
            "a sweep that writes needs --database-url or DATABASE_URL (or use --dry-run)".into(),
        ));
    }
    let run_id = match store {
        Some(s) => {
            s.ensure_migrated().await?;
            Some(s.start_run(cfg).await?)
        }
        None => None,
    };

    let (tx, mut rx) = mpsc::channel::<ReadBatch>(CHANNEL_DEPTH);
    let reader = tokio::spawn(read_all(cfg.clone(), source, tx));

    let mut counters = Counters::default();
    let mut due_keys = Vec::new();
    let mut write_error = None;
    while let Some(read) = rx.recv().await {
        counters.batches += 1;
        match store {
            None => due_keys.extend(read.due_keys),
            Some(s) => match s.write_batch(run_id, &read.batch).await {
                Ok(out) => {
                    counters.persisted += out.persisted;
                    counters.unchanged += out.unchanged;
                    counters.messages_added += out.messages_added;
                    tracing::debug!(
                        persisted = out.persisted,
                        unchanged = out.unchanged,
                        rejected = out.rejects,
                        messages_added = out.messages_added,
                        "batch written"
                    );
                }
                Err(e) => {
                    // Dropping the receiver stops the reader at its next send.
                    write_error = Some(e);
                    break;
                }
            },
        }
    }
    drop(rx);
    let read = reader
        .await
        .map_err(|e| Error::Other(format!("the Redis reader task failed: {e}")))?;
    let read_error = match read {
        Ok(r) => {
            counters.merge_read(&r);
            None
        }
        Err((r, e)) => {
            counters.merge_read(&r);
            Some(e)
        }
    };

    let duration = started.elapsed();
    // A write error comes first: it is why the reader stopped.
    let error = write_error.or(read_error);
    let status = if error.is_some() { "failed" } else { "ok" };
    if let (Some(s), Some(id)) = (store, run_id) {
        let message = error.as_ref().map(|e| e.to_string());
        if let Err(e) = s
            .finish_run(id, status, &counters, duration, message.as_deref())
            .await
        {
            // The sweep's own error says more; a failure to record it is only logged.
            tracing::warn!(error = %e, run_id = id, "could not record the end of the run");
            if error.is_none() {
                return Err(e);
            }
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    Ok(Summary {
        run_id,
        status,
        dry_run: cfg.dry_run,
        pattern: cfg.pattern.clone(),
        threshold_ms: cfg.threshold.as_millis() as u64,
        counters,
        duration_ms: duration.as_millis() as u64,
        due_keys: cfg.dry_run.then_some(due_keys),
    })
}

impl Counters {
    fn merge_read(&mut self, r: &Counters) {
        self.scanned += r.scanned;
        self.due += r.due;
        self.not_due += r.not_due;
        self.no_ttl += r.no_ttl;
        self.expired_before_read += r.expired_before_read;
        self.rejected += r.rejected;
        self.redis_round_trips += r.redis_round_trips;
    }
}

/// The reader: SCAN page -> PTTLs -> due keys -> values -> decoded batch -> channel. Returns its
/// counters, with them the error that stopped it early.
async fn read_all(
    cfg: SweepConfig,
    mut source: Source,
    tx: mpsc::Sender<ReadBatch>,
) -> std::result::Result<Counters, (Counters, Error)> {
    let mut reader = Reader::new(cfg);
    let result = reader.scan(&mut source, &tx).await;
    reader.counters.redis_round_trips = source.round_trips();
    match result {
        Ok(()) => Ok(reader.counters),
        Err(e) => Err((reader.counters, e)),
    }
}

struct Reader {
    cfg: SweepConfig,
    counters: Counters,
    /// Hashes of due keys already handled: SCAN may return a key twice.
    seen: HashSet<u64>,
    hasher: RandomState,
    current: ReadBatch,
    current_bytes: usize,
}

impl Reader {
    fn new(cfg: SweepConfig) -> Reader {
        Reader {
            cfg,
            counters: Counters::default(),
            seen: HashSet::new(),
            hasher: RandomState::new(),
            current: ReadBatch {
                batch: Batch::default(),
                due_keys: Vec::new(),
            },
            current_bytes: 0,
        }
    }

    async fn scan(&mut self, source: &mut Source, tx: &mpsc::Sender<ReadBatch>) -> Result<()> {
        let mut cursor = 0;
        loop {
            let (next, keys) = source
                .scan_page(cursor, &self.cfg.pattern, self.cfg.scan_count)
                .await?;
            self.counters.scanned += keys.len() as u64;
            let due = self.select(source, keys).await?;
            if !self.read_due(source, due, tx).await? {
                return Ok(()); // the writer stopped; it has the error
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        self.send(tx).await;
        Ok(())
    }

    /// PTTLs of a page; returns the due keys (once each) with their TTL left.
    async fn select(
        &mut self,
        source: &mut Source,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, u64)>> {
        let pttls = source.pttls(&keys).await?;
        let mut due = Vec::new();
        for (key, pttl) in keys.into_iter().zip(pttls) {
            match classify(pttl, self.cfg.threshold) {
                Ttl::Due { ttl_ms } => {
                    if self.seen.insert(self.hasher.hash_one(&key)) {
                        due.push((key, ttl_ms));
                    }
                }
                Ttl::NotDue => self.counters.not_due += 1,
                Ttl::NoTtl => self.counters.no_ttl += 1,
                Ttl::Gone => self.expired(&key),
            }
        }
        Ok(due)
    }

    fn expired(&mut self, key: &[u8]) {
        self.counters.expired_before_read += 1;
        tracing::warn!(key = %display_key(key), "key expired before it could be read: its last state was not saved");
    }

    /// Reads and decodes the due keys, sending each batch as it fills (at most `batch_size`
    /// checkpoints, so a page full of due keys is split). False when the writer has stopped.
    async fn read_due(
        &mut self,
        source: &mut Source,
        due: Vec<(Vec<u8>, u64)>,
        tx: &mpsc::Sender<ReadBatch>,
    ) -> Result<bool> {
        for chunk in due.chunks(self.cfg.batch_size) {
            let keys: Vec<Vec<u8>> = chunk.iter().map(|(k, _)| k.clone()).collect();
            let fetched = source
                .read(Layout::JsonString, &keys, self.cfg.max_value_bytes)
                .await?;
            let ttls = chunk.iter().map(|(_, t)| *t);
            for ((key, ttl_ms), f) in keys.into_iter().zip(ttls).zip(fetched) {
                self.take(key, ttl_ms, f);
                let full = self.current.batch.len() >= self.cfg.batch_size
                    || self.current_bytes >= BATCH_BYTES;
                if full && !self.send(tx).await {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Decodes one fetched value into the current batch, as a checkpoint or a reject.
    fn take(&mut self, key: Vec<u8>, ttl_ms: u64, fetched: Fetched) {
        let shown = display_key(&key);
        let (decoded, value, size) = match fetched {
            Fetched::Gone => return self.expired(&key),
            Fetched::WrongType(t) => (Err(Reject::WrongType(t.clone())), t.into_bytes(), 0),
            Fetched::TooLarge { size, sample } => (
                Err(Reject::TooLarge {
                    size,
                    limit: self.cfg.max_value_bytes,
                }),
                sample,
                size,
            ),
            Fetched::Value(v) => {
                let decoded = match std::str::from_utf8(&key) {
                    Err(_) => Err(Reject::KeyNotUtf8),
                    Ok(k) => checkpoint::conversation_id(k, &self.cfg.prefix)
                        .and_then(|id| checkpoint::decode(k, id, &v)),
                };
                let size = v.len() as u64;
                (decoded, v, size)
            }
        };
        self.counters.due += 1;
        let messages = decoded.as_ref().ok().map(|c| c.messages.len());
        if self.cfg.dry_run {
            self.current.due_keys.push(DueKey {
                key: shown.clone(),
                ttl_ms,
                bytes: size,
                messages,
                reject: decoded.as_ref().err().map(|r| r.to_string()),
            });
        }
        match decoded {
            Ok(c) => {
                self.current_bytes += c.document.len();
                self.current.batch.checkpoints.push(c);
            }
            Err(reason) => {
                self.counters.rejected += 1;
                tracing::warn!(key = %shown, %reason, "checkpoint rejected: set aside in sweep_rejects");
                self.current
                    .batch
                    .rejects
                    .push(RejectRecord::new(shown, reason, &value, size));
            }
        }
    }

    /// Sends the current batch; false when the writer has stopped.
    async fn send(&mut self, tx: &mpsc::Sender<ReadBatch>) -> bool {
        if self.current.batch.is_empty() && self.current.due_keys.is_empty() {
            return true;
        }
        let full = std::mem::replace(
            &mut self.current,
            ReadBatch {
                batch: Batch::default(),
                due_keys: Vec::new(),
            },
        );
        self.current_bytes = 0;
        tx.send(full).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn reader(dry_run: bool) -> Reader {
        let cfg = SweepConfig::new(
            "checkpoint:*",
            Duration::from_secs(600),
            10,
            10,
            100,
            dry_run,
        )
        .unwrap();
        Reader::new(cfg)
    }

    #[test]
    fn a_key_gone_before_its_value_was_read_is_counted_not_saved() {
        let mut r = reader(false);
        r.take(b"checkpoint:a".to_vec(), 5, Fetched::Gone);
        assert_eq!(r.counters.expired_before_read, 1);
        assert_eq!(r.counters.due, 0);
        assert!(r.current.batch.is_empty());
    }

    #[test]
    fn values_become_checkpoints_or_rejects() {
        let mut r = reader(true);
        r.take(
            b"checkpoint:a".to_vec(),
            5,
            Fetched::Value(br#"{"messages": []}"#.to_vec()),
        );
        r.take(
            b"checkpoint:b".to_vec(),
            6,
            Fetched::WrongType("hash".into()),
        );
        r.take(
            b"checkpoint:c".to_vec(),
            7,
            Fetched::TooLarge {
                size: 500,
                sample: b"{".to_vec(),
            },
        );
        r.take(
            b"checkpoint:".to_vec(),
            8,
            Fetched::Value(br#"{"messages": []}"#.to_vec()),
        );
        assert_eq!(r.counters.due, 4);
        assert_eq!(r.counters.rejected, 3);
        assert_eq!(r.current.batch.checkpoints.len(), 1);
        assert_eq!(r.current.batch.checkpoints[0].conversation_id, "a");
        let reasons: Vec<&str> = r
            .current
            .batch
            .rejects
            .iter()
            .map(|x| x.reason.split(':').next().unwrap())
            .collect();
        assert_eq!(
            reasons,
            ["wrong_type", "too_large", "empty_conversation_id"]
        );
        assert_eq!(r.current.batch.rejects[1].raw_size, 500);
        // A dry run lists every due key, rejected or not.
        assert_eq!(r.current.due_keys.len(), 4);
        assert_eq!(r.current.due_keys[0].messages, Some(0));
        assert!(r.current.due_keys[1].reject.is_some());
    }
}
