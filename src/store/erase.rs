//! Erasure in PostgreSQL (`sweeper forget`): the named conversations' rows deleted, their
//! tombstones written and the receipt recorded, in one transaction; and the receipts read back.
//! Nothing here speaks Redis: the command deletes the keys after this commits, so a forget
//! stopped in between leaves tombstones a sweep obeys (the batch write checks them).

use sqlx::PgConnection;

use super::write::{CONVERSATION, KEY};
use super::{Store, query, query_as, query_scalar};
use crate::error::{Error, Result};
use crate::run::Receipt;

/// The erasure lock (see migration 20261206000100): batch writes take it shared, erasures
/// exclusive.
const ERASURE_LOCK: i64 = 8_319_381_245_402_718_547;

/// Who asked, and why: what a receipt records besides the counts.
#[derive(Debug, Clone)]
pub struct Request {
    /// `forget`, `prune` or `restore`.
    pub action: &'static str,
    /// `conversation`, `user` or `age`.
    pub scope: &'static str,
    /// How many conversations or users were named.
    pub requested: usize,
    pub older_than_s: Option<i64>,
    pub reason: Option<String>,
}

/// What an erasure found in PostgreSQL (and deleted, unless a dry run).
#[derive(Debug, Default, Clone)]
pub struct Erased {
    /// None on a dry run: nothing recorded.
    pub receipt: Option<String>,
    pub conversations: u64,
    pub messages: u64,
    pub rejects: u64,
    /// The Redis keys the rows name (each conversation's key, each message's key): deleted next.
    pub keys: Vec<String>,
    /// The conversations erased: those named, those found stored for the users named.
    pub ids: Vec<String>,
}

/// What to erase: conversation ids, users' ids, and keys found live in Redis.
#[derive(Debug, Default, Clone)]
pub struct Targets {
    pub ids: Vec<String>,
    pub users: Vec<String>,
    pub live_keys: Vec<String>,
    /// The conversations those keys hold (also in `ids`).
    pub live_ids: Vec<String>,
    /// Delete LangGraph's checkpoint tables' rows of the threads named by `ids`.
    pub langgraph: bool,
}

impl Store {
    /// Erases `t` in one transaction: tombstones first, then the rows (conversations, message
    /// rows, the rejects of their keys, LangGraph's rows), then the receipt. A dry run counts
    /// and writes nothing. Takes the erasure lock: batch writes in flight finish first (their
    /// rows are then deleted here), later ones see the tombstones.
    pub async fn erase(&self, t: &Targets, r: &Request, dry_run: bool) -> Result<Erased> {
        self.in_tx("erase", async |c| {
            if !dry_run {
                query("SELECT pg_advisory_xact_lock($1)")
                    .bind(ERASURE_LOCK)
                    .execute(&mut *c)
                    .await?;
            }
            // Read after the lock: a conversation of the user written meanwhile is found.
            let mut ids: Vec<String> = query_scalar(
                "SELECT conversation_id FROM conversations WHERE user_id = ANY($1) \
                 UNION SELECT unnest($2::text[])",
            )
            .bind(&t.users)
            .bind(&t.ids)
            .fetch_all(&mut *c)
            .await?;
            ids.sort();
            let mut out = found(c, &ids).await?;
            if t.langgraph {
                out.ids.extend(threads(c, &ids, dry_run).await?);
            }
            // Conversations only Redis holds so far count too: their keys go next.
            out.ids.extend(t.live_ids.iter().cloned());
            out.ids.sort();
            out.ids.dedup();
            out.conversations = out.ids.len() as u64;
            out.keys.extend(t.live_keys.iter().cloned());
            out.keys.sort();
            out.keys.dedup();
            out.rejects =
                query_scalar::<i64>("SELECT count(*) FROM sweep_rejects WHERE redis_key = ANY($1)")
                    .bind(&out.keys)
                    .fetch_one(&mut *c)
                    .await? as u64;
            out.ids = ids;
            if dry_run {
                return Ok(out);
            }
            tombstones(c, &out.ids, &out.keys).await?;
            // By id, found in `conversation_ids` (`conversations` is partitioned by id); its
            // rows last, when nothing references them.
            for sql in [
                "DELETE FROM message_rows WHERE conversation IN \
                 (SELECT id FROM conversation_ids WHERE conversation_id = ANY($1))",
                "DELETE FROM conversations WHERE id IN \
                 (SELECT id FROM conversation_ids WHERE conversation_id = ANY($1))",
                "DELETE FROM conversation_ids WHERE conversation_id = ANY($1)",
            ] {
                query(sql).bind(&out.ids).execute(&mut *c).await?;
            }
            query("DELETE FROM sweep_rejects WHERE redis_key = ANY($1)")
                .bind(&out.keys)
                .execute(&mut *c)
                .await?;
            out.receipt = Some(record(c, r, &out).await?);
            Ok(out)
        })
        .await
        .map_err(missing_privilege)
    }

    /// Completes a receipt once its Redis keys are deleted.
    pub async fn finish_receipt(&self, receipt: &str, redis_keys: u64) -> Result<()> {
        self.in_tx("complete the receipt", async |c| {
            query(
                "UPDATE erasures SET redis_keys = $2, finished_at = now() WHERE receipt = $1::uuid",
            )
            .bind(receipt)
            .bind(redis_keys as i64)
            .execute(c)
            .await
        })
        .await?;
        Ok(())
    }

