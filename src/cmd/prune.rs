//! `sweeper prune`: retention. Deletes the conversations last updated longer ago than
//! `--older-than`, with their messages, and the rejects last seen before then; a receipt in
//! `erasures`. PostgreSQL only: Redis expires its keys itself.

use serde::Serialize;

use crate::cli::{GlobalOpts, PruneArgs};
use crate::error::{Error, Result, exit};
use crate::store::erase::Request;

/// What a prune did (or would do, on a dry run).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// The receipt's id in `erasures`; None on a dry run.
    pub receipt: Option<String>,
    pub conversations: u64,
    pub messages: u64,
    pub rejects: u64,
    pub dry_run: bool,
}

/// `sweeper prune`.
pub async fn execute(g: &GlobalOpts, p: &PruneArgs) -> Result<u8> {
    if p.older_than.is_zero() {
        return Err(Error::Usage(
            "--older-than must be above 0 (it would delete every conversation)".into(),
        ));
    }
    let store = super::connect_store(g).await?;
    store.ensure_migrated().await?;
    let cutoff = store.cutoff(p.older_than).await?;
    let (receipt, pruned) = match p.dry_run {
        true => (None, store.prune_counts(cutoff).await?),
        false => {
            let request = Request {
                action: "prune",
                scope: "age",
                requested: 0,
                older_than_s: Some(p.older_than.as_secs() as i64),
                reason: None,
            };
            let (r, pruned) = store
                .prune(cutoff, p.prune_batch as usize, &request)
                .await?;
            (Some(r), pruned)
        }
    };
    let out = PruneReport {
        receipt,
        conversations: pruned.conversations,
        messages: pruned.messages,
        rejects: pruned.rejects,
        dry_run: p.dry_run,
    };
    tracing::info!(
        receipt = out.receipt.as_deref(),
        conversations = out.conversations,
        messages = out.messages,
        rejects = out.rejects,
        cutoff = %cutoff,
        "prune finished"
    );
    let text = || {
        let verb = if out.dry_run {
            "dry run: would prune"
        } else {
            "pruned"
        };
        let receipt = out
            .receipt
            .as_ref()
            .map_or("; nothing deleted".to_string(), |r| {
                format!("; receipt {r}")
            });
        format!(
            "{verb} {} conversations last updated before {cutoff} ({} messages), {} rejects{receipt}\n",
            out.conversations, out.messages, out.rejects
        )
    };
    let json = || serde_json::to_string(&out).expect("always serializes");
    super::emit(p.out.output, json, text)?;
    Ok(exit::OK)
}
