//! Erased stays erased: the batch write's check against the tombstones `sweeper forget` leaves
//! (`erased`), inside the batch's transaction. It takes the erasure lock in shared mode first (a
//! forget takes it exclusive), so a forget that raced this batch is either committed and seen here,
//! or waits for this batch and deletes what it wrote. See migration 20261206000100.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::logs::per_key::{self, Kind};
use crate::store::Batch;

/// A conversation or LangGraph thread id, as tombstones name it.
pub(crate) const CONVERSATION: &str = "conversation";
/// A Redis key (the rejects of an erased conversation's keys).
pub(crate) const KEY: &str = "key";

/// Takes the batch's erased conversations, threads and rejects out of it, counting the
/// checkpoints and threads taken in `batch.erased` (the keys the sweep counts as `erased`). One
/// statement.
pub(super) async fn drop_erased(
    batch: &mut Batch,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
) -> Result<()> {
    let mut kinds: Vec<&str> = Vec::with_capacity(batch.len());
    let mut names: Vec<&str> = Vec::with_capacity(batch.len());
    let ids = batch
        .checkpoints
        .iter()
        .map(|c| c.conversation_id.as_str())
        .chain(batch.threads.iter().map(|t| t.thread_id.as_str()));
    for id in ids {
        kinds.push(CONVERSATION);
        names.push(id);
    }
    for r in &batch.rejects {
        kinds.push(KEY);
        names.push(&r.redis_key);
    }
    let erased: HashSet<String> = crate::store::query_scalar("SELECT sweeper_erased_among($1, $2)")
        .bind(&kinds)
        .bind(&names)
        .fetch_all(&mut **tx)
        .await
        .map_err(Error::postgres("check tombstones"))?
        .into_iter()
        .collect();
    if erased.is_empty() {
        return Ok(());
    }
    let is = |kind: &str, name: &str| erased.contains(&format!("{kind}:{name}"));
    let before = batch.checkpoints.len() + batch.threads.len();
    batch
        .checkpoints
        .retain(|c| !is(CONVERSATION, &c.conversation_id));
    batch.threads.retain(|t| !is(CONVERSATION, &t.thread_id));
    batch.rejects.retain(|r| !is(KEY, &r.redis_key));
    let taken = (before - batch.checkpoints.len() - batch.threads.len()) as u64;
    if per_key::show_many(Kind::Erased, taken) {
        tracing::info!(
            erased = taken,
            "erased conversations read again: not saved, their keys left to their TTL"
        );
    }
    batch.erased += taken;
    Ok(())
}
