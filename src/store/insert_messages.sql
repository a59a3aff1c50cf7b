-- New messages of a batch, numbered after the conversation's stored ones. Existing ones are left
-- as they are (a message is stored once). Returns the conversation of each message added.
WITH input AS (
    SELECT t.conversation, t.message_key::uuid AS message_key, t.pos, t.message_id, t.role, t.content,
           t.created_at, t.redis_key, t.element
    FROM unnest($1::int8[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
                $9::text[], $10::text[])
         AS t(conversation, message_key, pos, message_id, role, content, created_at, redis_key, element)
),
fresh AS (
    SELECT i.*
    FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM message_rows m
                      WHERE m.conversation = i.conversation AND m.message_key = i.message_key)
),
top AS (
    SELECT m.conversation, max(m.seq) AS seq
    FROM message_rows m
    WHERE m.conversation IN (SELECT DISTINCT conversation FROM fresh)
    GROUP BY m.conversation
)
INSERT INTO message_rows (conversation, message_key, seq, message_id, role, content, created_at, run_id,
                          redis_key, element)
SELECT f.conversation, f.message_key,
       (coalesce(top.seq, -1) + row_number() OVER (PARTITION BY f.conversation ORDER BY f.pos))::int,
       f.message_id, f.role, f.content, f.created_at, $8, f.redis_key, f.element::jsonb
FROM fresh f LEFT JOIN top USING (conversation)
ON CONFLICT (conversation, message_key) DO NOTHING
RETURNING conversation
