-- Messages of conversations not stored yet (checked under the batch lock): numbered by the
-- caller, nothing to look up. Returns the conversation of each message added.
INSERT INTO messages (conversation_id, message_key, seq, message_id, role, content, created_at, run_id)
SELECT t.*, $8
FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
     AS t(conversation_id, message_key, seq, message_id, role, content, created_at)
ON CONFLICT (conversation_id, message_key) DO NOTHING
RETURNING conversation_id