    /// Whether a conversation was erased (`restore` refuses it).
    pub async fn is_erased(&self, conversation_id: &str) -> Result<bool> {
        self.in_tx("check tombstones", async |c| {
            query_scalar(
                "SELECT EXISTS (SELECT 1 FROM erased WHERE id_hash = sweeper_erasure_hash($1, $2))",
            )
            .bind(CONVERSATION)
            .bind(conversation_id)
            .fetch_one(c)
            .await
        })
        .await
    }

    /// Records an event that is not an erasure but that an auditor asks about (a `restore`: a
    /// reader of the archive); returns its receipt.
    pub async fn record_event(
        &self,
        r: &Request,
        conversations: u64,
        messages: u64,
    ) -> Result<String> {
        let counted = Erased {
            conversations,
            messages,
            ..Erased::default()
        };
        self.in_tx("record the receipt", async |c| record(c, r, &counted).await)
            .await
    }

    /// The newest `limit` receipts, newest first.
    pub async fn recent_receipts(&self, limit: i64) -> Result<Vec<Receipt>> {
        self.in_tx("read receipts", async |c| {
            query_as(
                "SELECT receipt::text AS receipt, at, action, scope, reason, host, os_user, conversations, \
                 messages, redis_keys FROM erasures ORDER BY id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(c)
            .await
        })
        .await
    }
}

/// A role refused (a sweep's, which needs no DELETE): the line says which privilege is missing.
fn missing_privilege(e: Error) -> Error {
    match e {
        Error::Postgres {
            source: sqlx::Error::Database(db),
            ..
        } if db.code().as_deref() == Some("42501") => Error::Postgres {
            context: "erase: this role lacks the DELETE privilege an erasure needs (the eraser's role in docs/deploying.md)",
            source: sqlx::Error::Database(db),
        },
        e => e,
    }
}

/// What is stored of these conversations: how many, their messages, and the keys they name.
async fn found(c: &mut PgConnection, ids: &[String]) -> sqlx::Result<Erased> {
    let (stored, keys): (Vec<String>, Vec<String>) = query_as(
        "SELECT coalesce(array_agg(conversation_id), '{}'), coalesce(array_agg(redis_key), '{}') \
         FROM conversations WHERE conversation_id = ANY($1)",
    )
    .bind(ids)
    .fetch_one(&mut *c)
    .await?;
    let (messages, message_keys): (i64, Vec<String>) = query_as(
        "SELECT count(*), coalesce(array_agg(DISTINCT m.redis_key) FILTER (WHERE m.redis_key IS NOT NULL), '{}') \
         FROM message_rows m JOIN conversations c ON c.id = m.conversation WHERE c.conversation_id = ANY($1)",
    )
    .bind(ids)
    .fetch_one(&mut *c)
    .await?;
    Ok(Erased {
        conversations: stored.len() as u64,
        ids: stored,
        messages: messages as u64,
        keys: keys.into_iter().chain(message_keys).collect(),
        ..Erased::default()
    })
}

/// LangGraph's rows of these threads, deleted unless a dry run. Returns the threads found; none
/// when its tables are not there.
async fn threads(c: &mut PgConnection, ids: &[String], dry_run: bool) -> sqlx::Result<Vec<String>> {
    let exists: bool = query_scalar("SELECT to_regclass('checkpoints') IS NOT NULL")
        .fetch_one(&mut *c)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    let found: Vec<String> =
        query_scalar("SELECT DISTINCT thread_id FROM checkpoints WHERE thread_id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut *c)
            .await?;
    if !dry_run {
        for table in ["checkpoint_writes", "checkpoint_blobs", "checkpoints"] {
            query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE thread_id = ANY($1)"
            )))
            .bind(ids)
            .execute(&mut *c)
            .await?;
        }
    }
    Ok(found)
}

/// The tombstones of the conversations and of their keys (their late rejects).
async fn tombstones(c: &mut PgConnection, ids: &[String], keys: &[String]) -> sqlx::Result<()> {
    let kinds: Vec<&str> = ids
        .iter()
        .map(|_| CONVERSATION)
        .chain(keys.iter().map(|_| KEY))
        .collect();
    let names: Vec<&str> = ids.iter().chain(keys).map(String::as_str).collect();
    query(
        "INSERT INTO erased (id_hash) SELECT sweeper_erasure_hash(k, n) FROM unnest($1::text[], $2::text[]) AS t(k, n) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&kinds)
    .bind(&names)
    .execute(c)
    .await?;
    Ok(())
}

/// Writes a receipt; returns its id.
async fn record(c: &mut PgConnection, r: &Request, e: &Erased) -> sqlx::Result<String> {
    query_scalar(
        "INSERT INTO erasures (action, scope, requested, older_than_s, reason, host, os_user, conversations, messages, rejects) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING receipt::text",
    )
    .bind(r.action)
    .bind(r.scope)
    .bind(r.requested as i32)
    .bind(r.older_than_s)
    .bind(&r.reason)
    .bind(super::runs::hostname())
    .bind(os_user())
    .bind(e.conversations as i64)
    .bind(e.messages as i64)
    .bind(e.rejects as i64)
    .fetch_one(c)
    .await
}

/// The operating-system user running this, for the receipt.
fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        // SAFETY: getuid cannot fail and touches no memory.
        .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }))
}
