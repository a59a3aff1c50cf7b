-- Values that are not checkpoints, kept for inspection. The same bad value seen again (same key,
-- same hash) bumps last_seen_at and seen_count instead of adding a row.
INSERT INTO sweep_rejects AS r (redis_key, value_hash, reason, raw, raw_size, first_run_id, last_run_id)
SELECT t.redis_key, t.value_hash, t.reason, t.raw, t.raw_size, $6, $6
FROM unnest($1::text[], $2::bytea[], $3::text[], $4::bytea[], $5::int8[])
     AS t(redis_key, value_hash, reason, raw, raw_size)
ON CONFLICT (redis_key, value_hash) DO UPDATE SET
    last_seen_at = now(),
    seen_count = r.seen_count + 1,
    last_run_id = excluded.last_run_id
