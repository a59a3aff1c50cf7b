-- message_rows in partitions by ranges of the conversation id, so that retention (`sweeper
-- prune`) drops old messages a partition at a time: a TRUNCATE writes a few hundred bytes of WAL
-- where deleting the same rows one by one writes ~55 bytes each, and leaves nothing for VACUUM.
-- Conversation ids are drawn in order, so old conversations fill old partitions. A prune empties
-- an old partition but for the rows of the few conversations of its range updated since
-- (survivors), deletes the range's other conversation rows, and drops the partition once it
-- holds nothing. A DEFAULT partition catches rows outside every range (partitions are made
-- ahead of the id sequence, but that can fail: a lock not had in time).

-- `sweeper migrate` applies every migration in one transaction: rows an earlier one wrote have
-- their deferred checks pending, which ALTER TABLE refuses (as in 20261203000001).
SET CONSTRAINTS ALL IMMEDIATE;

-- How partitions are cut: one row. `span` conversation ids per partition: a prune empties a
-- partition and deletes its conversation rows in one transaction, which a sweep writing one of
-- them waits for; smaller spans mean more partitions (each one more relation to lock and plan). `ahead`: how many spans past the
-- newest conversation id are made in advance (by `migrate` and each sweep). A change applies
-- to the partitions made after it. `grace`: how long past the window a prune may leave the
-- conversations of a closed partition that too many conversations updated since keep from
-- going whole (the partition at the window's edge), waiting for it to go whole rather than
-- deleting them row by row; 0, the default, leaves none.
CREATE TABLE message_partitioning (
    one   boolean PRIMARY KEY DEFAULT true CHECK (one),
    span  bigint NOT NULL CHECK (span >= 100),
    ahead integer NOT NULL CHECK (ahead >= 1),
    grace interval NOT NULL DEFAULT '0' CHECK (grace >= '0')
);
INSERT INTO message_partitioning (span, ahead) VALUES (20000, 2);

ALTER TABLE message_rows RENAME TO message_rows_unpartitioned;
ALTER TABLE message_rows_unpartitioned RENAME CONSTRAINT message_rows_pkey TO message_rows_unpartitioned_pkey;
ALTER TABLE message_rows_unpartitioned
    RENAME CONSTRAINT message_rows_conversation_fkey TO message_rows_unpartitioned_conversation_fkey;

CREATE TABLE message_rows (
    -- Deferred: a batch writes messages before their conversation rows, in one transaction. No
    -- longer ON DELETE CASCADE (a cascade is not deferred: it would delete a pruned
    -- conversation's message rows one by one, before the prune empties their partition); every
    -- delete of a conversation deletes its message rows in the same transaction (forget, prune),
    -- which the key checks at commit.
    conversation bigint NOT NULL
                 REFERENCES conversations (id) DEFERRABLE INITIALLY DEFERRED,
    message_key  uuid NOT NULL,
    run_id       bigint,
    created_at   timestamptz,
    seq          integer NOT NULL,
    message_id   text,
    role         text NOT NULL,
    content      text,
    redis_key    text,
    element      jsonb,
    PRIMARY KEY (conversation, message_key)
) PARTITION BY RANGE (conversation);

CREATE TABLE message_rows_default PARTITION OF message_rows DEFAULT;

-- The ranged partitions of message_rows and their bounds [lo, hi), from the catalog.
CREATE FUNCTION sweeper_message_partitions() RETURNS TABLE (part regclass, lo bigint, hi bigint)
LANGUAGE sql STABLE AS $$
    SELECT c.oid::regclass, b[1]::bigint, b[2]::bigint
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                    'FROM \(''?(-?\d+)''?\) TO \(''?(-?\d+)''?\)') AS b
    WHERE i.inhparent = 'message_rows'::regclass AND b IS NOT NULL
    ORDER BY 2
$$;

-- Makes the partition [lo, hi): made apart and attached, which locks message_rows only in SHARE
-- UPDATE EXCLUSIVE mode (sweeps write on); rows the DEFAULT partition caught in the range move
-- in first (ATTACH refuses a range the DEFAULT partition holds rows of).
CREATE FUNCTION sweeper_make_message_partition(lo bigint, hi bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    name text := format('message_rows_%s', lo);
BEGIN
    EXECUTE format('CREATE TABLE %I (LIKE message_rows)', name);
    EXECUTE format('WITH moved AS (DELETE FROM message_rows_default WHERE conversation >= %s AND conversation < %s RETURNING *)
                    INSERT INTO %I SELECT * FROM moved', lo, hi, name);
    EXECUTE format('ALTER TABLE message_rows ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)', name, lo, hi);
END
$$;

-- Partitions made ahead of the id sequence (or of an id written past it), `ahead` spans past
-- the newest; returns how many it made, 0 when another call is making them, -1 when a lock
-- was not had within lock_timeout (sweeps go on: the DEFAULT partition takes their rows, and
-- the next call moves them). Called by `migrate` and at the start of each sweep, as the
-- owner of the tables (SECURITY DEFINER): a sweep's role needs no CREATE.
CREATE FUNCTION sweeper_extend_message_partitions() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '200ms' AS $$
DECLARE
    s      message_partitioning;
    newest bigint;
    hi     bigint;
    made   integer := 0;
BEGIN
    IF NOT pg_try_advisory_xact_lock(8319381245402718548) THEN
        RETURN 0;
    END IF;
    SELECT * INTO s FROM message_partitioning;
    newest := greatest((SELECT last_value FROM conversations_id_seq),
                       (SELECT max(id) FROM conversations), 0);
    hi := coalesce((SELECT max(p.hi) FROM sweeper_message_partitions() p), 0);
    WHILE hi <= newest + s.span * s.ahead LOOP
        PERFORM sweeper_make_message_partition(hi, hi + s.span);
        hi := hi + s.span;
        made := made + 1;
    END LOOP;
    RETURN made;
EXCEPTION WHEN lock_not_available THEN
    RETURN -1;
END
$$;

-- Prunes the closed partition starting at `lower_bound` to `cutoff` whole, when at most the
-- share `max_survivors` of its conversations were updated since the cutoff (survivors: a
-- conversation resumed). In the caller's transaction:
--   1. the range's conversation rows past the cutoff are deleted (~55 bytes of WAL each, the
--      floor: conversations are not partitioned). A sweep writing one waits for the commit, then
--      finds it gone (its batch fails the key check and is written again, as a new
--      conversation); one a sweep made recent meanwhile is left, a survivor;
--   2. the partition is locked, the rows of the conversations left in the range read into memory,
--      the partition emptied (TRUNCATE: no WAL per row, nothing left for VACUUM) and those rows
--      written back. The key, checked at commit, finds no row of a deleted conversation.
-- In that order a sweep that holds a conversation row and waits for the partition is not met
-- (the rows are taken first, as a sweep takes them). Survivors keep their ids, and their
-- partition, now holding only their rows, goes whole at a later prune, once they are past the
-- window too. (Giving them fresh ids in the open partition instead also rewrites each survivor's
-- conversation row: 23% more WAL per partition of 20000 conversations, 1% of them survivors.)
-- Returns the conversations and messages deleted and the survivors kept; outcome 'pruned',
-- 'busy' (a lock not had within lock_timeout, nothing changed), 'kept' (too many survivors: the
-- caller deletes rows instead), 'open' (ids may still be drawn in its range) or 'gone'.
CREATE FUNCTION sweeper_prune_message_partition(lower_bound bigint, cutoff timestamptz, max_survivors real)
RETURNS TABLE (outcome text, conversations_deleted bigint, messages_deleted bigint, survivors bigint)
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '200ms' AS $$
DECLARE
    p         record;
    newest    bigint;
    kept      bigint;
    total     bigint;
    n_conv    bigint;
    n_msg     bigint;
    rows_kept message_rows[];
BEGIN
    SELECT * INTO p FROM sweeper_message_partitions() x WHERE x.lo = lower_bound;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'gone', 0::int8, 0::int8, 0::int8;
        RETURN;
    END IF;
    newest := (SELECT last_value FROM conversations_id_seq);
    IF p.hi > newest THEN
        RETURN QUERY SELECT 'open', 0::int8, 0::int8, 0::int8;
        RETURN;
    END IF;
    SELECT count(*), count(*) FILTER (WHERE coalesce(c.updated_at, c.last_persisted_at) >= cutoff)
    INTO total, kept FROM conversations c WHERE c.id >= p.lo AND c.id < p.hi;
    IF kept > total * max_survivors THEN
        RETURN QUERY SELECT 'kept', 0::int8, 0::int8, kept;
        RETURN;
    END IF;
    BEGIN
        DELETE FROM conversations c WHERE c.id >= p.lo AND c.id < p.hi
            AND coalesce(c.updated_at, c.last_persisted_at) < cutoff;
        GET DIAGNOSTICS n_conv = ROW_COUNT;
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', p.part);
        -- Read through message_rows (pruned to this partition): rows of its type.
        SELECT count(*), array_agg(m) FILTER (WHERE m.conversation IN (
                   SELECT c.id FROM conversations c WHERE c.id >= p.lo AND c.id < p.hi))
        INTO n_msg, rows_kept
        FROM message_rows m WHERE m.conversation >= p.lo AND m.conversation < p.hi;
        EXECUTE format('TRUNCATE %s', p.part);
        INSERT INTO message_rows SELECT * FROM unnest(rows_kept);
        kept := (SELECT count(*) FROM conversations c WHERE c.id >= p.lo AND c.id < p.hi);
    EXCEPTION WHEN lock_not_available THEN
        RETURN QUERY SELECT 'busy', 0::int8, 0::int8, 0::int8;
        RETURN;
    END;
    RETURN QUERY SELECT 'pruned', n_conv, n_msg - coalesce(cardinality(rows_kept), 0), kept;
END
$$;

-- The conversations a prune to `cutoff` deletes: those last updated before it, but for those of
-- a closed partition whose conversations updated since are more than the share `max_survivors`
-- (it cannot go whole yet), which wait until they are `grace` older. In id order. (`held` is
-- computed once: inlined, it was computed again for each conversation.)
CREATE FUNCTION sweeper_prunable(cutoff timestamptz, max_survivors real) RETURNS SETOF bigint
LANGUAGE sql STABLE AS $$
    WITH closed AS (
        SELECT p.lo, p.hi FROM sweeper_message_partitions() p
        WHERE p.hi <= (SELECT max(id) FROM conversations)
    ), held AS MATERIALIZED (
        SELECT cl.lo, cl.hi FROM closed cl JOIN conversations c ON c.id >= cl.lo AND c.id < cl.hi
        GROUP BY cl.lo, cl.hi
        HAVING count(*) FILTER (WHERE coalesce(c.updated_at, c.last_persisted_at) >= cutoff)
               > count(*) * max_survivors
    )
    SELECT c.id FROM conversations c
    WHERE coalesce(c.updated_at, c.last_persisted_at) < cutoff
      AND (coalesce(c.updated_at, c.last_persisted_at) < cutoff - (SELECT grace FROM message_partitioning)
           OR NOT EXISTS (SELECT 1 FROM held h WHERE c.id >= h.lo AND c.id < h.hi))
    ORDER BY c.id
$$;

-- Drops the closed partitions left empty and with no conversation in their range (pruned
-- ones). Dropping takes message_rows' ACCESS EXCLUSIVE lock, for an instant; one not had
-- within lock_timeout is left to the next prune. (A sweep still holding an id it drew in a
-- dropped range writes its rows to the DEFAULT partition.) Returns how many it dropped.
CREATE FUNCTION sweeper_drop_empty_message_partitions() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '200ms' AS $$
DECLARE
    p       record;
    newest  bigint := (SELECT last_value FROM conversations_id_seq);
    empty   boolean;
    dropped integer := 0;
BEGIN
    FOR p IN SELECT * FROM sweeper_message_partitions() x WHERE x.hi <= newest LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM conversations c WHERE c.id >= p.lo AND c.id < p.hi);
        BEGIN
            LOCK TABLE ONLY message_rows IN ACCESS EXCLUSIVE MODE;
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', p.part);
            EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM %s)', p.part) INTO empty;
            IF empty THEN
                EXECUTE format('DROP TABLE %s', p.part);
                dropped := dropped + 1;
            END IF;
        EXCEPTION WHEN lock_not_available THEN
            RETURN dropped;
        END;
    END LOOP;
    RETURN dropped;
