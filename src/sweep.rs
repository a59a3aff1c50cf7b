//! One sweep: Redis -> selection -> decoding -> PostgreSQL -> report.
//!
//! A reader task scans Redis, selects the due keys by TTL and reads them; a decode task
//! ([`crate::decode`]) turns the values into batches and sends them through a bounded channel to the
//! writers, which upsert each batch in one transaction.
//! Reading the next batch overlaps with writing the last, and memory is bounded by the batch size
//! and the channel depth, not by the number of keys.
//!
//! When PostgreSQL fails for good (after retries), nothing read can be saved: the writer raises the
//! TTL of the keys it could not write and the reader switches to raising the TTL of every due key
//! it still finds (`--protect-ttl`), so an outage longer than the schedule gap loses nothing.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::cluster::{Nodes, Walk};
use crate::config::SweepConfig;
use crate::decode::{self, Decoder, Read, ReadBatch};
use crate::error::{Error, Result};
use crate::langgraph::read::{ThreadRead, read_threads};
use crate::layout::{Fetched, Layout};
use crate::report::{Counters, RunStatus, Summary};
use crate::retry::Backoff;
use crate::select::{Ttl, classify};
use crate::shutdown::Shutdown;
use crate::source::fetch_chunks;
use crate::store::{Batch, BatchOutcome, RejectRecord, RunHistory, Store};
use crate::tls::RedisTls;

/// Batches waiting for a writer: Redis reads run this far ahead of the PostgreSQL writes. One
/// is enough with two writers (PostgreSQL is the slower side); two took 10% more memory at 1M
/// keys and no less time.
const CHANNEL_DEPTH: usize = 1;

/// Chunks of values read from Redis waiting for the decode stage: the reader runs this far ahead
/// of decoding.
const READS_DEPTH: usize = 2;

/// Why the reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Every key was scanned.
    Done,
    Deadline,
    Signal(i32),
    /// The writer has gone; it holds the reason.
    WriterGone,
}

/// What a sweep that got going did: its summary, and the error that failed it, if one did (the
/// summary then says `failed` and still counts what was done).
pub struct Outcome {
    pub summary: Summary,
    pub error: Option<Error>,
    /// The runs recorded so far, for metrics (None on dry runs or when PostgreSQL is down).
    pub history: Option<RunHistory>,
}

/// Where a sweep reads and writes.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub redis_url: String,
    pub redis_tls: RedisTls,
    /// `redis_url` names nodes of a Redis Cluster (comma-separated seeds): sweep every primary.
    pub redis_cluster: bool,
    /// None for a dry run.
    pub database_url: Option<String>,
    pub connect_timeout: Duration,
}

/// Connects and runs one sweep. Always gives a summary: a sweep that could not start is `failed`,
/// with the error, and counts the due keys it protected when PostgreSQL was the reason.
pub async fn connect_and_run(cfg: &SweepConfig, ends: &Endpoints, shutdown: &Shutdown) -> Outcome {
    let started = Instant::now();
    let failed = |e: Error, c: Counters| Outcome::failed(cfg, e, c, started.elapsed());
    let source = match Nodes::connect(
        &ends.redis_url,
        &ends.redis_tls,
        ends.connect_timeout,
        ends.redis_cluster,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return failed(e, Counters::default()),
    };
    let store = match (&ends.database_url, cfg.dry_run) {
        (Some(url), false) => match Store::connect(url, ends.connect_timeout, cfg.writers).await {
            Ok(store) => Some(store),
            Err(e) => {
                let (e, c) = protect_after(e, cfg, source, shutdown).await;
                return failed(e, c);
            }
        },
        _ => None,
    };
    let mut outcome = run(cfg, source, store.as_ref(), shutdown).await;
    if let Some(s) = &store {
        // For metrics: a failure here leaves them out, it does not fail the sweep.
        outcome.history = s.run_history().await.ok();
    }
    outcome
}

