//! The batch's conversations as stored: their ids, from `conversation_ids` (which keeps them
//! unique), and their content hashes, from `conversations`. `conversations` is partitioned by id
//! (a range a day or so), so its rows are read by their ids, a statement of its own: PostgreSQL
//! then plans only the partitions holding those ids. Joined to `conversation_ids` in one
//! statement, it planned every partition for each batch (90 ms with 400 ranges, 3.6 ms with 23).

use std::collections::HashMap;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};

type Tx<'t> = sqlx::Transaction<'t, sqlx::Postgres>;

/// The conversations of a batch as stored.
#[derive(Default)]
pub(super) struct Ids {
    /// Each conversation's row id: a new one drawn from the sequence when it is not stored.
    pub id: HashMap<String, i64>,
    /// The content hash of each conversation stored already.
    pub stored: HashMap<String, Vec<u8>>,
}

/// Each conversation asked for: its name, its id (drawn when not stored) and its stored hash.
type Found = Vec<(String, i64, Option<Vec<u8>>)>;

impl Ids {
    fn absorb(&mut self, found: Found) {
        for (name, id, hash) in found {
            match hash {
                Some(h) => self.stored.insert(name.clone(), h),
                // Deleted since the lookup: new again.
                None => self.stored.remove(&name),
            };
            self.id.insert(name, id);
        }
    }
}

/// Each conversation's id (a new one drawn for a conversation `conversation_ids` does not hold;
/// one it holds keeps its id even without a row, pruned a moment ago: its id is still taken),
/// whether it was there, and the conversation already holding a drawn id, if one does (the
/// sequence behind the stored ids, e.g. after a partial restore of a dump: the upsert, keyed by
/// id, would merge two conversations).
const IDS: &str = "WITH found AS MATERIALIZED (
        SELECT conversation_id, id FROM conversation_ids WHERE conversation_id = ANY($1)),
    drawn AS (
        SELECT t.conversation_id, coalesce(f.id, nextval('conversations_id_seq')) AS id, f.id IS NOT NULL AS known
        FROM unnest($1::text[]) AS t(conversation_id) LEFT JOIN found f USING (conversation_id))
    SELECT d.conversation_id, d.id, d.known,
           CASE WHEN NOT d.known THEN (SELECT x.conversation_id FROM conversation_ids x WHERE x.id = d.id) END
    FROM drawn d";
const HASHES: &str = "SELECT id, content_hash FROM conversations WHERE id = ANY($1)";
/// The stored rows of these ids, locked; a new id drawn for one deleted since.
const LOCK: &str = "WITH locked AS MATERIALIZED (
        SELECT id, content_hash FROM conversations WHERE id = ANY($1) FOR UPDATE)
    SELECT t.id, coalesce(l.id, nextval('conversations_id_seq')), l.content_hash
    FROM unnest($1::int8[]) AS t(id) LEFT JOIN locked l USING (id)";

/// Looks up `rows`; returns how many statements it sent (the hashes are not asked for when no
/// conversation of the batch is stored).
pub(super) async fn look_up(rows: &[&Checkpoint], ids: &mut Ids, tx: &mut Tx<'_>) -> Result<u64> {
    let names: Vec<&str> = rows.iter().map(|c| c.conversation_id.as_str()).collect();
    let found: Vec<(String, i64, bool, Option<String>)> = super::super::query_as(IDS)
        .bind(&names)
        .fetch_all(&mut **tx)
        .await
        .map_err(Error::postgres("look up conversations"))?;
    if let Some((name, id, _, Some(other))) = found.iter().find(|f| f.3.is_some()) {
        return Err(Error::Postgres {
            context: "look up conversations",
            source: sqlx::Error::Configuration(
                format!(
                    "id {id} drawn for conversation {name:?} is conversation {other:?}'s: the sequence \
                     conversations_id_seq is behind the stored ids; as the schema's owner run \
                     SELECT setval('conversations_id_seq', (SELECT max(id) FROM conversation_ids)) \
                     in its schema"
                )
                .into(),
            ),
        });
    }
    let known: Vec<i64> = found.iter().filter(|f| f.2).map(|f| f.1).collect();
    let hashes: HashMap<i64, Vec<u8>> = if known.is_empty() {
        HashMap::new()
    } else {
        super::super::query_as(HASHES)
            .bind(&known)
            .fetch_all(&mut **tx)
            .await
            .map_err(Error::postgres("look up conversations"))?
            .into_iter()
            .collect()
    };
    let statements = 1 + u64::from(!known.is_empty());
    ids.absorb(
        found
            .into_iter()
            .map(|(name, id, _, _)| {
                let hash = hashes.get(&id).cloned();
                (name, id, hash)
            })
            .collect(),
    );
    Ok(statements)
}

/// Locks the stored conversations about to change and reads their hash again. FOR UPDATE: a
/// concurrent writer of the same conversations (another sweep whose lock was lost with a
/// PostgreSQL restart) waits here; message numbering reads then writes. Two writers inserting the
/// same new conversation collide on a key (or on the id their messages reference) instead, which
/// is retried (see Error::is_transient).
pub(super) async fn lock(rows: &[&Checkpoint], ids: &mut Ids, tx: &mut Tx<'_>) -> Result<()> {
    let by_id: HashMap<i64, &str> = rows
        .iter()
        .map(|c| (ids.id[&c.conversation_id], c.conversation_id.as_str()))
        .collect();
    let old: Vec<i64> = by_id.keys().copied().collect();
    let locked: Vec<(i64, i64, Option<Vec<u8>>)> = super::super::query_as(LOCK)
        .bind(&old)
        .fetch_all(&mut **tx)
        .await
        .map_err(Error::postgres("look up conversations"))?;
    ids.absorb(
        locked
            .into_iter()
            .map(|(old, id, hash)| (by_id[&old].to_string(), id, hash))
            .collect(),
    );
    Ok(())
}
