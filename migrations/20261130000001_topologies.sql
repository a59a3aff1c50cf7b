-- The single-run lock as a lease row: an owner and an expiry the run renews while it lives.
-- A session's advisory lock leaks onto an idle server connection behind a pooler in transaction
-- mode (later runs skip) or is shared by two clients (both run); a row taken and renewed in short
-- transactions cannot be either. Replaces pg_try_advisory_lock.
CREATE TABLE sweep_leases (
    lock_key   bigint PRIMARY KEY,
    -- The pattern (and shard) swept, for people.
    name       text NOT NULL,
    -- `host pid nanos` of the run holding it.
    owner      text NOT NULL,
    taken_at   timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

-- Redis's `evicted_keys` when the run started, so that the next run counts the evictions since
-- (a Redis under memory pressure evicts keys before their TTL runs out: with volatile-ttl, the
-- due ones first). NULL when Redis would not say.
ALTER TABLE sweep_runs ADD COLUMN redis_evicted_total bigint;
