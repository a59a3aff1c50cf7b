//! The protect stage: when PostgreSQL cannot take due keys, their TTL is raised to
//! `--protect-ttl` (never lowered), so none expires before a later sweep can save it.

use std::time::Instant;

use tokio::sync::mpsc;

use super::health::Health;
use super::read::Reader;
use crate::config::SweepConfig;
use crate::error::{Error, Result};
use crate::redis::Nodes;
use crate::redis::cluster::Protected;
use crate::redis::read::Read;
use crate::run::Counters;
use crate::shutdown::Shutdown;

/// PostgreSQL failed before the sweep could start: scan anyway and raise the TTL of every due key
/// to `--protect-ttl`, so none expires before a sweep can save it (nothing else changes). Returns
/// the error, for the caller to report, and what the scan counted.
pub(super) async fn protect_after(
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
    let (tx, _rx) = mpsc::channel::<Vec<Read>>(1);
    let mut source = source;
    source.set_deadline(deadline);
    source.set_pacing(cfg.pacing());
    let reader = Reader::new(cfg.clone(), shutdown.clone(), deadline, Health::down());
    let (counters, _, error) = reader.run(source, tx).await;
    match error {
        Some(e) => Err(e),
        None => Ok(counters),
    }
}

/// Raises the TTL of `keys` to `--protect-ttl`; says what became of them. A failure here is
/// logged: the sweep is already failing for a better reason.
pub(super) async fn protect(source: &mut Nodes, keys: &[Vec<u8>], cfg: &SweepConfig) -> Protected {
    if cfg.protect_ttl.is_zero() || keys.is_empty() {
        return Protected::default();
    }
    match source.protect(keys, cfg.protect_ttl).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, keys = keys.len(), "could not protect due keys");
            Protected::default()
        }
    }
}
