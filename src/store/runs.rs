//! The record of each run in `sweep_runs`, and the single-run lock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{Store, query, query_as, query_scalar};
use crate::config::SweepConfig;
use crate::error::Result;
use crate::run::{Counters, RunHistory, RunRecord, RunStatus};
use crate::shard::Shard;

/// How long the single-run lock lasts unless renewed; the run renews it every third of this.
pub const LEASE: Duration = Duration::from_secs(60);

/// A held sweep lock; see [`Store::try_lock`]. Dropped without [`RunLock::release`] (the process
/// killed), it expires after [`LEASE`], or at once for the next run on the same host.
pub struct RunLock {
    store: Store,
    key: i64,
    owner: String,
    renewer: tokio::task::JoinHandle<()>,
}

impl RunLock {
    pub async fn release(self) {
        self.renewer.abort();
        let (key, owner) = (self.key, &self.owner);
        let released = self
            .store
            .in_tx("release the sweep lock", async |c| {
                // Expired, not deleted: a sweep's role needs no DELETE (docs/deploying.md).
                query(
                    "UPDATE sweep_leases SET expires_at = now() - interval '1 second' \
                     WHERE lock_key = $1 AND owner = $2",
                )
                .bind(key)
                .bind(owner)
                .execute(c)
                .await
            })
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, expires_in_s = LEASE.as_secs(), "could not release the sweep lock: it expires by itself");
        }
    }
}

impl RunLock {
    /// Stops renewing the lease without releasing it (PostgreSQL cannot be reached): it expires
    /// after [`LEASE`], or at once for the next run on this host, which sees this process gone.
    pub fn abandon(self) {
        self.renewer.abort();
    }
}

/// The lock key of sweeps of one pattern (and shard): the first 8 bytes of a SHA-256 of its name.
fn lock_key(pattern: &str, shard: Option<Shard>) -> i64 {
    let h = Sha256::digest(lock_name(pattern, shard).as_bytes());
    i64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
}

fn lock_name(pattern: &str, shard: Option<Shard>) -> String {
    match shard {
        None => format!("sweeper:{pattern}"),
        Some(s) => format!("sweeper:{pattern}\0shard {s}"),
    }
}

/// `host pid nanos`: who holds a lease, so that a run on the same host can tell a dead holder.
fn owner() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let host = hostname().unwrap_or_else(|| "?".into());
    format!("{host} {} {nanos}", std::process::id())
}

