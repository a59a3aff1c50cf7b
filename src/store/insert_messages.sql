-- New messages of a batch, numbered after the conversation's stored ones. Existing ones are left
-- as they are (a message is stored once). Returns the conversation of each message added.
WITH input AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
                $9::text[], $10::text[])
         AS t(conversation_id, message_key, pos, message_id, role, content, created_at, redis_key, element)
),
fresh AS (
    SELECT i.*
    FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM messages m
                      WHERE m.conversation_id = i.conversation_id AND m.message_key = i.message_key)
),
top AS (
    SELECT m.conversation_id, max(m.seq) AS seq
    FROM messages m
    WHERE m.conversation_id IN (SELECT DISTINCT conversation_id FROM fresh)
    GROUP BY m.conversation_id
)
INSERT INTO messages (conversation_id, message_key, seq, message_id, role, content, created_at, run_id,
                      redis_key, element)
SELECT f.conversation_id, f.message_key,
       (coalesce(top.seq, -1) + row_number() OVER (PARTITION BY f.conversation_id ORDER BY f.pos))::int,
       f.message_id, f.role, f.content, f.created_at, $8, f.redis_key, f.element::jsonb
FROM fresh f LEFT JOIN top USING (conversation_id)
ON CONFLICT (conversation_id, message_key) DO NOTHING
RETURNING conversation_id
