//! The write stage: batches go to PostgreSQL, each in one transaction on its own connection,
//! `--writers` at once. A batch PostgreSQL refuses for its data is written row by row (the rows it
//! refuses become rejects); a batch it cannot take at all has its keys protected, and from then on
//! every batch is protected instead of written.
//!
//! A write that fails for want of PostgreSQL (a lost connection, a timeout, a read-only
//! endpoint) has its batch's keys protected *before* it is retried, so a retry that hangs costs
//! no key; and while such a retry is under way, batches that find no free writer are protected
//! instead of waiting for one, so the reading goes on and no due key still unread runs out its
//! TTL behind a stalled writer. When the retries succeed, writing resumes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::decode::{ReadBatch, count_protected};
use super::protect::protect;
use crate::config::SweepConfig;
use crate::error::{Error, Result};
use crate::redis::Nodes;
use crate::retry::{self, Backoff};
use crate::run::{Counters, DueList};
use crate::store::{Batch, BatchOutcome, RejectRecord, Store};

/// The writers of one sweep.
pub(super) struct Writers<'a> {
    pub cfg: &'a SweepConfig,
    /// None on dry runs: the due keys are collected for the table instead.
    pub store: Option<&'a Store>,
    pub run_id: Option<i64>,
    pub deadline: Option<Instant>,
    /// Raises the TTL of keys that could not be written.
    pub protector: Nodes,
    /// Set at the first batch PostgreSQL cannot take: the reader then protects instead of reading.
    pub store_down: Arc<AtomicBool>,
}

/// What the writers did.
pub(super) struct Wrote {
    pub counters: Counters,
    /// A dry run's most urgent due keys.
    pub due_keys: DueList,
    /// Why PostgreSQL could not take the sweep's writes.
    pub error: Option<Error>,
    /// Due keys gone before they could be protected: counted in `expired_before_read` here,
    /// to be taken off the decoder's `due`.
    pub gone_due: u64,
}

impl Writers<'_> {
    /// Writes every batch `rx` brings until it closes.
    pub async fn drain(mut self, mut rx: mpsc::Receiver<ReadBatch>) -> Wrote {
        let cfg = self.cfg;
        let mut out = Wrote {
            counters: Counters::default(),
            due_keys: DueList::new(cfg.list),
            error: None,
            gone_due: 0,
        };
        // Set by a write task at its first failure, cleared when a retry succeeds.
        let (trouble_tx, mut trouble) = watch::channel(false);
        let guard = Guard {
            protector: self.protector.clone(),
            cfg: Arc::new(cfg.clone()),
            trouble: Arc::new(trouble_tx),
        };
        // Batches written at once, each on its own connection: batches hold disjoint conversations.
        let mut writing: JoinSet<(Written, Option<(Error, Batch)>)> = JoinSet::new();
        // The keys of each batch being written, to protect them if its task dies.
        let mut in_flight: HashMap<tokio::task::Id, Vec<Vec<u8>>> = HashMap::new();
        let mut reading = true;
        while reading || !writing.is_empty() {
            let in_trouble = *trouble.borrow_and_update();
            let full = writing.len() >= cfg.writers.max(1);
            tokio::select! {
                Some(done) = writing.join_next_with_id(), if !writing.is_empty() => {
                    let (written, failed) = match done {
                        Ok((id, (written, failed))) => {
                            in_flight.remove(&id);
                            (written, failed)
                        }
                        Err(e) => {
                            let keys = in_flight.remove(&e.id()).unwrap_or_default();
                            let p = protect(&mut self.protector, &keys, cfg).await;
                            out.gone_due += count_protected(&mut out.counters, p, &keys);
                            let e = Error::Other(format!("a batch writer failed: {e}"));
                            (Written::default(), Some((e, Batch::default())))
                        }
                    };
                    written.add_to(&mut out.counters);
                    if let Some((e, batch)) = failed {
                        self.failed(&mut out, e);
                        let keys = batch_keys(&batch);
                        let p = protect(&mut self.protector, &keys, cfg).await;
                        out.gone_due += count_protected(&mut out.counters, p, &keys);
                    }
                }
                read = rx.recv(), if reading && (!full || in_trouble) => {
                    let Some(read) = read else {
                        reading = false;
                        continue;
                    };
                    out.counters.batches += 1;
                    match self.store {
                        None => out.due_keys.extend(read.due_keys),
                        // PostgreSQL cannot take batches now (for good, or while a retry is under
                        // way and no writer is free): keep these keys alive for a later sweep.
                        Some(_) if out.error.is_some() || full => {
                            let keys = batch_keys(&read.batch);
                            let p = protect(&mut self.protector, &keys, cfg).await;
                            out.gone_due += count_protected(&mut out.counters, p, &keys);
                        }
                        Some(s) => {
                            let (s, run_id, deadline) = (s.clone(), self.run_id, self.deadline);
                            let keys = batch_keys(&read.batch);
                            let guard = guard.clone();
                            let task = writing.spawn(async move { write(&s, run_id, read.batch, deadline, guard).await });
                            in_flight.insert(task.id(), keys);
                        }
                    }
                }
                // A writer in trouble while all are busy: look at the batches waiting again.
                Ok(()) = trouble.changed(), if reading && full && !in_trouble => {}
            }
        }
        if out.error.is_none() && out.counters.protected > 0 {
            tracing::warn!(
                protected = out.counters.protected,
                protect_ttl = %humantime::format_duration(cfg.protect_ttl),
                "PostgreSQL was unreachable for a while: these due keys were protected instead of saved; the next sweep saves them"
            );
        }
        out
    }

    /// The first failure switches the sweep to protecting.
    fn failed(&self, out: &mut Wrote, e: Error) {
        if out.error.is_none() {
            tracing::error!(error = %e, "PostgreSQL cannot take the sweep's writes: protecting the due keys instead");
            self.store_down.store(true, Ordering::SeqCst);
            out.error = Some(e);
        }
    }
}

