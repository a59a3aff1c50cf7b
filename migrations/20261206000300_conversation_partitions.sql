-- `conversations` in the same partitions as `message_rows` (ranges of the conversation id), so
-- that a prune empties an old range of both with one TRUNCATE. Deleting an old conversation's
-- row is the costly part of retention on a production server (full_page_writes on): its page
-- was last written before the latest checkpoint, so the first change writes the whole page
-- again, and a conversation row holds its whole checkpoint document (a few to a page). Measured
-- before this migration at 100000 conversations of 10 message rows: a prune wrote 1.6x less WAL
-- than one DELETE; most of it was those pages.
--
-- A partitioned table can only enforce uniqueness of keys that hold the partition key, so the
-- uniqueness of `conversation_id` moves to a narrow table of its own, `conversation_ids`
-- (id, conversation_id): the one row per conversation a prune still deletes one by one (about 75
-- bytes, a hundred to a page). Every conversation row and message row references it; a
-- conversation's id never changes.

-- `sweeper migrate` applies every migration in one transaction: rows an earlier one wrote have
-- their deferred checks pending, which ALTER TABLE refuses (as in 20261203000001).
SET CONSTRAINTS ALL IMMEDIATE;

-- The id sequence: the old one belongs to the old table's identity column and goes with it.
CREATE SEQUENCE conversation_ids_id_seq;
SELECT setval('conversation_ids_id_seq', s.last_value, s.is_called) FROM conversations_id_seq s;

ALTER TABLE conversations RENAME TO conversations_unpartitioned;
ALTER TABLE conversations_unpartitioned RENAME CONSTRAINT conversations_pkey TO conversations_unpartitioned_pkey;
ALTER TABLE conversations_unpartitioned RENAME CONSTRAINT conversations_id TO conversations_unpartitioned_id;
ALTER INDEX conversations_user_id RENAME TO conversations_unpartitioned_user_id;
DROP TRIGGER conversations_keep_message_text ON conversations_unpartitioned;
ALTER TABLE message_rows DROP CONSTRAINT message_rows_conversation_fkey;
-- Its argument type is the old table's row type.
DROP FUNCTION sweeper_replaces(conversations_unpartitioned, conversations_unpartitioned);

CREATE TABLE conversation_ids (
    id              bigint PRIMARY KEY DEFAULT nextval('conversation_ids_id_seq'),
    conversation_id text NOT NULL UNIQUE
);
ALTER SEQUENCE conversation_ids_id_seq OWNED BY conversation_ids.id;

-- The columns in the old order (the row type is read whole: survivors written back by a prune).
CREATE TABLE conversations (
    conversation_id     text NOT NULL,
    user_id             text,
    redis_key           text NOT NULL,
    checkpoint          jsonb NOT NULL,
    checkpoint_messages integer NOT NULL,
    message_count       integer NOT NULL,
    content_hash        bytea NOT NULL,
    started_at          timestamptz,
    updated_at          timestamptz,
    first_persisted_at  timestamptz NOT NULL DEFAULT now(),
    last_persisted_at   timestamptz NOT NULL DEFAULT now(),
    last_run_id         bigint REFERENCES sweep_runs (id) ON DELETE SET NULL,
    -- Deferred: a batch writes its conversations' ids and rows in one transaction, in any order.
    id                  bigint NOT NULL
                        REFERENCES conversation_ids (id) DEFERRABLE INITIALLY DEFERRED,
    PRIMARY KEY (id)
) PARTITION BY RANGE (id);
CREATE INDEX conversations_conversation_id ON conversations (conversation_id);
CREATE INDEX conversations_user_id ON conversations (user_id);
CREATE TABLE conversations_default PARTITION OF conversations DEFAULT;

CREATE FUNCTION sweeper_replaces(n conversations, o conversations) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT (coalesce(n.updated_at, '-infinity'), n.checkpoint_messages)
               > (coalesce(o.updated_at, '-infinity'), o.checkpoint_messages)
        OR ((coalesce(n.updated_at, '-infinity'), n.checkpoint_messages)
               = (coalesce(o.updated_at, '-infinity'), o.checkpoint_messages)
            AND n.content_hash <> o.content_hash)
$$;

