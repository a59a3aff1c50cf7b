//! `sweeper restore`: puts a saved conversation back into Redis, the read-repair of a chat service
//! whose cache lost a conversation a user comes back to. The newest saved checkpoint goes back
//! under the key it was read from, as a checkpoint document the chat service and the next sweep
//! read like any other. A live key is never overwritten unless asked.

use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::mapping::{Mapping, Unit};
use crate::redis::cluster::Nodes;
use crate::store::Store;

#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub conversation_id: String,
    pub key: String,
    pub bytes: usize,
    pub messages: i32,
    /// Older messages kept in PostgreSQL only (the conversation was started again after an
    /// earlier key expired; the chat service never had them in this checkpoint).
    pub older_messages_in_postgres: i32,
    pub ttl_ms: u64,
    pub replaced: bool,
}

pub async fn restore(
    store: &Store,
    source: &mut Nodes,
    conversation_id: &str,
    ttl: Duration,
    force: bool,
    mapping: Option<&Mapping>,
) -> Result<Restored> {
    // A copy restored from a backup, say: still erased.
    if store.is_erased(conversation_id).await? {
        return Err(Error::Other(format!(
            "`{conversation_id}` was erased (sweeper forget): it is never restored"
        )));
    }
    let saved = store
        .saved_checkpoint(conversation_id)
        .await?
        .ok_or_else(|| {
            Error::Other(format!(
                "no conversation `{conversation_id}` in PostgreSQL: nothing to restore"
            ))
        })?;
    let key = saved.redis_key;
    if let Some(m) = mapping.filter(|m| m.unit == Unit::Message) {
        return restore_messages(store, source, conversation_id, ttl, force, m).await;
    }
    let put = match mapping {
        // A chat library's conversation goes back as the library keeps it.
        Some(m) => {
            let write = m
                .restore_conversation(&key, &saved.document)
                .map_err(|e| Error::Other(format!("cannot restore `{conversation_id}`: {e}")))?;
            source.put_back_layout(&write, ttl, force).await?
        }
        None => source.put_back(&key, &saved.document, ttl, force).await?,
    };
    if let Err(pttl) = put {
        let left = match pttl {
            -1 => "no TTL".to_string(),
            ms => format!(
                "TTL {}",
                humantime::format_duration(Duration::from_millis(ms.max(0) as u64))
            ),
        };
        return Err(Error::Other(format!(
            "{key} is live in Redis ({left}): not overwritten; --force replaces it"
        )));
    }
    Ok(Restored {
        conversation_id: conversation_id.to_string(),
        key,
        bytes: saved.document.len(),
        messages: saved.checkpoint_messages,
        older_messages_in_postgres: saved.message_count - saved.checkpoint_messages,
        ttl_ms: ttl.as_millis() as u64,
        replaced: force,
    })
}

/// One key per message: each message back under the key it was read from. Every key is checked
/// first, so a live one stops the restore before anything is written (unless `force`).
async fn restore_messages(
    store: &Store,
    source: &mut Nodes,
    conversation_id: &str,
    ttl: Duration,
    force: bool,
    m: &Mapping,
) -> Result<Restored> {
    let saved = store.saved_message_sources(conversation_id).await?;
    let writes = saved
        .iter()
        .map(|(key, element)| m.restore_message(key, element))
        .collect::<std::result::Result<Vec<_>, String>>()
        .map_err(|e| Error::Other(format!("cannot restore `{conversation_id}`: {e}")))?;
    if writes.is_empty() {
        return Err(Error::Other(format!(
            "`{conversation_id}` has no message saved with its key (swept before one key per message was kept): nothing to restore"
        )));
    }
    if !force {
        let keys: Vec<Vec<u8>> = writes.iter().map(|w| w.key().as_bytes().to_vec()).collect();
        if let Some(i) = source.pttls(&keys).await?.iter().position(|&t| t != -2) {
            return Err(Error::Other(format!(
                "{} is live in Redis: nothing overwritten; --force replaces it",
                writes[i].key()
            )));
        }
    }
    for w in &writes {
        // Checked above: each write goes in whatever it finds.
        let _ = source.put_back_layout(w, ttl, true).await?;
    }
    Ok(Restored {
        conversation_id: conversation_id.to_string(),
        key: writes[0].key().to_string(),
        bytes: saved.iter().map(|(_, e)| e.len()).sum(),
        messages: writes.len() as i32,
        older_messages_in_postgres: 0,
        ttl_ms: ttl.as_millis() as u64,
        replaced: force,
    })
}

impl Restored {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("always serializes")
    }

    pub fn to_text(&self) -> String {
        let mut out = format!(
            "restored {} ({} messages, {} bytes) with TTL {}\n",
            self.key,
            self.messages,
            self.bytes,
            humantime::format_duration(Duration::from_millis(self.ttl_ms))
        );
        if self.older_messages_in_postgres > 0 {
            out.push_str(&format!(
                "{} older messages of this conversation stay in PostgreSQL only (table messages)\n",
                self.older_messages_in_postgres
            ));
        }
        out
    }
}

/// `sweeper restore`.
pub async fn execute(g: &crate::cli::GlobalOpts, rs: &crate::cli::RestoreArgs) -> Result<u8> {
    if rs.ttl.is_zero() {
        return Err(Error::Usage("--ttl must be above 0".into()));
    }
    let store = super::connect_store(g).await?;
    store.ensure_migrated().await?;
    let mut source = super::connect_redis(g).await?;
    let mapping = super::formats::resolve(&rs.layout)?;
    let restored = restore(
        &store,
        &mut source,
        &rs.conversation,
        rs.ttl,
        rs.force,
        mapping.as_ref(),
    )
    .await?;
    // A reader of the archive is an event an auditor asks about.
    let request = crate::store::erase::Request {
        action: "restore",
        scope: "conversation",
        requested: 1,
        older_than_s: None,
        reason: None,
    };
    let receipt = store
        .record_event(&request, 1, restored.messages as u64)
        .await?;
    tracing::info!(key = %restored.key, %receipt, "conversation restored");
    super::emit(rs.out.output, || restored.to_json(), || restored.to_text())?;
    Ok(crate::error::exit::OK)
}