impl Written {
    fn add_to(&self, c: &mut Counters) {
        c.persisted += self.persisted;
        c.unchanged += self.unchanged;
        c.messages_added += self.messages_added;
        c.pg_statements += self.statements;
        c.rejected += self.refused;
        c.erased += self.erased;
    }
}

/// What a write task needs to keep a failing batch's keys alive.
#[derive(Clone)]
struct Guard {
    protector: Nodes,
    cfg: Arc<SweepConfig>,
    trouble: Arc<watch::Sender<bool>>,
}

/// What `write` did with a batch.
#[derive(Debug, Default)]
struct Written {
    persisted: u64,
    unchanged: u64,
    messages_added: u64,
    statements: u64,
    /// Checkpoints (or LangGraph threads) PostgreSQL refused one by one, recorded as rejects.
    refused: u64,
    /// Checkpoints (or threads) of erased conversations, not written.
    erased: u64,
}

/// Writes a batch with retries. When PostgreSQL refuses the batch's data for good (a value it
/// cannot store), its checkpoints (or LangGraph threads: a thread is written whole or not at all)
/// are written one by one and those it refuses become rejects, so one bad row never blocks the
/// rest. Returns what was written, and on failure the error with what was not (for protection).
async fn write(
    s: &Store,
    run_id: Option<i64>,
    mut batch: Batch,
    deadline: Option<Instant>,
    mut guard: Guard,
) -> (Written, Option<(Error, Batch)>) {
    let mut w = Written::default();
    let add = |w: &mut Written, out: BatchOutcome| {
        w.persisted += out.persisted;
        w.unchanged += out.unchanged;
        w.messages_added += out.messages_added;
        w.statements += out.statements;
        w.erased += out.erased;
    };
    match write_once(s, run_id, &mut batch, deadline, &mut guard).await {
        Ok(out) => {
            add(&mut w, out);
            return (w, None);
        }
        Err(e)
            if e.is_data_error()
                && (!batch.checkpoints.is_empty() || !batch.threads.is_empty()) =>
        {
            tracing::warn!(error = %e, "PostgreSQL refused the batch: writing its checkpoints one by one");
        }
        Err(e) => {
            w.erased += batch.erased;
            return (w, Some((e, batch)));
        }
    }
    let Batch {
        checkpoints,
        threads,
        mut rejects,
        erased,
    } = batch;
    w.erased += erased;
    let single = |c, t| Batch {
        checkpoints: Vec::from_iter(c),
        threads: Vec::from_iter(t),
        ..Batch::default()
    };
    let mut pending: std::collections::VecDeque<Batch> = checkpoints
        .into_iter()
        .map(|c| single(Some(c), None))
        .chain(threads.into_iter().map(|t| single(None, Some(t))))
        .collect();
    while let Some(mut one) = pending.pop_front() {
        match write_once(s, run_id, &mut one, deadline, &mut guard).await {
            Ok(out) => add(&mut w, out),
            Err(e) if e.is_data_error() => {
                rejects.push(refused(one, &format!("postgres_refused: {e}")));
                w.refused += 1;
            }
            Err(e) => {
                // Everything not yet written goes back, for protection; the rows refused so far
                // go with it as rejects.
                w.erased += one.erased;
                let mut rest = one;
                for b in pending {
                    rest.checkpoints.extend(b.checkpoints);
                    rest.threads.extend(b.threads);
                }
                rest.rejects = rejects;
                return (w, Some((e, rest)));
            }
        }
    }
    let mut rest = Batch {
        rejects,
        ..Batch::default()
    };
    match write_once(s, run_id, &mut rest, deadline, &mut guard).await {
        Ok(out) => {
            add(&mut w, out);
            (w, None)
        }
        Err(e) => (w, Some((e, rest))),
    }
}

