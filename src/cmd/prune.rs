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
            let request = request(p.older_than, None);
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

fn request(older_than: std::time::Duration, reason: Option<String>) -> Request {
    Request {
        action: "prune",
        scope: "age",
        requested: 0,
        older_than_s: Some(older_than.as_secs() as i64),
        reason,
    }
}

/// `--retention` of `run` and `daemon`: a prune after the sweep, unless one ran in the last 23
/// hours (recorded in `erasures`, so sweeps every five minutes prune once a day, whichever runs
/// it). A failure is logged; it does not fail the sweep.
pub async fn when_due(g: &GlobalOpts, older_than: std::time::Duration) {
    let prune = async {
        let store = super::connect_store(g).await?;
        if store
            .pruned_within(std::time::Duration::from_secs(23 * 3600))
            .await?
        {
            return Ok(None);
        }
        let cutoff = store.cutoff(older_than).await?;
        let reason = Some("--retention".to_string());
        let done = store
            .prune(cutoff, 1000, &request(older_than, reason))
            .await?;
        Ok::<_, Error>(Some(done))
    };
    match prune.await {
        Ok(Some((receipt, p))) => tracing::info!(
            %receipt,
            conversations = p.conversations,
            messages = p.messages,
            rejects = p.rejects,
            "retention: pruned"
        ),
        Ok(None) => tracing::debug!("retention: pruned within the last 23 hours"),
        Err(e) => tracing::error!(exit_code = e.exit_code(), "retention: prune failed: {e}"),
    }
}