impl Outcome {
    /// The outcome of a sweep that failed before it could read anything but what `counters` says.
    pub fn failed(cfg: &SweepConfig, error: Error, counters: Counters, took: Duration) -> Outcome {
        Outcome {
            summary: Summary::failed(cfg, &error, counters, took),
            error: Some(error),
            history: None,
        }
    }
}

/// Runs one sweep. With `cfg.dry_run`, `store` is not used (and may be None): nothing is written.
pub async fn run(
    cfg: &SweepConfig,
    source: Nodes,
    store: Option<&Store>,
    shutdown: &Shutdown,
) -> Outcome {
    let started = Instant::now();
    match try_run(cfg, source, store, shutdown, started).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome::failed(cfg, e, Counters::default(), started.elapsed()),
    }
}

async fn try_run(
    cfg: &SweepConfig,
    source: Nodes,
    store: Option<&Store>,
    shutdown: &Shutdown,
    started: Instant,
) -> Result<Outcome> {
    let deadline = cfg.deadline.map(|d| started + d);
    let store = if cfg.dry_run { None } else { store };
    if !cfg.dry_run && store.is_none() {
        return Err(Error::Usage(
            "a sweep that writes needs --database-url or DATABASE_URL (or use --dry-run)".into(),
        ));
    }
    let summary = |status, run_id, counters, due_keys| Summary {
        run_id,
        status,
        signal: shutdown.signal(),
        dry_run: cfg.dry_run,
        pattern: cfg.pattern.clone(),
        shard: cfg.shard.map(|s| s.to_string()),
        threshold_ms: cfg.threshold.as_millis() as u64,
        counters,
        duration_ms: started.elapsed().as_millis() as u64,
        error: None,
        due_keys,
    };

    let (mut lock, mut run_id) = (None, None);
    if let Some(s) = store {
        let setup = async {
            s.ensure_migrated().await?;
            if cfg.layout == Layout::LangGraph {
                s.ensure_langgraph().await?;
            }
            let lock = s.try_lock(&cfg.pattern, cfg.shard).await?;
            let id = s.start_run(cfg).await?;
            if lock.is_some() {
                let closed = s.close_abandoned_runs(&cfg.pattern, id).await?;
                if closed > 0 {
                    tracing::warn!(
                        runs = closed,
                        "earlier runs ended without recording it (killed?): marked failed"
                    );
                }
            }
            Ok::<_, Error>((lock, id))
        };
        match setup.await {
            Ok((l, id)) => (lock, run_id) = (l, Some(id)),
            Err(e) => {
                let (e, c) = protect_after(e, cfg, source, shutdown).await;
                return Ok(Outcome::failed(cfg, e, c, started.elapsed()));
            }
        }
        if lock.is_none() {
            let id = run_id.expect("recorded");
            tracing::info!(
                run_id = id,
                "another sweep of this pattern is running: skipping"
            );
            let c = Counters::default();
            s.finish_run(id, RunStatus::Skipped, &c, started.elapsed(), None)
                .await?;
            return Ok(Outcome {
                summary: summary(RunStatus::Skipped, run_id, c, None),
                error: None,
                history: None,
            });
        }
    }

    let store_down = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::channel::<ReadBatch>(CHANNEL_DEPTH);
    let mut source = source;
    source.set_deadline(deadline);
    source.set_pacing(cfg.pacing());
    let mut protector = source.clone();
    let (reads_tx, reads_rx) = mpsc::channel::<Vec<Read>>(READS_DEPTH);
    let reader = Reader::new(cfg.clone(), shutdown.clone(), deadline, store_down.clone());
    let reader = tokio::spawn(reader.run(source, reads_tx));
    let decoder = tokio::spawn(Decoder::new(cfg.clone()).run(reads_rx, tx));

    let mut counters = Counters::default();
    let mut due_keys = Vec::new();
    let mut write_error = None;
    // Batches written at once, each on its own connection: batches hold disjoint conversations.
    let mut writing: JoinSet<(Written, Option<(Error, Batch)>)> = JoinSet::new();
    // The keys of each batch being written, to protect them if its task dies.
    let mut in_flight: HashMap<tokio::task::Id, Vec<Vec<u8>>> = HashMap::new();
    let mut reading = true;
    while reading || !writing.is_empty() {
        tokio::select! {
            Some(done) = writing.join_next_with_id(), if !writing.is_empty() => {
                let (written, failed) = match done {
                    Ok((id, (written, failed))) => {
                        in_flight.remove(&id);
                        (written, failed)
                    }
                    Err(e) => {
                        let keys = in_flight.remove(&e.id()).unwrap_or_default();
                        let batch = Batch::default();
                        counters.protected += protect(&mut protector, &keys, cfg).await;
                        (Written::default(), Some((Error::Other(format!("a batch writer failed: {e}")), batch)))
                    }
                };
                counters.persisted += written.persisted;
                counters.unchanged += written.unchanged;
                counters.messages_added += written.messages_added;
                counters.pg_statements += written.statements;
                counters.rejected += written.refused;
                if let Some((e, batch)) = failed {
                    if write_error.is_none() {
                        tracing::error!(error = %e, "PostgreSQL cannot take the sweep's writes: protecting the due keys instead");
                        store_down.store(true, Ordering::SeqCst);
                        write_error = Some(e);
                    }
                    counters.protected += protect(&mut protector, &batch_keys(&batch), cfg).await;
                }
            }
            read = rx.recv(), if reading && writing.len() < cfg.writers.max(1) => {
                let Some(read) = read else {
                    reading = false;
                    continue;
                };
                counters.batches += 1;
                match store {
                    None => due_keys.extend(read.due_keys),
                    // PostgreSQL could not take the batches before: keep these keys alive for a
                    // later sweep.
                    Some(_) if write_error.is_some() => {
                        counters.protected += protect(&mut protector, &batch_keys(&read.batch), cfg).await;
                    }
                    Some(s) => {
                        let s = s.clone();
                        let keys = batch_keys(&read.batch);
                        let task = writing.spawn(async move { write(&s, run_id, read.batch, deadline).await });
                        in_flight.insert(task.id(), keys);
                    }
                }
            }
        }
    }
    let (read_counters, stop, read_error) = reader
        .await
        .map_err(|e| Error::Other(format!("the Redis reader task failed: {e}")))?;
    counters.merge_read(&read_counters);
    let decoded = decoder
        .await
        .map_err(|e| Error::Other(format!("the decode task failed: {e}")))?;
    counters.merge_read(&decoded);

    // A write error comes first: it is why the reader switched to protecting.
    let error = write_error.or(read_error);
    let status = match (&error, stop) {
        (Some(_), _) => RunStatus::Failed,
        (None, Stop::Signal(_)) => RunStatus::Interrupted,
        (None, Stop::Deadline) => RunStatus::Partial,
        (None, Stop::Done | Stop::WriterGone) => RunStatus::Ok,
    };
    let mut error = error;
    if let (Some(s), Some(id)) = (store, run_id) {
        let message = error.as_ref().map(|e| e.to_string());
        let recorded = s
            .finish_run(id, status, &counters, started.elapsed(), message.as_deref())
            .await;
        if let Err(e) = recorded {
            // The sweep's own error says more; a failure to record it is only logged.
            tracing::warn!(error = %e, run_id = id, "could not record the end of the run");
            error.get_or_insert(e);
        }
    }
    if let Some(l) = lock {
        l.release().await;
    }
    if error.is_some() && counters.protected > 0 {
        tracing::warn!(
            protected = counters.protected,
            protect_ttl = %humantime::format_duration(cfg.protect_ttl),
            "due keys protected until the next sweep"
        );
    }
    let status = if error.is_some() {
        RunStatus::Failed
    } else {
        status
    };
    let mut summary = summary(status, run_id, counters, cfg.dry_run.then_some(due_keys));
    summary.error = error.as_ref().map(|e| e.to_string());
    Ok(Outcome {
        summary,
        error,
        history: None,
    })
}

