//! `message_rows`' partitions (migration `20261206000200`): made ahead of the conversation ids
//! by `migrate` and each sweep, and pruned whole by `prune`. The SQL functions do the work as
//! the tables' owner (SECURITY DEFINER), so a sweep's role needs no CREATE and an eraser's no
//! TRUNCATE; this module only calls them, one transaction each.

use chrono::{DateTime, Utc};

use super::prune::{MAX_SURVIVORS, Pruned};
use super::{Store, query_as, query_scalar};
use crate::error::Result;

/// Attempts at a partition whose lock a sweep holds (each waits at most the function's
/// lock_timeout, 200 ms), before its rows are left to the row-by-row deletes.
const BUSY_ATTEMPTS: u32 = 5;

impl Store {
    /// Makes the partitions the next conversation ids need; returns how many it made (-1: a
    /// lock was not had in time, and the DEFAULT partition takes the rows meanwhile).
    pub async fn extend_partitions(&self) -> Result<i32> {
        self.in_tx("make message partitions", async |c| {
            query_scalar("SELECT sweeper_extend_message_partitions()")
                .fetch_one(c)
                .await
        })
        .await
    }

    /// Prunes to `cutoff` every closed partition (the function tells an open one) that holds
    /// conversations older than it and few survivors, each in one transaction that adds its counts to `receipt`. Returns what
    /// went; what is left (the open partition, partitions with many survivors, the DEFAULT
    /// partition, a partition busy every time) is the row-by-row deletes' job.
    pub(super) async fn prune_partitions(
        &self,
        cutoff: DateTime<Utc>,
        receipt: &str,
    ) -> Result<Pruned> {
        let closed: Vec<(i64, i64)> = self
            .in_tx("find the partitions a prune empties", async |c| {
                query_as(
                    "SELECT p.lo, count(*) FILTER (WHERE coalesce(c.updated_at, c.last_persisted_at) >= $1) \
                     FROM sweeper_message_partitions() p \
                     JOIN conversations c ON c.id >= p.lo AND c.id < p.hi \
                     GROUP BY p.lo, p.hi \
                     HAVING count(*) FILTER (WHERE coalesce(c.updated_at, c.last_persisted_at) < $1) > 0 \
                        AND count(*) FILTER (WHERE coalesce(c.updated_at, c.last_persisted_at) >= $1) \
                            <= count(*) * $2 \
                     ORDER BY p.lo",
                )
                .bind(cutoff)
                .bind(MAX_SURVIVORS)
                .fetch_all(c)
                .await
            })
            .await?;
        let mut out = Pruned::default();
        for (lo, _) in closed {
            for attempt in 1..=BUSY_ATTEMPTS {
                let (outcome, conversations, messages, survivors) =
                    self.prune_partition(lo, cutoff, receipt).await?;
                tracing::debug!(
                    partition = lo,
                    outcome,
                    conversations,
                    messages,
                    survivors,
                    attempt,
                    "prune a partition"
                );
                out.conversations += conversations as u64;
                out.messages += messages as u64;
                if outcome != "busy" {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt as u64)).await;
            }
        }
        Ok(out)
    }

    /// One partition pruned whole (or not: `outcome` says why), its counts added to the
    /// receipt in the same transaction.
    async fn prune_partition(
        &self,
        lo: i64,
        cutoff: DateTime<Utc>,
        receipt: &str,
    ) -> Result<(String, i64, i64, i64)> {
        self.in_tx("prune a partition", async |c| {
            let r: (String, i64, i64, i64) =
                query_as("SELECT * FROM sweeper_prune_message_partition($1, $2, $3)")
                    .bind(lo)
                    .bind(cutoff)
                    .bind(MAX_SURVIVORS)
                    .fetch_one(&mut *c)
                    .await?;
            super::prune::add_to_receipt(c, receipt, r.1, r.2).await?;
            Ok(r)
        })
        .await
    }

    /// Closes the range conversation ids are drawn in now, unless its first conversation is
    /// younger than `message_partitioning.close_after`: each prune so ends a range, and a
    /// window later the range is past the window whole. Returns its lower bound when it closed.
    pub(super) async fn close_open_range(&self) -> Result<Option<i64>> {
        self.in_tx("close the range ids are drawn in", async |c| {
            query_scalar("SELECT sweeper_close_open_range()")
                .fetch_one(c)
                .await
        })
        .await
    }

    /// Deletes the ids of the conversations the partitions' prunes deleted (and of a prune
    /// killed before it got to them), `batch` per transaction, outside the partitions' locks.
    /// Returns how many; a range that fails (a sweep wrote one of its conversations again at
    /// that moment) is left to the next prune.
    pub(super) async fn forget_pruned_ids(&self, batch: usize) -> Result<u64> {
        let mut forgotten = 0;
        loop {
            let n: i64 = match self
                .in_tx("delete pruned conversations' ids", async |c| {
                    query_scalar("SELECT sweeper_forget_pruned_ids($1)")
                        .bind(batch.max(1) as i32)
                        .fetch_one(c)
                        .await
                })
                .await
            {
                Ok(n) => n,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "prune: ids left to the next prune");
                    break;
                }
                Err(e) => return Err(e),
            };
            if n < 0 {
                break;
            }
            forgotten += n as u64;
        }
        Ok(forgotten)
    }

    /// Drops the partitions pruned empty; returns how many.
    pub(super) async fn drop_empty_partitions(&self) -> Result<i32> {
        self.in_tx("drop empty message partitions", async |c| {
            query_scalar("SELECT sweeper_drop_empty_message_partitions()")
                .fetch_one(c)
                .await
        })
        .await
    }
}