CREATE TRIGGER conversations_keep_message_text AFTER UPDATE ON conversations FOR EACH ROW
    WHEN (OLD.checkpoint IS DISTINCT FROM NEW.checkpoint) EXECUTE FUNCTION sweeper_keep_message_text();

-- Makes the partitions [lo, hi) of both tables: made apart and attached (the parents locked only
-- in SHARE UPDATE EXCLUSIVE mode: sweeps write on); rows the DEFAULT partitions caught in the
-- range move in first.
CREATE OR REPLACE FUNCTION sweeper_make_message_partition(lo bigint, hi bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['conversations', 'message_rows'] LOOP
        EXECUTE format('CREATE TABLE %I (LIKE %I)', t || '_' || lo, t);
        EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= %s AND %I < %s RETURNING *)
                        INSERT INTO %I SELECT * FROM moved', t || '_default',
                       CASE t WHEN 'conversations' THEN 'id' ELSE 'conversation' END, lo,
                       CASE t WHEN 'conversations' THEN 'id' ELSE 'conversation' END, hi, t || '_' || lo);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)', t, t || '_' || lo, lo, hi);
    END LOOP;
END
$$;

-- The partitions `conversations` needs beside those `message_rows` has, and the rows.
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT * FROM sweeper_message_partitions() LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF conversations FOR VALUES FROM (%s) TO (%s)',
                       'conversations_' || p.lo, p.lo, p.hi);
    END LOOP;
END
$$;
INSERT INTO conversation_ids (id, conversation_id) SELECT id, conversation_id FROM conversations_unpartitioned;
INSERT INTO conversations SELECT * FROM conversations_unpartitioned;

-- Every message row's conversation is known by its id (a message must never outlive or miss
-- its conversation: forget and prune delete both in one transaction). Referencing the narrow
-- table, not `conversations`: a partition of a table that others reference cannot be emptied
-- by TRUNCATE alone.
ALTER TABLE message_rows ADD CONSTRAINT message_rows_conversation_fkey FOREIGN KEY (conversation)
    REFERENCES conversation_ids (id) DEFERRABLE INITIALLY DEFERRED;

-- Prunes the closed range starting at `lower_bound` to `cutoff` whole, when at most the share
-- `max_survivors` of its conversations were updated since the cutoff (survivors: a
-- conversation resumed). In the caller's transaction: both partitions locked, the survivors'
-- rows read into memory, both emptied by one TRUNCATE (no WAL per row, nothing left for
-- VACUUM), the survivors' rows written back (their ids never change), and the range entered in
-- `pruned_ranges`, whose ids sweeper_forget_pruned_ids() deletes next. A sweep writing a
-- conversation of the range
-- takes its conversation row first, then its message rows, as this does: a sweep holding a
-- lock makes this one wait, at most lock_timeout ('busy'); one that waits for this one finds
-- the conversation gone (its batch fails the key check and is written again, as a new
-- conversation) or a survivor. Survivors' partitions go whole at a later prune, once they are
-- past the window too. Returns the conversations and messages deleted and the survivors kept;
-- outcome 'pruned', 'busy' (nothing changed), 'kept' (too many survivors: the caller deletes
-- rows instead), 'open' (ids may still be drawn in its range) or 'gone'.
CREATE OR REPLACE FUNCTION sweeper_prune_message_partition(lower_bound bigint, cutoff timestamptz, max_survivors real)
RETURNS TABLE (outcome text, conversations_deleted bigint, messages_deleted bigint, survivors bigint)
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '200ms' AS $$
DECLARE
    p          record;
    newest     bigint;
    kept       bigint;
    total      bigint;
    n_msg      bigint;
    convs_kept conversations[];
    ids_kept   bigint[];
    rows_kept  message_rows[];
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
        EXECUTE format('LOCK TABLE %I, %s IN ACCESS EXCLUSIVE MODE', 'conversations_' || p.lo, p.part);
        -- Read through the parents (pruned to this range): rows of their types.
        SELECT coalesce(array_agg(c) FILTER (WHERE coalesce(c.updated_at, c.last_persisted_at) >= cutoff), '{}'),
               count(*)
        INTO convs_kept, total FROM conversations c WHERE c.id >= p.lo AND c.id < p.hi;
        ids_kept := ARRAY(SELECT (k).id FROM unnest(convs_kept) k);
        SELECT count(*), coalesce(array_agg(m) FILTER (WHERE m.conversation = ANY (ids_kept)), '{}')
        INTO n_msg, rows_kept
        FROM message_rows m WHERE m.conversation >= p.lo AND m.conversation < p.hi;
        EXECUTE format('TRUNCATE %I, %s', 'conversations_' || p.lo, p.part);
        INSERT INTO conversations SELECT * FROM unnest(convs_kept);
        INSERT INTO message_rows SELECT * FROM unnest(rows_kept);
        INSERT INTO pruned_ranges VALUES (p.lo, p.hi) ON CONFLICT DO NOTHING;
    EXCEPTION WHEN lock_not_available THEN
        RETURN QUERY SELECT 'busy', 0::int8, 0::int8, 0::int8;
        RETURN;
    END;
    RETURN QUERY SELECT 'pruned', total - cardinality(convs_kept), n_msg - cardinality(rows_kept),
                        cardinality(convs_kept)::int8;
