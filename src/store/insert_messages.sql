-- New messages of a batch, numbered after the conversation's stored ones. Existing ones are left
-- as they are (a message is stored once). Returns the conversation of each message added.
-- A new message's text is left out of its row ($11: its position in the batch's newest checkpoint
-- of its conversation, -1 when not there) when that checkpoint replaces the stored one (the
-- upsert that follows decides alike: sweeper_replaces) and holds the text at the message's seq,
-- past the end of the stored one's messages (so the trigger that keeps texts never takes it for
-- one of the stored document's). Both tables are partitioned by conversation id: every read of
-- them also names the batch's ids as a constant (`= ANY($1)`, `= ANY($12)`), so that PostgreSQL
-- plans only the partitions holding them, not all of them for each batch.
WITH input AS (
    SELECT t.conversation, t.message_key::uuid AS message_key, t.pos, t.message_id, t.role, t.content,
           t.created_at, t.redis_key, t.element, t.at
    FROM unnest($1::int8[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
                $9::text[], $10::text[], $11::int4[])
         AS t(conversation, message_key, pos, message_id, role, content, created_at, redis_key, element, at)
),
newest AS (
    SELECT c.id AS conversation,
           coalesce(jsonb_array_length(CASE jsonb_typeof(c.checkpoint->'messages')
                                            WHEN 'array' THEN c.checkpoint->'messages' END), 0) AS stored_len
    FROM unnest($12::int8[], $13::timestamptz[], $14::int4[], $15::bytea[])
         AS w(conversation, updated_at, checkpoint_messages, content_hash)
    JOIN conversations c ON c.id = w.conversation AND c.id = ANY($12::int8[])
    WHERE sweeper_replaces(jsonb_populate_record(c, jsonb_build_object(
              'updated_at', w.updated_at, 'checkpoint_messages', w.checkpoint_messages,
              'content_hash', '\x' || encode(w.content_hash, 'hex'))), c)
),
fresh AS (
    SELECT i.*
    FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM message_rows m
                      WHERE m.conversation = i.conversation AND m.message_key = i.message_key
                        AND m.conversation = ANY($1::int8[]))
),
top AS (
    SELECT m.conversation, max(m.seq) AS seq
    FROM message_rows m
    WHERE m.conversation IN (SELECT DISTINCT conversation FROM fresh) AND m.conversation = ANY($1::int8[])
    GROUP BY m.conversation
),
numbered AS (
    SELECT f.*,
           (coalesce(top.seq, -1) + row_number() OVER (PARTITION BY f.conversation ORDER BY f.pos))::int AS seq
    FROM fresh f LEFT JOIN top USING (conversation)
)
INSERT INTO message_rows (conversation, message_key, seq, message_id, role, content, created_at, run_id,
                          redis_key, element)
SELECT n.conversation, n.message_key, n.seq, n.message_id, n.role,
       CASE WHEN n.at = n.seq AND n.seq >= w.stored_len THEN NULL ELSE n.content END,
       n.created_at, $8, n.redis_key, n.element::jsonb
FROM numbered n LEFT JOIN newest w USING (conversation)
ON CONFLICT (conversation, message_key) DO NOTHING
RETURNING conversation
