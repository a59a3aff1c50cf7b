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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::decode::{ReadBatch, count_protected};
use super::health::Health;
use super::protect::protect;
use super::shield::{self, Exposed, WriteTimes};
use crate::config::SweepConfig;
use crate::error::{Error, Result};
use crate::logs::per_key::{self, Kind};
use crate::redis::Nodes;
use crate::retry::Retries;
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
    /// Down at the first batch PostgreSQL cannot take for good, stuck while writes wait: the
    /// reader then protects instead of reading.
    pub health: Health,
    /// The keys of each batch being written, to protect them if its task dies, and those of
    /// them with a TTL, to shield while the write is slow.
    pub in_flight: HashMap<tokio::task::Id, (Vec<Vec<u8>>, Exposed)>,
    /// How long this run's writes take.
    pub times: WriteTimes,
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

impl Wrote {
    fn new(list: usize) -> Wrote {
        Wrote {
            counters: Counters::default(),
            due_keys: DueList::new(list),
            error: None,
            gone_due: 0,
        }
    }
}

impl Writers<'_> {
    /// Writes every batch `rx` brings until it closes.
    pub async fn drain(mut self, mut rx: mpsc::Receiver<ReadBatch>) -> Wrote {
        let cfg = self.cfg;
        let mut out = Wrote::new(cfg.list);
        // Set by a write task at its first failure, cleared when a retry succeeds.
        let (trouble_tx, mut trouble) = watch::channel(false);
        let guard = Guard {
            protector: self.protector.clone(),
            cfg: Arc::new(cfg.clone()),
            trouble: Arc::new(trouble_tx),
        };
        // Batches written at once, each on its own connection: batches hold disjoint conversations.
        let mut writing: JoinSet<WriteResult> = JoinSet::new();
        // Batches waiting for a writer, and since when: at most `handoff`, then they are
        // protected. One; two while a write is slow, so that the reading goes on at its pace
        // (held up behind the full channels, the scan fell 30-40 keys behind its controls'
        // before the stall was called).
        let mut held: VecDeque<(ReadBatch, Exposed)> = VecDeque::new();
        let handoff = handoff(
            self.store
                .map_or(Duration::from_secs(3600), |s| s.operation_timeout()),
        );
        // Set when a batch waited `handoff` for a writer, cleared when a writer is free again.
        let mut stalled = false;
        let mut reading = true;
        while reading || !held.is_empty() || !writing.is_empty() {
            let in_trouble = *trouble.borrow_and_update();
            let full = writing.len() >= cfg.writers.max(1);
            self.health.set_stuck(in_trouble || stalled);
            // PostgreSQL cannot take batches now (for good, or while a retry is under way or the
            // writers are stuck, and no writer is free): keep the held batch's keys alive for a
            // later sweep, and read on.
            let refuse = out.error.is_some() || (full && (in_trouble || stalled));
            if (refuse || !full)
                && let Some((read, exposed)) = held.pop_front()
            {
                match refuse {
                    true => self.protect_batch(&mut out, &read.batch).await,
                    false => self.spawn(&mut writing, &guard, read, exposed),
                }
                continue;
            }
            let handoff_ends = held
                .front()
                .and_then(|h| h.1.since)
                .map_or_else(tokio::time::Instant::now, |since| since + handoff);
            let (shield_at, slow) = self.shield_at(handoff, held.iter().map(|h| &h.1));
            let room = if slow { 2 } else { 1 };
            tokio::select! {
                Some(done) = writing.join_next_with_id(), if !writing.is_empty() => {
                    stalled = false;
                    let id = done.as_ref().map_or_else(|e| e.id(), |d| d.0);
                    let flight = self.in_flight.remove(&id).unwrap_or_default();
                    self.done(&mut out, done, flight).await;
                }
                read = rx.recv(), if reading && held.len() < room => {
                    let Some(mut read) = read else {
                        reading = false;
                        continue;
                    };
                    out.counters.batches += 1;
                    let now = tokio::time::Instant::now();
                    let exposed = Exposed::new(std::mem::take(&mut read.expiring), now);
                    match self.store {
                        None => out.due_keys.extend(read.due_keys),
                        Some(_) if refuse => self.protect_batch(&mut out, &read.batch).await,
                        Some(_) if full => held.push_back((read, exposed)),
                        Some(_) => self.spawn(&mut writing, &guard, read, exposed),
                    }
                }
                () = tokio::time::sleep_until(handoff_ends), if !held.is_empty() => {
                    tracing::warn!(
                        waited_ms = handoff.as_millis() as u64,
                        "no PostgreSQL writer took a batch in time: protecting due keys instead of waiting, so the reading goes on"
                    );
                    if !stalled {
                        self.shield_in_flight().await;
                    }
                    stalled = true;
                }
                () = tokio::time::sleep_until(shield_at.unwrap_or(handoff_ends)), if shield_at.is_some() => {
                    self.shield_expiring(held.iter_mut().map(|h| &mut h.1)).await;
                }
                // A writer in trouble, or out of it: tell the reader, look at the batch held again.
                Ok(()) = trouble.changed(), if reading || !held.is_empty() => {}
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

    /// When to look again (when the oldest write becomes slow, or the keys of the batches
    /// waiting on a slow write must next be shielded; None: no write under way, or nothing left
    /// to shield), and whether a write is slow now.
    fn shield_at<'e>(
        &'e self,
        handoff: Duration,
        held: impl Iterator<Item = &'e Exposed>,
    ) -> (Option<tokio::time::Instant>, bool) {
        let oldest = self.in_flight.values().filter_map(|f| f.1.since).min();
        let slow = self.times.slow(handoff);
        let slow_from = oldest.map(|o| o + slow);
        let is_slow = slow_from.is_some_and(|t| t <= tokio::time::Instant::now());
        let exposed = self.in_flight.values().map(|f| &f.1).chain(held);
        let wake = shield::wake(oldest, slow, exposed);
        let at = [wake, slow_from.filter(|_| !is_slow)]
            .into_iter()
            .flatten()
            .min();
        (at, is_slow)
    }

    /// Raises the TTL of the keys of the batches waiting on a slow write that are about to run
    /// out (see [`shield`]): uncounted, as the write may still go through.
    async fn shield_expiring(&mut self, held: impl Iterator<Item = &mut Exposed>) {
        let now = tokio::time::Instant::now();
        let mut keys = Vec::new();
        for exposed in held {
            keys.extend(exposed.take_due(now));
        }
        for (_, exposed) in self.in_flight.values_mut() {
            keys.extend(exposed.take_due(now));
        }
        tracing::debug!(
            keys = keys.len(),
            "a write is slow: shielding the keys about to run out"
        );
        protect(&mut self.protector, &keys, self.cfg).await;
    }

    /// Counts what a write task did; on failure, switches the sweep to protecting and protects
    /// what it could not write (`keys`, all of the batch, if the task died).
    async fn done(
        &mut self,
        out: &mut Wrote,
        done: std::result::Result<(tokio::task::Id, WriteResult), tokio::task::JoinError>,
        (keys, exposed): (Vec<Vec<u8>>, Exposed),
    ) {
        let (written, failed) = match done {
            Ok((_, (written, failed))) => {
                if let (None, Some(since)) = (&failed, exposed.since) {
                    self.times.record(since.elapsed());
                }
                (written, failed)
            }
            Err(e) => {
                let p = protect(&mut self.protector, &keys, self.cfg).await;
                out.gone_due += count_protected(&mut out.counters, p, &keys);
                let e = Error::Other(format!("a batch writer failed: {e}"));
                (Written::default(), Some((e, Batch::default())))
            }
        };
        written.add_to(&mut out.counters);
        if let Some((e, batch)) = failed {
            self.failed(out, e);
            self.protect_batch(out, &batch).await;
        }
    }

    /// Writes `read` on a task of its own.
    fn spawn(
        &mut self,
        writing: &mut JoinSet<WriteResult>,
        guard: &Guard,
        read: ReadBatch,
        exposed: Exposed,
    ) {
        let Some(s) = self.store else { return };
        let (s, run_id, deadline) = (s.clone(), self.run_id, self.deadline);
        let keys = batch_keys(&read.batch);
        let guard = guard.clone();
        let task =
            writing.spawn(async move { write(&s, run_id, read.batch, deadline, guard).await });
        let exposed = exposed.handed(tokio::time::Instant::now());
        self.in_flight.insert(task.id(), (keys, exposed));
    }

    /// Raises the TTL of the keys of batches still being written by stuck writers, as a write
    /// does before its first retry: uncounted (the write may still go through; if it does not,
    /// its keys are protected again and counted then), so the keys of a batch in flight when
    /// PostgreSQL went silent do not run out while its write waits for `--operation-timeout`.
    async fn shield_in_flight(&mut self) {
        for (keys, exposed) in self.in_flight.values_mut() {
            protect(&mut self.protector, keys, self.cfg).await;
            exposed.clear();
        }
    }

    /// Raises the TTL of a batch's keys instead of writing them.
    async fn protect_batch(&mut self, out: &mut Wrote, batch: &Batch) {
        let keys = batch_keys(batch);
        let p = protect(&mut self.protector, &keys, self.cfg).await;
        out.gone_due += count_protected(&mut out.counters, p, &keys);
    }

    /// The first failure switches the sweep to protecting.
    fn failed(&self, out: &mut Wrote, e: Error) {
        if out.error.is_none() {
            tracing::error!(error = %e, "PostgreSQL cannot take the sweep's writes: protecting the due keys instead");
            self.health.set_down();
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

/// How long a batch read waits for a free writer before its keys are protected instead: well
/// under `--operation-timeout`, so the reading never stalls behind writers stuck on a silent
/// PostgreSQL until they time out (due keys not yet scanned would expire meanwhile), and above
/// a healthy batch write: a tenth of it, at least 100 ms. A batch PostgreSQL takes longer to
/// write than that makes the next one wait past the bound, so its keys are protected: a slow
/// PostgreSQL looks like a stuck one, and `--operation-timeout` is the knob.
fn handoff(operation: Duration) -> Duration {
    (operation / 10).max(Duration::from_millis(100))
}

/// What a write task gives back: what it wrote, and on failure the error with what it did not.
type WriteResult = (Written, Option<(Error, Batch)>);

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
    let show = per_key::show(Kind::Rejected);
    if let Some(t) = one.threads.into_iter().next() {
        if show {
            tracing::warn!(key = %t.latest_key, thread_id = %t.thread_id, checkpoint_ns = %t.checkpoint_ns, %reason,
                "LangGraph thread rejected: set aside in sweep_rejects, its keys left in Redis");
        }
        let raw = t.inspection();
        let size = raw.len() as u64;
        return RejectRecord::new(t.latest_key, reason, &raw, size);
    }
    let c = one
        .checkpoints
        .into_iter()
        .next()
        .expect("one checkpoint or thread");
    if show {
        tracing::warn!(key = %c.redis_key, %reason, "checkpoint rejected: set aside in sweep_rejects");
    }
    RejectRecord::new(
        c.redis_key,
        reason,
        c.document.as_bytes(),
        c.document.len() as u64,
    )
}

/// One batch, one transaction (bounded by `--operation-timeout` in the store), retried on
/// transient errors as [`Retries`] says; the batch's keys are protected before the first retry.
async fn write_once(
    s: &Store,
    run_id: Option<i64>,
    batch: &mut Batch,
    deadline: Option<Instant>,
    guard: &mut Guard,
) -> Result<BatchOutcome> {
    let mut retries = Retries::new(deadline);
    let mut protected = false;
    loop {
        let e = match s.write_batch(run_id, batch).await {
            Ok(out) => {
                if retries.retried() {
                    guard.trouble.send_replace(false);
                }
                return Ok(out);
            }
            Err(e) => e,
        };
        if e.is_transient() && !protected {
            guard.trouble.send_replace(true);
            protect(&mut guard.protector, &batch_keys(batch), &guard.cfg).await;
            protected = true;
        }
        let Some(pause) = retries.pause(&e, "writing a batch to PostgreSQL") else {
            return Err(e);
        };
        tokio::time::sleep(pause).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_waits_for_a_writer_a_tenth_of_the_operation_timeout() {
        let ms = Duration::from_millis;
        assert_eq!(handoff(Duration::from_secs(15)), ms(1500));
        assert_eq!(handoff(ms(500)), ms(100), "never under 100 ms");
    }
}
