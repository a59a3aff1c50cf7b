-- Erasure (`sweeper forget`, `sweeper prune`): tombstones that keep an erased conversation out of
-- the archive for good, and a receipt per erasure, prune and restore. Neither holds a conversation
-- or user id in clear: a tombstone is a salted SHA-256 of what it stands for.

-- The salt, made here once per database: the same database always hashes an id the same way
-- (a tombstone written before `migrate` still matches after), and a tombstone copied elsewhere
-- cannot be matched against a list of guessed ids without it. 32 random bytes (two v4 UUIDs:
-- 244 random bits).
CREATE TABLE erasure_salt (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    salt bytea NOT NULL
);
INSERT INTO erasure_salt (salt)
VALUES (sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')));

-- The tombstone hash of `name` of a `kind`: 'conversation' (a conversation or LangGraph thread id)
-- or 'key' (a Redis key, so that a bad value written late under an erased key is not kept as a
-- reject either).
CREATE FUNCTION sweeper_erasure_hash(kind text, name text) RETURNS bytea
LANGUAGE sql STABLE STRICT AS $$
    SELECT sha256((SELECT salt FROM erasure_salt) || convert_to(kind || ':' || name, 'UTF8'))
$$;

CREATE TABLE erased (
    id_hash   bytea PRIMARY KEY,
    erased_at timestamptz NOT NULL DEFAULT now()
);

-- The batch write's check, in its transaction: which of these names are erased. It first takes
-- the erasure lock in shared mode (an erasure takes it exclusive), then reads the tombstones with
-- a snapshot taken after the lock (a volatile function's statements each take their own): a
-- `forget` committed while this batch waited is seen, and one that starts after waits for this
-- batch to commit before it deletes its rows. One statement, one index lookup per name.
CREATE FUNCTION sweeper_erased_among(kinds text[], names text[]) RETURNS SETOF text
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(8319381245402718547);
    RETURN QUERY
        SELECT t.kind || ':' || t.name FROM unnest(kinds, names) AS t(kind, name)
        WHERE EXISTS (SELECT 1 FROM erased e WHERE e.id_hash = sweeper_erasure_hash(t.kind, t.name));
END
$$;

-- One row per forget, prune and restore: what an auditor asks for. No id in clear.
CREATE TABLE erasures (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    receipt       uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    at            timestamptz NOT NULL DEFAULT now(),
    action        text NOT NULL CHECK (action IN ('forget', 'prune', 'restore')),
    scope         text NOT NULL CHECK (scope IN ('conversation', 'user', 'age')),
    -- How many conversations or users were named (forget), the window (prune).
    requested     integer NOT NULL DEFAULT 0,
    older_than_s  bigint,
    reason        text,
    host          text,
    os_user       text,
    conversations bigint NOT NULL DEFAULT 0,
    messages      bigint NOT NULL DEFAULT 0,
    rejects       bigint NOT NULL DEFAULT 0,
    -- Set once the Redis keys are deleted: NULL when the run stopped between PostgreSQL and Redis
    -- (a re-run finishes it and writes a receipt of its own).
    redis_keys    bigint,
    finished_at   timestamptz
);

CREATE INDEX erasures_at ON erasures (at DESC);

-- Keys a sweep found erased and left to their TTL.
ALTER TABLE sweep_runs ADD COLUMN erased bigint NOT NULL DEFAULT 0;

-- Pinned to the schema they were made in, as the trigger's function is (20261206000001): they
-- find `erasure_salt` and `erased` whoever calls them, whatever their search_path.
ALTER FUNCTION sweeper_erasure_hash(text, text) SET search_path FROM CURRENT;
ALTER FUNCTION sweeper_erased_among(text[], text[]) SET search_path FROM CURRENT;
