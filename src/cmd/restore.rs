//! `sweeper restore`: puts a saved conversation back into Redis, the read-repair of a chat service
//! whose cache lost a conversation a user comes back to. The newest saved checkpoint goes back
//! under the key it was read from, as a checkpoint document the chat service and the next sweep
//! read like any other. A live key is never overwritten unless asked.

use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
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
) -> Result<Restored> {
    let saved = store
        .saved_checkpoint(conversation_id)
        .await?
        .ok_or_else(|| {
            Error::Other(format!(
                "no conversation `{conversation_id}` in PostgreSQL: nothing to restore"
            ))
        })?;
    let key = saved.redis_key;
    if let Err(pttl) = source.put_back(&key, &saved.document, ttl, force).await? {
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
    let restored = restore(&store, &mut source, &rs.conversation, rs.ttl, rs.force).await?;
    tracing::info!(key = %restored.key, "conversation restored");
    super::emit(rs.out.output, || restored.to_json(), || restored.to_text())?;
    Ok(crate::error::exit::OK)
}
