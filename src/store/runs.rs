//! The record of each run in `sweep_runs`, and the single-run lock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::Store;
use crate::config::SweepConfig;
use crate::error::{Error, Result};
use crate::run::{Counters, RunHistory, RunRecord, RunStatus};
use crate::shard::Shard;

/// A held sweep lock; see [`Store::try_lock`].
pub struct RunLock {
    conn: sqlx::PgConnection,
}

impl RunLock {
    pub async fn release(self) {
        // Closing the session releases its advisory locks.
        let _ = sqlx::Connection::close(self.conn).await;
    }
}

/// The advisory lock key of sweeps of one pattern (and shard): the first 8 bytes of a SHA-256.
/// An unsharded sweep keeps the key it always had, so binaries of before and after sharding
/// exclude each other.
fn lock_key(pattern: &str, shard: Option<Shard>) -> i64 {
    let name = match shard {
        None => format!("sweeper:{pattern}"),
        Some(s) => format!("sweeper:{pattern}\0shard {s}"),
    };
    let h = Sha256::digest(name.as_bytes());
    i64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
}

impl Store {
    /// Takes the lock of sweeps of `pattern` on this database, or None when another sweep holds
    /// it. The lock is a session-level advisory lock on a connection of its own: it is released
    /// by [`RunLock::release`], or by PostgreSQL when the process dies.
    pub async fn try_lock(&self, pattern: &str, shard: Option<Shard>) -> Result<Option<RunLock>> {
        let key = lock_key(pattern, shard);
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(Error::postgres("lock"))?
            .detach();
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .map_err(Error::postgres("lock"))?;
        Ok(locked.then_some(RunLock { conn }))
    }

    /// The newest `limit` runs, newest first.
    pub async fn recent_runs(&self, limit: i64) -> Result<Vec<RunRecord>> {
        sqlx::query_as(
            "SELECT id, started_at, finished_at, status, scanned, due, persisted, unchanged, rejected, \
             protected, duration_ms, error, shard_index, shard_count FROM sweep_runs ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::postgres("read runs"))
    }

    /// When the whole keyspace was last swept successfully: the newest `ok` run, if any.
    ///
    /// With sharded runs, the keyspace is swept once every shard of a count has: a sharding's
    /// success is when the last of its shards last succeeded, and a shard that stopped
    /// succeeding holds it back (so `status` alarms although the other shards run fine).
    pub async fn last_success(&self) -> Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar(
            "WITH shards AS ( \
                 SELECT shard_count, shard_index, max(finished_at) AS last FROM sweep_runs \
                 WHERE status = 'ok' AND shard_count IS NOT NULL GROUP BY shard_count, shard_index), \
             covered AS ( \
                 SELECT min(last) AS at FROM shards GROUP BY shard_count HAVING count(*) = shard_count) \
             SELECT greatest( \
                 (SELECT max(finished_at) FROM sweep_runs WHERE status = 'ok' AND shard_count IS NULL), \
                 (SELECT max(at) FROM covered))",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(Error::postgres("read runs"))
    }

    /// The runs of one sweep (a pattern, and a shard when sharded): how many ended with each
    /// status, and when its newest `ok` one finished. What the metrics export, one Pushgateway
    /// group per sweep: a shard that keeps failing shows its own old success, whatever the
    /// others do.
    pub async fn run_history(&self, pattern: &str, shard: Option<Shard>) -> Result<RunHistory> {
        let (index, count) = (shard.map(|s| s.index as i32), shard.map(|s| s.count as i32));
        let by_status: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM sweep_runs WHERE match_pattern = $1 \
             AND shard_index IS NOT DISTINCT FROM $2 AND shard_count IS NOT DISTINCT FROM $3 \
             GROUP BY status ORDER BY status",
        )
        .bind(pattern)
        .bind(index)
        .bind(count)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::postgres("read runs"))?;
        let last_success = sqlx::query_scalar(
            "SELECT max(finished_at) FROM sweep_runs WHERE status = 'ok' AND match_pattern = $1 \
             AND shard_index IS NOT DISTINCT FROM $2 AND shard_count IS NOT DISTINCT FROM $3",
        )
        .bind(pattern)
        .bind(index)
        .bind(count)
        .fetch_one(&self.pool)
        .await
        .map_err(Error::postgres("read runs"))?;
        Ok(RunHistory {
            by_status: by_status.into_iter().map(|(s, n)| (s, n as u64)).collect(),
            last_success,
        })
    }

    /// Records the start of a run; returns its id.
    pub async fn start_run(&self, cfg: &SweepConfig) -> Result<i64> {
        sqlx::query_scalar(
            "INSERT INTO sweep_runs (match_pattern, threshold_ms, host, version, shard_index, shard_count) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&cfg.pattern)
        .bind(cfg.threshold.as_millis() as i64)
        .bind(hostname())
        .bind(env!("CARGO_PKG_VERSION"))
        .bind(cfg.shard.map(|s| s.index as i32))
        .bind(cfg.shard.map(|s| s.count as i32))
        .fetch_one(&self.pool)
        .await
        .map_err(Error::postgres("record run start"))
    }

    /// Marks `failed` the runs of `pattern` still recorded as running: the caller holds the
    /// pattern's lock, so their processes are gone (killed before they could record their end).
    /// Returns how many were closed.
    pub async fn close_abandoned_runs(&self, pattern: &str, current: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE sweep_runs SET status = 'failed', \
             error = 'ended before recording its end (the process was killed?)' \
             WHERE status = 'running' AND match_pattern = $1 AND id < $2",
        )
        .bind(pattern)
        .bind(current)
        .execute(&self.pool)
        .await
        .map_err(Error::postgres("close abandoned runs"))?;
        Ok(done.rows_affected())
    }

    /// Records how a run ended.
    pub async fn finish_run(
        &self,
        id: i64,
        status: RunStatus,
        c: &Counters,
        duration: Duration,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE sweep_runs SET finished_at = now(), status = $2, scanned = $3, due = $4, not_due = $5, \
             persisted = $6, unchanged = $7, rejected = $8, no_ttl = $9, expired_before_read = $10, \
             messages_added = $11, duration_ms = $12, error = $13, protected = $14 WHERE id = $1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(c.scanned as i64)
        .bind(c.due as i64)
        .bind(c.not_due as i64)
        .bind(c.persisted as i64)
        .bind(c.unchanged as i64)
        .bind(c.rejected as i64)
        .bind(c.no_ttl as i64)
        .bind(c.expired_before_read as i64)
        .bind(c.messages_added as i64)
        .bind(duration.as_millis() as i64)
        .bind(error)
        .bind(c.protected as i64)
        .execute(&self.pool)
        .await
        .map_err(Error::postgres("record run end"))?;
        Ok(())
    }
}

fn hostname() -> Option<String> {
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