/// Whether `owner` was a process of this host that runs no more (a killed run).
fn gone_here(owner: &str) -> bool {
    let mut parts = owner.split(' ');
    let (Some(host), Some(Ok(pid))) = (parts.next(), parts.next().map(str::parse::<u32>)) else {
        return false;
    };
    Some(host) == hostname().as_deref()
        && pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl Store {
    /// Takes the lock of sweeps of `pattern` on this database, or None when another live sweep
    /// holds it. The lock is a lease row (`sweep_leases`), taken and renewed in short
    /// transactions: a pooler in transaction mode can neither leak it onto an idle server
    /// connection nor share it between two clients, as it can a session's advisory lock.
    pub async fn try_lock(&self, pattern: &str, shard: Option<Shard>) -> Result<Option<RunLock>> {
        let key = lock_key(pattern, shard);
        let name = lock_name(pattern, shard).replace('\0', " ");
        let me = owner();
        let lease = format!("{} seconds", LEASE.as_secs());
        let taken: Option<String> = self
            .in_tx("lock", async |c| {
                let holder: Option<String> =
                    query_scalar("SELECT owner FROM sweep_leases WHERE lock_key = $1")
                        .bind(key)
                        .fetch_optional(&mut *c)
                        .await?;
                let dead = holder.filter(|o| gone_here(o)).unwrap_or_default();
                query_scalar(
                    "INSERT INTO sweep_leases (lock_key, name, owner, expires_at) \
                     VALUES ($1, $2, $3, now() + $4::interval) \
                     ON CONFLICT (lock_key) DO UPDATE SET owner = EXCLUDED.owner, \
                       name = EXCLUDED.name, taken_at = now(), expires_at = EXCLUDED.expires_at \
                     WHERE sweep_leases.expires_at < now() OR sweep_leases.owner = $5 \
                     RETURNING owner",
                )
                .bind(key)
                .bind(&name)
                .bind(&me)
                .bind(&lease)
                .bind(dead)
                .fetch_optional(c)
                .await
            })
            .await?;
        if taken.is_none() {
            return Ok(None);
        }
        let renewer = tokio::spawn(renew(self.clone(), key, me.clone(), lease));
        Ok(Some(RunLock {
            store: self.clone(),
            key,
            owner: me,
            renewer,
        }))
    }

    /// The newest `limit` runs, newest first.
    pub async fn recent_runs(&self, limit: i64) -> Result<Vec<RunRecord>> {
        self.in_tx("read runs", async |c| {
            query_as(
                "SELECT id, started_at, finished_at, status, scanned, due, persisted, unchanged, rejected, \
                 protected, duration_ms, error, shard_index, shard_count FROM sweep_runs ORDER BY id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(c)
            .await
        })
        .await
    }

    /// When the whole keyspace was last swept successfully: the newest `ok` run, if any.
    ///
    /// With sharded runs, the keyspace is swept once every shard of a count has: a sharding's
    /// success is when the last of its shards last succeeded, and a shard that stopped
    /// succeeding holds it back (so `status` alarms although the other shards run fine).
    pub async fn last_success(&self) -> Result<Option<DateTime<Utc>>> {
        self.in_tx("read runs", async |c| {
            query_scalar(
                "WITH shards AS ( \
                     SELECT shard_count, shard_index, max(finished_at) AS last FROM sweep_runs \
                     WHERE status = 'ok' AND shard_count IS NOT NULL GROUP BY shard_count, shard_index), \
                 covered AS ( \
                     SELECT min(last) AS at FROM shards GROUP BY shard_count HAVING count(*) = shard_count) \
                 SELECT greatest( \
                     (SELECT max(finished_at) FROM sweep_runs WHERE status = 'ok' AND shard_count IS NULL), \
                     (SELECT max(at) FROM covered))",
            )
            .fetch_one(c)
            .await
        })
        .await
    }

    /// The runs of one sweep (a pattern, and a shard when sharded): how many ended with each
    /// status, and when its newest `ok` one finished. What the metrics export, one Pushgateway
    /// group per sweep: a shard that keeps failing shows its own old success, whatever the
    /// others do.
    pub async fn run_history(&self, pattern: &str, shard: Option<Shard>) -> Result<RunHistory> {
        let (index, count) = (shard.map(|s| s.index as i32), shard.map(|s| s.count as i32));
        let (by_status, last_success) = self
            .in_tx("read runs", async |c| {
                let by_status: Vec<(String, i64)> = query_as(
                    "SELECT status, count(*) FROM sweep_runs WHERE match_pattern = $1 \
                     AND shard_index IS NOT DISTINCT FROM $2 AND shard_count IS NOT DISTINCT FROM $3 \
                     GROUP BY status ORDER BY status",
                )
                .bind(pattern)
                .bind(index)
                .bind(count)
                .fetch_all(&mut *c)
                .await?;
                let last_success: Option<DateTime<Utc>> = query_scalar(
                    "SELECT max(finished_at) FROM sweep_runs WHERE status = 'ok' AND match_pattern = $1 \
                     AND shard_index IS NOT DISTINCT FROM $2 AND shard_count IS NOT DISTINCT FROM $3",
                )
                .bind(pattern)
                .bind(index)
                .bind(count)
                .fetch_one(&mut *c)
                .await?;
                Ok((by_status, last_success))
            })
            .await?;
        Ok(RunHistory {
            by_status: by_status.into_iter().map(|(s, n)| (s, n as u64)).collect(),
            last_success,
        })
    }

    /// Records the start of a run; returns its id.
    pub async fn start_run(&self, cfg: &SweepConfig) -> Result<i64> {
        self.in_tx("record run start", async |c| {
            query_scalar(
                "INSERT INTO sweep_runs (match_pattern, threshold_ms, host, version, shard_index, shard_count) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(&cfg.pattern)
            .bind(cfg.threshold.as_millis() as i64)
            .bind(hostname())
            .bind(env!("CARGO_PKG_VERSION"))
            .bind(cfg.shard.map(|s| s.index as i32))
            .bind(cfg.shard.map(|s| s.count as i32))
            .fetch_one(c)
            .await
        })
        .await
    }

    /// Marks `failed` the runs of `pattern` still recorded as running: the caller holds the
    /// pattern's lock, so their processes are gone (killed before they could record their end).
    /// Returns how many were closed.
    pub async fn close_abandoned_runs(&self, pattern: &str, current: i64) -> Result<u64> {
        let done = self
            .in_tx("close abandoned runs", async |c| {
                query(
                    "UPDATE sweep_runs SET status = 'failed', \
                     error = 'ended before recording its end (the process was killed?)' \
                     WHERE status = 'running' AND match_pattern = $1 AND id < $2",
                )
                .bind(pattern)
                .bind(current)
                .execute(c)
                .await
            })
            .await?;
        Ok(done.rows_affected())
    }

    /// Records `total`, Redis's `evicted_keys` now, on run `id`; returns the evictions since the
    /// previous run of `pattern` that recorded one (all of `total` for a first run, or when a
    /// restart of Redis reset its count).
    pub async fn evictions_since(&self, id: i64, pattern: &str, total: u64) -> Result<u64> {
        let before: Option<i64> = self
            .in_tx("record evictions", async |c| {
                let before = query_scalar(
                    "SELECT redis_evicted_total FROM sweep_runs WHERE match_pattern = $1 \
                     AND id < $2 AND redis_evicted_total IS NOT NULL ORDER BY id DESC LIMIT 1",
                )
                .bind(pattern)
                .bind(id)
                .fetch_optional(&mut *c)
                .await?;
                query("UPDATE sweep_runs SET redis_evicted_total = $2 WHERE id = $1")
                    .bind(id)
                    .bind(total as i64)
                    .execute(c)
                    .await?;
                Ok(before)
            })
            .await?;
        Ok(match before {
            Some(b) if b as u64 <= total => total - b as u64,
            _ => total,
        })
    }

    /// Records how a run ended.
    pub async fn finish_run(
        &self,
        id: i64,
        status: RunStatus,
        c_: &Counters,
        duration: Duration,
        error: Option<&str>,
    ) -> Result<()> {
        self.in_tx("record run end", async |c| {
            query(
                "UPDATE sweep_runs SET finished_at = now(), status = $2, scanned = $3, due = $4, not_due = $5, \
                 persisted = $6, unchanged = $7, rejected = $8, no_ttl = $9, expired_before_read = $10, \
                 messages_added = $11, duration_ms = $12, error = $13, protected = $14, erased = $15 WHERE id = $1",
            )
            .bind(id)
            .bind(status.as_str())
            .bind(c_.scanned as i64)
            .bind(c_.due as i64)
            .bind(c_.not_due as i64)
            .bind(c_.persisted as i64)
            .bind(c_.unchanged as i64)
            .bind(c_.rejected as i64)
            .bind(c_.no_ttl as i64)
            .bind(c_.expired_before_read as i64)
            .bind(c_.messages_added as i64)
            .bind(duration.as_millis() as i64)
            .bind(error)
            .bind(c_.protected as i64)
            .bind(c_.erased as i64)
            .execute(c)
            .await
        })
        .await?;
        Ok(())
    }
}

/// Renews the lease every third of [`LEASE`] until aborted.
async fn renew(store: Store, key: i64, owner: String, lease: String) {
    loop {
        tokio::time::sleep(LEASE / 3).await;
        let renewed = store
            .in_tx("renew the sweep lock", async |c| {
                query(
                    "UPDATE sweep_leases SET expires_at = now() + $3::interval \
                     WHERE lock_key = $1 AND owner = $2",
                )
                .bind(key)
                .bind(&owner)
                .bind(&lease)
                .execute(c)
                .await
            })
            .await;
        match renewed {
            Ok(r) if r.rows_affected() == 1 => {}
            Ok(_) => tracing::warn!(
                "the sweep lock expired and another sweep took it: both may run (their writes are safe together)"
            ),
            Err(e) => tracing::warn!(error = %e, "could not renew the sweep lock"),
        }
    }
}

pub(super) fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

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
}