END
$$;

-- Pinned to this schema and pg_temp last (a SECURITY DEFINER function must not find another
-- role's objects first); only the roles `sweeper grants` names may run the ones that change
-- the tables.
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['sweeper_message_partitions()', 'sweeper_make_message_partition(bigint, bigint)',
                             'sweeper_extend_message_partitions()',
                             'sweeper_prune_message_partition(bigint, timestamptz, real)',
                             'sweeper_drop_empty_message_partitions()',
                             'sweeper_prunable(timestamptz, real)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
    END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION sweeper_make_message_partition(bigint, bigint),
    sweeper_extend_message_partitions(), sweeper_prune_message_partition(bigint, timestamptz, real),
    sweeper_drop_empty_message_partitions() FROM PUBLIC;

-- The partitions the rows already stored need, and the rows, every one.
SELECT sweeper_extend_message_partitions();
INSERT INTO message_rows (conversation, message_key, run_id, created_at, seq, message_id, role, content,
                          redis_key, element)
SELECT conversation, message_key, run_id, created_at, seq, message_id, role, content, redis_key, element
FROM message_rows_unpartitioned;

-- The view reads the new table (CREATE OR REPLACE keeps its grants).
CREATE OR REPLACE VIEW messages AS
SELECT c.conversation_id,
       CASE WHEN m.message_id IS NULL THEN 'h:' || replace(m.message_key::text, '-', '')
            ELSE 'id:' || m.message_id END AS message_key,
       m.seq, m.message_id, m.role,
       coalesce(m.content, c.checkpoint->'messages'->m.seq->>'content') AS content,
       m.created_at, m.run_id, m.redis_key, m.element
FROM message_rows m LEFT JOIN conversations c ON c.id = m.conversation;

-- The grants the old table had (a sweep's role's SELECT, INSERT, UPDATE; an eraser's DELETE).
-- Reads and writes through message_rows check only its own; its partitions need none.
DO $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT a.privilege_type, a.grantee
             FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = 'message_rows_unpartitioned'::regclass AND a.grantee <> c.relowner LOOP
        EXECUTE format('GRANT %s ON message_rows TO %s', g.privilege_type,
                       CASE g.grantee WHEN 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END);
    END LOOP;
END
$$;

DROP TABLE message_rows_unpartitioned;

SET CONSTRAINTS ALL DEFERRED;