/// Longest a batch write may take before it is abandoned (and retried): the server's own
/// statement_timeout (see store) should fire first.
const WRITE_TIMEOUT: Duration = Duration::from_secs(150);

/// What `write` did with a batch.
#[derive(Debug, Default)]
struct Written {
    persisted: u64,
    unchanged: u64,
    messages_added: u64,
    statements: u64,
    /// Checkpoints (or LangGraph threads) PostgreSQL refused one by one, recorded as rejects.
    refused: u64,
}

/// Writes a batch with retries. When PostgreSQL refuses the batch's data for good (a value it
/// cannot store), its checkpoints (or LangGraph threads: a thread is written whole or not at all)
/// are written one by one and those it refuses become rejects, so one bad row never blocks the
/// rest. Returns what was written, and on failure the error with what was not (for protection).
async fn write(
    s: &Store,
    run_id: Option<i64>,
    batch: Batch,
    deadline: Option<Instant>,
) -> (Written, Option<(Error, Batch)>) {
    let mut w = Written::default();
    let add = |w: &mut Written, out: BatchOutcome| {
        w.persisted += out.persisted;
        w.unchanged += out.unchanged;
        w.messages_added += out.messages_added;
        w.statements += out.statements;
    };
    match write_once(s, run_id, &batch, deadline).await {
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
        Err(e) => return (w, Some((e, batch))),
    }
    let Batch {
        checkpoints,
        threads,
        mut rejects,
    } = batch;
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
    while let Some(one) = pending.pop_front() {
        match write_once(s, run_id, &one, deadline).await {
            Ok(out) => add(&mut w, out),
            Err(e) if e.is_data_error() => {
                rejects.push(refused(one, &format!("postgres_refused: {e}")));
                w.refused += 1;
            }
            Err(e) => {
                // Everything not yet written goes back, for protection; the rows refused so far
                // go with it as rejects.
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
    let rest = Batch {
        rejects,
        ..Batch::default()
    };
    match write_once(s, run_id, &rest, deadline).await {
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

/// One batch, one transaction, retried on transient errors; a write that hangs is abandoned.
async fn write_once(
    s: &Store,
    run_id: Option<i64>,
    batch: &Batch,
    deadline: Option<Instant>,
) -> Result<BatchOutcome> {
    Backoff::default()
        .retry("writing a batch to PostgreSQL", deadline, || async {
            match tokio::time::timeout(WRITE_TIMEOUT, s.write_batch(run_id, batch)).await {
                Ok(r) => r,
                Err(_) => Err(Error::Postgres {
                    context: "write batch",
                    source: sqlx::Error::Io(std::io::ErrorKind::TimedOut.into()),
                }),
            }
        })
        .await
}

fn batch_keys(batch: &Batch) -> Vec<Vec<u8>> {
    let threads = batch.threads.iter().flat_map(|t| t.keys.iter().cloned());
    batch
        .checkpoints
        .iter()
        .map(|c| c.redis_key.clone().into_bytes())
        .chain(threads)
        .collect()
}

/// PostgreSQL failed before the sweep could start: scan anyway and raise the TTL of every due key
/// to `--protect-ttl`, so none expires before a sweep can save it (nothing else changes). Returns
/// the error, for the caller to report, and what the scan counted.
async fn protect_after(
    error: Error,
    cfg: &SweepConfig,
    source: Nodes,
    shutdown: &Shutdown,
) -> (Error, Counters) {
    if !matches!(error, Error::Postgres { .. } | Error::NotMigrated { .. })
        || cfg.protect_ttl.is_zero()
        || cfg.dry_run
    {
        return (error, Counters::default());
    }
    match protect_only(cfg, source, shutdown).await {
        Ok(c) => {
            tracing::warn!(
                due = c.due,
                protected = c.protected,
                protect_ttl = %humantime::format_duration(cfg.protect_ttl),
                "PostgreSQL cannot take the sweep: due keys protected until the next sweep"
            );
            (error, c)
        }
        Err(e) => {
            tracing::error!(error = %e, "PostgreSQL cannot take the sweep and the due keys could not be protected");
            (error, Counters::default())
        }
    }
}

/// Scans and raises the TTL of every due key to `--protect-ttl`; reads no value.
async fn protect_only(cfg: &SweepConfig, source: Nodes, shutdown: &Shutdown) -> Result<Counters> {
    let deadline = cfg.deadline.map(|d| Instant::now() + d);
    let store_down = Arc::new(AtomicBool::new(true));
    let (tx, _rx) = mpsc::channel::<Vec<Read>>(1);
    let mut source = source;
    source.set_deadline(deadline);
    source.set_pacing(cfg.pacing());
    let reader = Reader::new(cfg.clone(), shutdown.clone(), deadline, store_down);
    let (counters, _, error) = reader.run(source, tx).await;
    match error {
        Some(e) => Err(e),
        None => Ok(counters),
    }
}

/// Every key of the LangGraph threads of due `checkpoint_latest:` keys (a key whose thread
/// cannot be read stands for itself), for protection.
async fn thread_keys(
    source: &mut Nodes,
    latest: Vec<Vec<u8>>,
    prefix: &str,
) -> Result<Vec<Vec<u8>>> {
    let read = read_threads(source, &latest, prefix).await?;
    Ok(latest
        .into_iter()
        .zip(read)
        .flat_map(|(key, r)| match r {
            ThreadRead::Thread(t) => t.keys,
            _ => vec![key],
        })
        .collect())
}

/// Raises the TTL of `keys` to `--protect-ttl`; returns how many were raised. A failure here is
/// logged: the sweep is already failing for a better reason.
async fn protect(source: &mut Nodes, keys: &[Vec<u8>], cfg: &SweepConfig) -> u64 {
    if cfg.protect_ttl.is_zero() || keys.is_empty() {
        return 0;
    }
    match source.protect(keys, cfg.protect_ttl).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, keys = keys.len(), "could not protect due keys");
            0
        }
    }
}

impl Counters {
    fn merge_read(&mut self, r: &Counters) {
        self.scanned += r.scanned;
        self.due += r.due;
        self.not_due += r.not_due;
        self.no_ttl += r.no_ttl;
        self.expired_before_read += r.expired_before_read;
        self.rejected += r.rejected;
        self.protected += r.protected;
        self.redis_round_trips += r.redis_round_trips;
        self.redis_yield_ms += r.redis_yield_ms;
    }
}

struct Reader {
    cfg: SweepConfig,
    shutdown: Shutdown,
    deadline: Option<Instant>,
    /// Set when PostgreSQL has failed: due keys are protected, not read.
    store_down: Arc<AtomicBool>,
    counters: Counters,
    /// Hashes of due keys already handled: SCAN may return a key twice.
    seen: HashSet<u64>,
    hasher: RandomState,
    /// Due keys selected so far, for the progress line.
    selected: u64,
    /// Round trips of the handles that SCAN ahead.
    scan_round_trips: u64,
}

impl Reader {
    fn new(
        cfg: SweepConfig,
        shutdown: Shutdown,
        deadline: Option<Instant>,
        store_down: Arc<AtomicBool>,
    ) -> Reader {
        Reader {
            cfg,
            shutdown,
            deadline,
            store_down,
            counters: Counters::default(),
            seen: HashSet::new(),
            hasher: RandomState::new(),
            selected: 0,
            scan_round_trips: 0,
        }
    }

    /// Scans to the end (or a stop); returns the counters, why it stopped, and the error that
    /// stopped it early, if one did.
    async fn run(
        mut self,
        mut source: Nodes,
        tx: mpsc::Sender<Vec<Read>>,
    ) -> (Counters, Stop, Option<Error>) {
        // What was read before Redis failed is still written: the decode stage sends its last
        // batch when this sender is dropped.
        let result = self.scan(&mut source, &tx).await;
        self.cfg.progress.finish();
        self.counters.redis_round_trips = source.round_trips() + self.scan_round_trips;
        self.counters.redis_yield_ms = source.yielded().as_millis() as u64;
        match result {
            Ok(stop) => (self.counters, stop, None),
            Err(e) => (self.counters, Stop::Done, Some(e)),
        }
    }

    fn should_stop(&self) -> Option<Stop> {
        if let Some(sig) = self.shutdown.signal() {
            return Some(Stop::Signal(sig));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(
                "deadline reached: stopping the scan; the next sweep goes on from the start"
            );
            return Some(Stop::Deadline);
        }
        None
    }

    /// Reads every primary in turn (one node, or each primary of a cluster; for a shard of a
    /// cluster, the primaries and slots it owns).
    async fn scan(&mut self, source: &mut Nodes, tx: &mpsc::Sender<Vec<Read>>) -> Result<Stop> {
        for walk in source.walks(self.cfg.shard).await? {
            if let Some(stop) = self.scan_node(source, walk, tx).await? {
                return Ok(stop);
            }
        }
        Ok(Stop::Done)
    }

    /// Reads one primary to the end; Some when the sweep must stop early. The next page is
    /// fetched (SCAN, or slot reads) on a second handle while this page is read, so its round
    /// trip is off the critical path (not under a throttle: there, being gentle beats being fast).
    async fn scan_node(
        &mut self,
        source: &mut Nodes,
        walk: Walk,
        tx: &mpsc::Sender<Vec<Read>>,
    ) -> Result<Option<Stop>> {
        let mut scanner = source.clone();
        let before = scanner.round_trips();
        let result = self.scan_pages(source, &mut scanner, walk, tx).await;
        self.scan_round_trips += scanner.round_trips() - before;
        result
    }

    async fn scan_pages(
        &mut self,
        source: &mut Nodes,
        scanner: &mut Nodes,
        mut walk: Walk,
        tx: &mpsc::Sender<Vec<Read>>,
    ) -> Result<Option<Stop>> {
        let (pattern, count) = (self.cfg.pattern.clone(), self.cfg.scan_count);
        let mut page = scanner.next_page(&mut walk, &pattern, count).await?;
        loop {
            if let Some(stop) = self.should_stop() {
                return Ok(Some(stop));
            }
            let Some(keys) = page else {
                return Ok(None);
            };
            let (read, next) = if source.throttled() {
                let read = self.page(source, keys, tx).await;
                if !matches!(read, Ok(None)) {
                    return read;
                }
                (read, scanner.next_page(&mut walk, &pattern, count).await)
            } else {
                tokio::join!(
                    self.page(source, keys, tx),
                    scanner.next_page(&mut walk, &pattern, count)
                )
            };
            if let Some(stop) = read? {
                return Ok(Some(stop));
            }
            page = next?;
        }
    }

    /// Selects, reads and batches one page of keys; Some when the sweep must stop early.
    async fn page(
        &mut self,
        source: &mut Nodes,
        mut keys: Vec<Vec<u8>>,
        tx: &mpsc::Sender<Vec<Read>>,
    ) -> Result<Option<Stop>> {
        // A shard counts and reads only its own keys: N shards add up to one whole sweep. (On a
        // cluster its walks read mostly its own slots already; a SCANned primary may still hold
        // keys of a slot it is importing.)
        if let Some(shard) = self.cfg.shard {
            keys.retain(|k| shard.owns(k));
        }
        self.counters.scanned += keys.len() as u64;
        let due = self.select(source, keys).await?;
        self.selected += due.len() as u64;
        self.cfg
            .progress
            .update(self.counters.scanned, self.selected);
        if self.store_down.load(Ordering::SeqCst) {
            if self.cfg.protect_ttl.is_zero() {
                return Ok(Some(Stop::WriterGone));
            }
            let mut keys: Vec<Vec<u8>> = due.into_iter().map(|(k, _)| k).collect();
            self.counters.due += keys.len() as u64;
            if self.cfg.layout == Layout::LangGraph {
                // A thread lives in all its keys: each is raised, not only the latest.
                keys = thread_keys(source, keys, &self.cfg.prefix).await?;
            }
            self.counters.protected += source.protect(&keys, self.cfg.protect_ttl).await?;
        } else if !self.read_due(source, due, tx).await? {
            return Ok(Some(Stop::WriterGone));
        }
        Ok(None)
    }

    /// PTTLs of a page; returns the due keys (once each) with their TTL left.
    async fn select(
        &mut self,
        source: &mut Nodes,
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
                Ttl::Gone => decode::expired(&mut self.counters, &key),
            }
        }
        Ok(due)
    }

    /// Reads the due keys' values and hands them to the decode stage, a run at a time (at most
    /// `batch_size` keys at once; values the one-command read of a `json` key cannot settle are
    /// probed, then fetched in runs of bounded bytes). False when the decode stage has stopped
    /// (the writers have gone).
    async fn read_due(
        &mut self,
        source: &mut Nodes,
        due: Vec<(Vec<u8>, u64)>,
        tx: &mpsc::Sender<Vec<Read>>,
    ) -> Result<bool> {
        let layout = self.cfg.layout;
        let max = self.cfg.max_value_bytes;
        if layout == Layout::LangGraph {
            return self.read_threads(source, due, tx).await;
        }
        for chunk in due.chunks(self.cfg.batch_size) {
            let keys: Vec<Vec<u8>> = chunk.iter().map(|(k, _)| k.clone()).collect();
            // Small values are read in one command each; the others are probed, then fetched in
            // runs of bounded bytes.
            let inline = match layout.reads_inline() {
                true => source.read_inline(&keys, max).await?,
                false => vec![None; keys.len()],
            };
            let mut rest = Vec::new();
            let mut read = Vec::new();
            for (i, f) in inline.into_iter().enumerate() {
                match f {
                    Some(fetched) => read.push(value(&chunk[i], fetched)),
                    None => rest.push(i),
                }
            }
            if !read.is_empty() && tx.send(read).await.is_err() {
                return Ok(false);
            }
            if rest.is_empty() {
                continue;
            }
            let rest_keys: Vec<Vec<u8>> = rest.iter().map(|&i| keys[i].clone()).collect();
            let probes = source.probe(layout, &rest_keys, max).await?;
            for run in fetch_chunks(&probes, source.max_pipeline()) {
                let fetched = source
                    .fetch(&rest_keys[run.clone()], &probes[run.clone()])
                    .await?;
                let read = rest[run]
                    .iter()
                    .zip(fetched)
                    .map(|(&i, f)| value(&chunk[i], f));
                if tx.send(read.collect()).await.is_err() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// `--format langgraph`: reads the threads of due `checkpoint_latest:` keys whole. False when
    /// the decode stage has stopped.
    async fn read_threads(
        &mut self,
        source: &mut Nodes,
        due: Vec<(Vec<u8>, u64)>,
        tx: &mpsc::Sender<Vec<Read>>,
    ) -> Result<bool> {
        for chunk in due.chunks(self.cfg.batch_size) {
            let keys: Vec<Vec<u8>> = chunk.iter().map(|(k, _)| k.clone()).collect();
            let threads = read_threads(source, &keys, &self.cfg.prefix).await?;
            let read = chunk
                .iter()
                .zip(threads)
                .map(|((key, ttl_ms), read)| Read::Thread {
                    key: key.clone(),
                    ttl_ms: *ttl_ms,
                    read,
                });
            if tx.send(read.collect()).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn value((key, ttl_ms): &(Vec<u8>, u64), fetched: Fetched) -> Read {
    Read::Value {
        key: key.clone(),
        ttl_ms: *ttl_ms,
        fetched,
    }
}
