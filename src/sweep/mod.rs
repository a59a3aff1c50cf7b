//! One sweep: Redis -> selection -> decoding -> PostgreSQL -> report, as stages.
//!
//! - [`read`]: a reader task scans Redis, selects the due keys by TTL and reads them with the
//!   layout's strategy ([`crate::redis::read::DueReader`]);
//! - [`decode`]: a decode task turns what was read into batches of checkpoints and rejects;
//! - [`write`](mod@write): the writers upsert each batch in one transaction, `--writers` at once;
//! - [`protect`]: when PostgreSQL cannot take due keys, their TTL is raised instead;
//! - [`shield`]: while a write is slow, the keys it holds up are raised just before they run out;
//! - [`record`]: the run's record in `sweep_runs` and its single-run lock.
//!
//! Stages are joined by bounded channels: reading the next batch overlaps with writing the last,
//! and memory is bounded by the batch size and the channel depth, not by the number of keys.
//! When PostgreSQL fails for good (after retries), the writer raises the TTL of the keys it could
//! not write and the reader switches to raising the TTL of every due key it still finds
//! (`--protect-ttl`), so an outage longer than the schedule gap loses nothing. The reader never
//! waits on a stuck writer: while writes are retried, or no writer takes a batch in time, it
//! protects instead of reading ([`health`]), at the pace of a healthy run, so a PostgreSQL
//! failure mid-run costs no more conversations than a healthy run loses.

pub mod decode;
pub mod health;
pub mod protect;
pub mod read;
pub mod record;
pub mod shield;
pub mod write;

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::{SweepConfig, Timeouts};
use crate::error::{Error, Result};
use crate::logs::per_key;
use crate::redis::Nodes;
use crate::redis::read::Read;
use crate::redis::tls::RedisTls;
use crate::run::{Counters, RunHistory, RunStatus, Summary};
use crate::shutdown::Shutdown;
use crate::store::Store;
use decode::{Decoder, ReadBatch};
use read::{Reader, Stop};
use record::Begun;
use write::Writers;

/// Batches waiting for a writer: Redis reads run this far ahead of the PostgreSQL writes. One
/// is enough with two writers (PostgreSQL is the slower side); two took 10% more memory at 1M
/// keys and no less time.
const CHANNEL_DEPTH: usize = 1;

/// Chunks of values read from Redis waiting for the decode stage: the reader runs this far ahead
/// of decoding.
const READS_DEPTH: usize = 2;

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
    /// Where sweeper's tables are in that database.
    pub schema: crate::store::Schema,
    pub timeouts: Timeouts,
}

/// Connects and runs one sweep. Always gives a summary: a sweep that could not start is `failed`,
/// with the error, and counts the due keys it protected when PostgreSQL was the reason.
pub async fn connect_and_run(cfg: &SweepConfig, ends: &Endpoints, shutdown: &Shutdown) -> Outcome {
    per_key::start_run();
    let outcome = connect_then_run(cfg, ends, shutdown).await;
    per_key::log_rest();
    outcome
}