END
$$;

-- The ranges a prune emptied whose ids are still in `conversation_ids`. Deleting them, one row
-- each, is left out of the prune of the partitions: the keys check each deleted id against
-- both tables at commit (1.3 s for 20000 ids), which would hold the partitions' locks, and so
-- the sweeps writing there, that much longer; in batches after, each holds only its ids.
CREATE TABLE pruned_ranges (
    lo bigint PRIMARY KEY,
    hi bigint NOT NULL
);

-- Deletes from `conversation_ids` at most `batch` ids of the first range in `pruned_ranges`
-- that no conversation holds (a survivor's, or a conversation a sweep wrote again since, keeps
-- its id), in the caller's transaction, and takes the range off the list once none is left.
-- Returns how many, -1 when no range is left. In batches: a sweep writing one of these
-- conversations again waits for the transaction that deletes its id (then retries it as a new
-- conversation); a batch of 1000 takes ~0.1 s, a range of 20000 ~1.3 s. (If the sweep's commit
-- comes first, this one fails the key, and the range waits for the next prune.)
CREATE FUNCTION sweeper_forget_pruned_ids(batch integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    r pruned_ranges;
    n bigint;
BEGIN
    SELECT * INTO r FROM pruned_ranges ORDER BY lo LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    -- Message rows another writer added to a conversation of the range after its prune (the
    -- key lets them: it is checked against the id, not the conversation row) go with it.
    DELETE FROM message_rows m WHERE m.conversation >= r.lo AND m.conversation < r.hi
        AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.id = m.conversation);
    DELETE FROM conversation_ids d WHERE d.id IN (
        SELECT x.id FROM conversation_ids x WHERE x.id >= r.lo AND x.id < r.hi
            AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.id = x.id)
        ORDER BY x.id LIMIT batch);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n < batch THEN
        DELETE FROM pruned_ranges WHERE lo = r.lo;
    END IF;
    RETURN n;
END
$$;

-- Drops the closed partitions of both tables left empty (pruned ones). Dropping takes the
-- parents' ACCESS EXCLUSIVE locks, for an instant; one not had within lock_timeout is left to
-- the next prune. (A sweep still holding an id it drew in a dropped range writes its rows to
-- the DEFAULT partitions.) Returns how many ranges it dropped.
CREATE OR REPLACE FUNCTION sweeper_drop_empty_message_partitions() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET lock_timeout = '200ms' AS $$
DECLARE
    p       record;
    newest  bigint := (SELECT last_value FROM conversations_id_seq);
    empty   boolean;
    dropped integer := 0;
BEGIN
    FOR p IN SELECT * FROM sweeper_message_partitions() x WHERE x.hi <= newest LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM conversation_ids d WHERE d.id >= p.lo AND d.id < p.hi);
        BEGIN
            LOCK TABLE ONLY conversations, ONLY message_rows IN ACCESS EXCLUSIVE MODE;
            EXECUTE format('LOCK TABLE %I, %s IN ACCESS EXCLUSIVE MODE', 'conversations_' || p.lo, p.part);
            EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM %I) AND NOT EXISTS (SELECT 1 FROM %s)',
                           'conversations_' || p.lo, p.part) INTO empty;
            IF empty THEN
                EXECUTE format('DROP TABLE %I, %s', 'conversations_' || p.lo, p.part);
                dropped := dropped + 1;
            END IF;
        EXCEPTION WHEN lock_not_available THEN
            RETURN dropped;
        END;
    END LOOP;
    RETURN dropped;