/// The reject of a checkpoint or thread PostgreSQL refused on its own; its keys stay in Redis.
fn refused(one: Batch, reason: &str) -> RejectRecord {
    if let Some(t) = one.threads.into_iter().next() {
        tracing::warn!(key = %t.latest_key, thread_id = %t.thread_id, checkpoint_ns = %t.checkpoint_ns, %reason,
            "LangGraph thread rejected: set aside in sweep_rejects, its keys left in Redis");
        let raw = t.inspection();
        let size = raw.len() as u64;
        return RejectRecord::new(t.latest_key, reason, &raw, size);
    }
    let c = one
        .checkpoints
        .into_iter()
        .next()
        .expect("one checkpoint or thread");
    tracing::warn!(key = %c.redis_key, %reason, "checkpoint rejected: set aside in sweep_rejects");
    RejectRecord::new(
        c.redis_key,
        reason,
        c.document.as_bytes(),
        c.document.len() as u64,
    )
}

/// One batch, one transaction (bounded by `--operation-timeout` in the store), retried on
/// transient errors for at most [`retry::RIDE_OUT`] after the first; the batch's keys are
/// protected before the first retry.
async fn write_once(
    s: &Store,
    run_id: Option<i64>,
    batch: &mut Batch,
    deadline: Option<Instant>,
    guard: &mut Guard,
) -> Result<BatchOutcome> {
    let backoff = Backoff::default();
    let (mut n, mut give_up, mut protected) = (0, deadline, false);
    loop {
        let e = match s.write_batch(run_id, batch).await {
            Ok(out) => {
                if n > 0 {
                    guard.trouble.send_replace(false);
                }
                return Ok(out);
            }
            Err(e) => e,
        };
        if n == 0 {
            give_up = retry::ride_out(deadline);
        }
        if e.is_transient() && !protected {
            guard.trouble.send_replace(true);
            protect(&mut guard.protector, &batch_keys(batch), &guard.cfg).await;
            protected = true;
        }
        let Some(pause) = backoff.pause(n, &e, give_up, "writing a batch to PostgreSQL") else {
            return Err(e);
        };
        tokio::time::sleep(pause).await;
        n += 1;
    }
}

pub(super) fn batch_keys(batch: &Batch) -> Vec<Vec<u8>> {
    let threads = batch.threads.iter().flat_map(|t| t.keys.iter().cloned());
    batch
        .checkpoints
        .iter()
        .map(|c| c.redis_key.clone().into_bytes())
        .chain(threads)
        .collect()
}