async fn connect_then_run(cfg: &SweepConfig, ends: &Endpoints, shutdown: &Shutdown) -> Outcome {
    let started = Instant::now();
    let failed = |e: Error, c: Counters| Outcome::failed(cfg, e, c, started.elapsed());
    let source = match Nodes::connect(
        &ends.redis_url,
        &ends.redis_tls,
        ends.timeouts,
        ends.redis_cluster,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return failed(e, Counters::default()),
    };
    let store = match (&ends.database_url, cfg.dry_run) {
        (Some(url), false) => {
            match Store::connect(url, &ends.schema, ends.timeouts, cfg.writers).await {
                Ok(store) => Some(store),
                Err(e) => {
                    let (e, c) = protect::protect_after(e, cfg, source, shutdown).await;
                    return failed(e, c);
                }
            }
        }
        _ => None,
    };
    let mut outcome = run(cfg, source, store.as_ref(), shutdown).await;
    let store_failed = matches!(
        outcome.error,
        Some(Error::Postgres { .. } | Error::NotMigrated { .. })
    );
    if let (Some(s), false) = (&store, store_failed) {
        // For metrics: a failure here leaves them out, it does not fail the sweep. Not asked
        // of a PostgreSQL that just failed the run: that would wait on it once more.
        outcome.history = s.run_history(&cfg.pattern, cfg.shard).await.ok();
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
    let summary = |status, run_id, counters| Summary {
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
        due_keys: None,
        due_keys_omitted: None,
    };
    let (lock, run_id) = match store {
        None => (None, None),
        Some(s) => match record::begin(s, cfg, started).await {
            Ok(Begun::Running { lock, run_id }) => (Some(lock), Some(run_id)),
            Ok(Begun::Skipped { run_id }) => {
                let c = Counters::default();
                s.finish_run(run_id, RunStatus::Skipped, &c, started.elapsed(), None)
                    .await?;
                return Ok(Outcome {
                    summary: summary(RunStatus::Skipped, Some(run_id), c),
                    error: None,
                    history: None,
                });
            }
            Err(e) => {
                let (e, c) = protect::protect_after(e, cfg, source, shutdown).await;
                return Ok(Outcome::failed(cfg, e, c, started.elapsed()));
            }
        },
    };

    let evicted = record::evictions(&source, store, run_id, &cfg.pattern).await;
    record::partitions(store).await;
    let (mut counters, stop, error, due_keys) =
        stages(cfg, source, store, run_id, shutdown, deadline).await?;
    counters.evicted_keys = evicted;
    let status = match (&error, stop) {
        (Some(_), _) => RunStatus::Failed,
        (None, Stop::Signal(_)) => RunStatus::Interrupted,
        (None, Stop::Deadline) => RunStatus::Partial,
        (None, Stop::Done | Stop::WriterGone) => RunStatus::Ok,
    };
    let end = record::End {
        status,
        started,
        deadline,
    };
    let error = record::finish(store, run_id, lock, end, &counters, error).await;
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
    let mut summary = summary(status, run_id, counters);
    if cfg.dry_run {
        let (keys, omitted) = due_keys.into_sorted();
        summary.due_keys = Some(keys);
        summary.due_keys_omitted = Some(omitted);
    }
    summary.error = error.as_ref().map(|e| e.to_string());
    Ok(Outcome {
        summary,
        error,
        history: None,
    })
}

/// The writers' handle for protecting batches PostgreSQL cannot take: not held to the pace. It
/// protects at most the batches in flight when writing stalls (already read: a few), and held to
/// the pace those raises put the scan a second or two behind a healthy run's, keys expiring
/// unread meanwhile (100 more of 3000 lost beside the controls in tests/partitions.rs). The
/// reader's own raises, once it protects instead of reading, keep the pace.
fn protector(source: &Nodes) -> Nodes {
    let mut protector = source.clone();
    protector.unpaced();
    protector
}

/// Runs the stages, read -> decode -> write (or protect), to the end; returns what they counted,
/// why the reading stopped, the error that failed the sweep (a write error first: it is why the
/// reader switched to protecting) and, on dry runs, the due keys.
async fn stages(
    cfg: &SweepConfig,
    mut source: Nodes,
    store: Option<&Store>,
    run_id: Option<i64>,
    shutdown: &Shutdown,
    deadline: Option<Instant>,
) -> Result<(Counters, Stop, Option<Error>, crate::run::DueList)> {
    let health = health::Health::default();
    let (tx, rx) = mpsc::channel::<ReadBatch>(CHANNEL_DEPTH);
    source.set_deadline(deadline);
    source.set_pacing(cfg.pacing());
    let writers = Writers {
        cfg,
        store,
        run_id,
        deadline,
        protector: protector(&source),
        health: health.clone(),
        in_flight: Default::default(),
        times: Default::default(),
    };
    let (reads_tx, reads_rx) = mpsc::channel::<Vec<Read>>(READS_DEPTH);
    let reader = Reader::new(cfg.clone(), shutdown.clone(), deadline, health);
    let reader = tokio::spawn(reader.run(source, reads_tx));
    let decoder = tokio::spawn(Decoder::new(cfg.clone()).run(reads_rx, tx));
    let wrote = writers.drain(rx).await;

    let mut counters = wrote.counters;
    let (read_counters, stop, read_error) = reader
        .await
        .map_err(|e| Error::Other(format!("the Redis reader task failed: {e}")))?;
    counters.merge_read(&read_counters);
    let decoded = decoder
        .await
        .map_err(|e| Error::Other(format!("the decode task failed: {e}")))?;
    counters.merge_read(&decoded);
    counters.due = counters.due.saturating_sub(wrote.gone_due);
    Ok((counters, stop, wrote.error.or(read_error), wrote.due_keys))
}
