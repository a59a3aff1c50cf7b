//! The record stage: a run's row in `sweep_runs` (started, then finished with its counters) and
//! the single-run lock that makes a second sweep of the same pattern skip.

use std::time::Instant;

use crate::config::SweepConfig;
use crate::error::{Error, Result};
use crate::redis::Nodes;
use crate::redis::layout::Layout;
use crate::retry::{self, Retries};
use crate::run::{Counters, RunStatus};
use crate::store::{RunLock, Store};

/// How long the end of a run is retried before it is left for the next run to close.
const RECORD_END: std::time::Duration = std::time::Duration::from_secs(10);

/// How a sweep began.
pub(super) enum Begun {
    /// It holds the lock and its run is recorded.
    Running { lock: RunLock, run_id: i64 },
    /// Another sweep of this pattern holds the lock: this one is recorded, and does nothing.
    Skipped { run_id: i64 },
}

/// Checks the schema, takes the lock, records the start, and marks failed the runs a killed
/// sweep left `running`. Each step is retried on its own ([`retry::again`]): an endpoint still
/// on a standby (a failover under way) until half the run's `--deadline` has passed, as a fresh
/// connection may find it promoted, and a lease taken is kept while the later steps are
/// retried. Half, because nothing is protected before the scan: the other half is for the scan
/// that protects the due keys when the endpoint never takes writes (or for the sweep, when it
/// does). A due key that expires during the wait was due at the previous run, a schedule gap
/// earlier (a gap plus `--deadline` stays under `--threshold`), which saved or protected it.
pub(super) async fn begin(s: &Store, cfg: &SweepConfig, started: Instant) -> Result<Begun> {
    let deadline = cfg.deadline.map(|d| started + d / 2);
    retry::again("checking the schema", deadline, || s.ensure_migrated()).await?;
    if cfg.layout == Layout::LangGraph {
        retry::again("checking LangGraph's tables", deadline, || {
            s.ensure_langgraph()
        })
        .await?;
    }
    let lock = retry::again("taking the sweep lock", deadline, || {
        s.try_lock(&cfg.pattern, cfg.shard)
    })
    .await?;
    let started = async {
        let run_id =
            retry::again("recording the run's start", deadline, || s.start_run(cfg)).await?;
        if lock.is_none() {
            return Ok((run_id, 0));
        }
        let closed = retry::again("closing abandoned runs", deadline, || {
            s.close_abandoned_runs(&cfg.pattern, run_id)
        })
        .await?;
        Ok::<_, Error>((run_id, closed))
    };
    let (run_id, closed) = match started.await {
        Ok(done) => done,
        Err(e) => {
            if let Some(l) = lock {
                l.abandon();
            }
            return Err(e);
        }
    };
    let Some(lock) = lock else {
        tracing::info!(run_id, "another sweep of this pattern is running: skipping");
        return Ok(Begun::Skipped { run_id });
    };
    if closed > 0 {
        tracing::warn!(
            runs = closed,
            "earlier runs ended without recording it (killed?): marked failed"
        );
    }
    Ok(Begun::Running { lock, run_id })
}

/// How a run ends: what `finish` records.
pub(super) struct End {
    pub status: RunStatus,
    pub started: Instant,
    /// The run's deadline: a failover is retried until then, or [`RECORD_END`] if later.
    pub deadline: Option<Instant>,
}

/// Records the end of the run and releases the lock; returns the sweep's error, or the failure
/// to record it when the sweep had none (the sweep's own error says more: a failure to record
/// it is then only logged).
pub(super) async fn finish(
    store: Option<&Store>,
    run_id: Option<i64>,
    lock: Option<RunLock>,
    end: End,
    counters: &Counters,
    mut error: Option<Error>,
) -> Option<Error> {
    let End {
        status,
        started,
        deadline,
    } = end;
    if let (Some(s), Some(id)) = (store, run_id) {
        let message = error.as_ref().map(|e| e.to_string());
        // Retried a little: a run that failed because PostgreSQL went away records its end
        // once it is back, rather than staying `running` until the next run.
        let took = started.elapsed();
        let record = || s.finish_run(id, status, counters, took, message.as_deref());
        // After PostgreSQL's silence failed the run, one try: the partition has been called
        // already, and waiting on it again would push the exit past its bound.
        let silent = matches!(&error, Some(e @ Error::Postgres { .. }) if e.is_silence());
        let recorded = match silent {
            true => record().await,
            false => {
                let until = Instant::now() + RECORD_END;
                let retries = Retries::riding_out(deadline.map(|d| d.max(until)), RECORD_END);
                retry::again_with(retries, "recording the end of the run", record).await
            }
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, run_id = id, "could not record the end of the run");
            error.get_or_insert(e);
            // PostgreSQL cannot be reached: releasing the lock would wait for it once more.
            if let Some(l) = lock {
                l.abandon();
            }
            return error;
        }
    }
    if let Some(l) = lock {
        l.release().await;
    }
    error
}

/// The keys Redis evicted since the previous run (recorded with run `run_id`), warning when the
/// policy may have evicted conversation keys: they were lost before their TTL ran out, and with
/// `volatile-ttl` the due ones go first. 0 when Redis will not say (INFO refused).
pub(super) async fn evictions(
    source: &Nodes,
    store: Option<&Store>,
    run_id: Option<i64>,
    pattern: &str,
) -> u64 {
    let Some(e) = source.evictions().await else {
        return 0;
    };
    let since = match (store, run_id) {
        (Some(s), Some(id)) => match s.evictions_since(id, pattern, e.evicted).await {
            Ok(n) => n,
            Err(err) => {
                tracing::warn!(error = %err, "could not record Redis's evictions");
                e.evicted
            }
        },
        _ => e.evicted,
    };
    if since > 0 && e.can_evict() {
        tracing::warn!(
            evicted = since,
            maxmemory_policy = %e.policy,
            "Redis evicted keys to stay under maxmemory since the last run: conversations may have been lost before their TTL ran out (volatile-ttl evicts the due ones first); raise maxmemory, or set maxmemory-policy noeviction"
        );
    }
    since
}

/// The partitions of `message_rows` the ids this run draws need, made before it writes. A
/// failure is a warning, not a failed sweep: the DEFAULT partition takes rows outside every
/// partition, and the next run (or `migrate`) makes the partition and moves them in.
pub(super) async fn partitions(store: Option<&Store>) {
    let Some(s) = store else { return };
    match s.extend_partitions().await {
        Ok(0) => {}
        Ok(-1) => tracing::warn!(
            "could not make the next message_rows partition within 200 ms (a lock held): the DEFAULT partition takes the rows meanwhile"
        ),
        Ok(made) => tracing::info!(
            made,
            "message_rows partitions made ahead of the conversation ids"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "could not make the next message_rows partitions (run `sweeper grants run` for the role's grants): the DEFAULT partition takes the rows meanwhile"
        ),
    }
}
