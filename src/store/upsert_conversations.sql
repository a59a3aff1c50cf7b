-- One row per conversation: inserted, or updated when the checkpoint is newer than the stored one
-- (see sweeper_replaces) or messages were added. An unchanged checkpoint touches nothing
-- and returns no row. The id of a new row is drawn beforehand (its messages reference it); a
-- stored row keeps its own. A new id is entered in `conversation_ids` too, which keeps
-- conversation ids unique: a writer that lost a race for a new conversation (another committed
-- it first, under another id) inserts nothing there, and its rows fail the key at commit (the
-- batch is retried, and finds the stored id).
WITH ids AS (
    INSERT INTO conversation_ids (id, conversation_id)
    SELECT t.id, t.conversation_id FROM unnest($1::text[], $11::int8[]) AS t(conversation_id, id)
    ON CONFLICT DO NOTHING
)
INSERT INTO conversations AS c
    (id, conversation_id, user_id, redis_key, checkpoint, checkpoint_messages, message_count, content_hash,
     started_at, updated_at, last_run_id)
SELECT t.id, t.conversation_id, t.user_id, t.redis_key, t.checkpoint::jsonb, t.checkpoint_messages, t.added,
       t.content_hash, t.started_at, t.updated_at, $10
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int4[], $7::bytea[],
            $8::timestamptz[], $9::timestamptz[], $11::int8[])
     AS t(conversation_id, user_id, redis_key, checkpoint, checkpoint_messages, added, content_hash,
          started_at, updated_at, id)
ON CONFLICT (id) DO UPDATE SET
    -- Checkpoint fields come from whichever of the two rows is newer: the stored one never regresses.
    (user_id, redis_key, checkpoint, checkpoint_messages, content_hash, started_at, updated_at) =
        (SELECT (w).user_id, (w).redis_key, (w).checkpoint, (w).checkpoint_messages, (w).content_hash,
                (w).started_at, (w).updated_at
         FROM (SELECT CASE WHEN sweeper_replaces(excluded, c) THEN excluded ELSE c END AS w) AS winner),
    -- Here excluded.message_count is the number of messages this batch added.
    message_count = c.message_count + excluded.message_count,
    last_persisted_at = now(),
    last_run_id = excluded.last_run_id
WHERE sweeper_replaces(excluded, c) OR excluded.message_count > 0
RETURNING conversation_id