END
$$;

-- A prune closes the range ids are drawn in now once its first conversation is older than
-- `close_after`: the sequence moves on to the next range. Run daily, prunes so cut the ranges at
-- their own times, a day each, and a window later a whole range is past the window at once,
-- where a range holding several days would be crossed by the window's edge over several
-- prunes, most of its rows deleted one by one. (Ids are not scarce: a bigint.)
ALTER TABLE message_partitioning ADD COLUMN close_after interval NOT NULL DEFAULT '1 hour'
    CHECK (close_after >= '0');

-- Closes the range the next id would be drawn in, when it holds a conversation first saved more
-- than `close_after` ago, by drawing the ids left in it (concurrent writers draw theirs as
-- ever: the sequence only moves forward). Returns the range's lower bound, NULL when it stays
-- open.
CREATE FUNCTION sweeper_close_open_range() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    p     record;
    next  bigint;
    first timestamptz;
    v     bigint;
BEGIN
    SELECT CASE WHEN s.is_called THEN s.last_value + 1 ELSE s.last_value END INTO next
    FROM conversations_id_seq s;
    SELECT * INTO p FROM sweeper_message_partitions() x WHERE x.lo < next AND next < x.hi;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT c.first_persisted_at INTO first FROM conversations c
    WHERE c.id >= p.lo AND c.id < p.hi ORDER BY c.id LIMIT 1;
    IF first IS NULL OR first > now() - (SELECT close_after FROM message_partitioning) THEN
        RETURN NULL;
    END IF;
    LOOP
        v := nextval('conversations_id_seq');
        EXIT WHEN v >= p.hi;
    END LOOP;
    PERFORM sweeper_extend_message_partitions();
    RETURN p.lo;
END
$$;

-- The sequence and the functions that read it by name.
CREATE OR REPLACE FUNCTION sweeper_extend_message_partitions() RETURNS integer
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
                       (SELECT max(id) FROM conversation_ids), 0);
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

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['sweeper_make_message_partition(bigint, bigint)',
                             'sweeper_extend_message_partitions()',
                             'sweeper_prune_message_partition(bigint, timestamptz, real)',
                             'sweeper_drop_empty_message_partitions()',
                             'sweeper_forget_pruned_ids(integer)',
                             'sweeper_close_open_range()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
    END LOOP;
END
$$;

REVOKE EXECUTE ON FUNCTION sweeper_forget_pruned_ids(integer), sweeper_close_open_range() FROM PUBLIC;

-- The view reads the new table (CREATE OR REPLACE keeps its grants).
CREATE OR REPLACE VIEW messages AS
SELECT c.conversation_id,
       CASE WHEN m.message_id IS NULL THEN 'h:' || replace(m.message_key::text, '-', '')
            ELSE 'id:' || m.message_id END AS message_key,
       m.seq, m.message_id, m.role,
       coalesce(m.content, c.checkpoint->'messages'->m.seq->>'content') AS content,
       m.created_at, m.run_id, m.redis_key, m.element
FROM message_rows m LEFT JOIN conversations c ON c.id = m.conversation;

-- The grants the old table and sequence had, on the new ones (the narrow table as the
-- conversations: a sweep's role writes both, an eraser's deletes both).
DO $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT a.privilege_type, a.grantee
             FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = 'conversations_unpartitioned'::regclass AND a.grantee <> c.relowner LOOP
        EXECUTE format('GRANT %s ON conversations, conversation_ids TO %s', g.privilege_type,
                       CASE g.grantee WHEN 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END);
    END LOOP;
    FOR g IN SELECT a.privilege_type, a.grantee
             FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = 'conversations_id_seq'::regclass AND a.grantee <> c.relowner LOOP
        EXECUTE format('GRANT %s ON SEQUENCE conversation_ids_id_seq TO %s', g.privilege_type,
                       CASE g.grantee WHEN 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END);
    END LOOP;
END
$$;

DROP TABLE conversations_unpartitioned;
-- The old name, which writers and grants know.
ALTER SEQUENCE conversation_ids_id_seq RENAME TO conversations_id_seq;

SET CONSTRAINTS ALL DEFERRED;
