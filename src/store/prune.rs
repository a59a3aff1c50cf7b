//! Retention (`sweeper prune`): the conversations last updated before a cutoff deleted with
//! their message rows, and the rejects last seen before it. First the closed partitions of
//! `message_rows` whose conversations are (nearly) all older than the cutoff go whole
//! ([`super::partitions`]: no WAL per message row, nothing left for VACUUM); what is left (the
//! open partition, partitions many conversations of which were updated since) is deleted by
//! rows, a few at a time. Those doomed rows are found by one scan of `conversations` (their
//! integer ids only), then deleted by id in short transactions: no lock is held longer than one
//! batch, so the sweeps beside it are not blocked. Each partition and each batch adds its counts
//! to the receipt in its own transaction: a prune killed at any point has a receipt saying what
//! it deleted, and a re-run deletes the rest.

use chrono::{DateTime, Utc};

use super::erase::Request;
use super::{Store, query, query_as, query_scalar};
use crate::error::Result;

/// A partition is pruned whole when at most this share of its conversations were updated since
/// the cutoff: each survivor's message rows are written again (about 5 times the WAL of
/// deleting them), each other conversation's are not written at all.
pub(super) const MAX_SURVIVORS: f32 = 0.1;

/// What a prune deleted (or would).
#[derive(Debug, Default, Clone, Copy)]
pub struct Pruned {
    pub conversations: u64,
    pub messages: u64,
    pub rejects: u64,
}

impl Store {
    /// The cutoff `older_than` before the server's now: its clock decides, not this host's.
    pub async fn cutoff(&self, older_than: std::time::Duration) -> Result<DateTime<Utc>> {
        self.in_tx("read the clock", async |c| {
            query_scalar("SELECT now() - make_interval(secs => $1)")
                .bind(older_than.as_secs_f64())
                .fetch_one(c)
                .await
        })
        .await
    }

    /// Whether a prune was recorded within `within` (a scheduled prune runs once a day).
    pub async fn pruned_within(&self, within: std::time::Duration) -> Result<bool> {
        self.in_tx("read the last prune", async |c| {
            query_scalar(
                "SELECT EXISTS (SELECT 1 FROM erasures WHERE action = 'prune' \
                 AND at > now() - make_interval(secs => $1))",
            )
            .bind(within.as_secs_f64())
            .fetch_one(c)
            .await
        })
        .await
    }

    /// What a prune to `cutoff` would delete.
    pub async fn prune_counts(&self, cutoff: DateTime<Utc>) -> Result<Pruned> {
        self.in_tx("count what a prune deletes", async |c| {
            let (conversations, messages): (i64, i64) = query_as(
                "SELECT count(*), coalesce(sum((SELECT count(*) FROM message_rows m WHERE m.conversation = c.id)), 0)::int8 \
                 FROM conversations c WHERE c.id IN (SELECT sweeper_prunable($1, $2))",
            )
            .bind(cutoff)
            .bind(MAX_SURVIVORS)
            .fetch_one(&mut *c)
            .await?;
            let rejects: i64 =
                query_scalar("SELECT count(*) FROM sweep_rejects WHERE last_seen_at < $1")
                    .bind(cutoff)
                    .fetch_one(&mut *c)
                    .await?;
            Ok(Pruned {
                conversations: conversations as u64,
                messages: messages as u64,
                rejects: rejects as u64,
            })
        })
        .await
    }

    /// Deletes what is older than `cutoff`, `batch` conversations per transaction; returns the
    /// receipt and what was deleted.
    pub async fn prune(
        &self,
        cutoff: DateTime<Utc>,
        batch: usize,
        r: &Request,
    ) -> Result<(String, Pruned)> {
        let receipt = self.record_event(r, 0, 0).await?;
        let closed = self.close_open_range().await?;
        tracing::debug!(?closed, "prune: the range ids are drawn in");
        let mut out = self.prune_partitions(cutoff, &receipt).await?;
        let ids = self.forget_pruned_ids(batch).await?;
        tracing::debug!(ids, "prune: ids of pruned conversations deleted");
        let ids: Vec<i64> = self
            .in_tx("find what a prune deletes", async |c| {
                query_scalar("SELECT sweeper_prunable($1, $2)")
                    .bind(cutoff)
                    .bind(MAX_SURVIVORS)
                    .fetch_all(c)
                    .await
            })
            .await?;
        for chunk in ids.chunks(batch.max(1)) {
            let (conversations, messages) = self
                .in_tx("prune", async |c| {
                    // The conversations first, their messages after: a row a sweep updated
                    // since the scan is checked again by the DELETE (newer than the cutoff: kept,
                    // with its messages). No FOR UPDATE: a row lock writes WAL. The messages in
                    // a statement of their own, whose snapshot sees the rows a sweep wrote
                    // before the DELETE took its conversation (a sweep takes the conversation
                    // first, so none writes after): the key, checked at commit, finds none left.
                    let gone: Vec<i64> = query_scalar(
                        "DELETE FROM conversations WHERE id = ANY($1) \
                         AND coalesce(updated_at, last_persisted_at) < $2 RETURNING id",
                    )
                    .bind(chunk)
                    .bind(cutoff)
                    .fetch_all(&mut *c)
                    .await?;
                    let messages: i64 = query_scalar(
                        "WITH m AS (DELETE FROM message_rows WHERE conversation = ANY($1) RETURNING 1) \
                         SELECT count(*) FROM m",
                    )
                    .bind(&gone)
                    .fetch_one(&mut *c)
                    .await?;
                    query("DELETE FROM conversation_ids WHERE id = ANY($1)")
                        .bind(&gone)
                        .execute(&mut *c)
                        .await?;
                    let counts = (gone.len() as i64, messages);
                    add_to_receipt(c, &receipt, counts.0, counts.1).await?;
                    Ok(counts)
                })
                .await?;
            out.conversations += conversations as u64;
            out.messages += messages as u64;
        }
        loop {
            let n: i64 = self
                .in_tx("prune rejects", async |c| {
                    query_scalar(
                        "WITH d AS (DELETE FROM sweep_rejects WHERE id IN (SELECT id FROM sweep_rejects \
                         WHERE last_seen_at < $1 LIMIT $2) RETURNING 1) SELECT count(*) FROM d",
                    )
                    .bind(cutoff)
                    .bind(batch as i64)
                    .fetch_one(c)
                    .await
                })
                .await?;
            out.rejects += n as u64;
            if n < batch as i64 {
                break;
            }
        }
        let dropped = self.drop_empty_partitions().await?;
        tracing::debug!(dropped, "prune: empty message partitions dropped");
        self.in_tx("complete the receipt", async |c| {
            query("UPDATE erasures SET rejects = $2, redis_keys = 0, finished_at = now() WHERE receipt = $1::uuid")
                .bind(&receipt)
                .bind(out.rejects as i64)
                .execute(c)
                .await
        })
        .await?;
        Ok((receipt, out))
    }
}

pub(super) async fn add_to_receipt(
    c: &mut sqlx::PgConnection,
    receipt: &str,
    conversations: i64,
    messages: i64,
) -> sqlx::Result<()> {
    query(
        "UPDATE erasures SET conversations = conversations + $2, messages = messages + $3 WHERE receipt = $1::uuid",
    )
    .bind(receipt)
    .bind(conversations)
    .bind(messages)
    .execute(c)
    .await?;
    Ok(())
}
