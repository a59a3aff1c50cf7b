-- sweeper's schema: conversations saved from Redis checkpoints, their messages, runs and rejects.

CREATE TABLE sweep_runs (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    status              text NOT NULL DEFAULT 'running'
                        CHECK (status IN ('running', 'ok', 'partial', 'failed', 'skipped', 'interrupted')),
    match_pattern       text NOT NULL,
    threshold_ms        bigint NOT NULL,
    scanned             bigint NOT NULL DEFAULT 0,
    due                 bigint NOT NULL DEFAULT 0,
    not_due             bigint NOT NULL DEFAULT 0,
    persisted           bigint NOT NULL DEFAULT 0,
    unchanged           bigint NOT NULL DEFAULT 0,
    rejected            bigint NOT NULL DEFAULT 0,
    no_ttl              bigint NOT NULL DEFAULT 0,
    expired_before_read bigint NOT NULL DEFAULT 0,
    -- Due keys whose TTL was raised because PostgreSQL could not take them.
    protected           bigint NOT NULL DEFAULT 0,
    messages_added      bigint NOT NULL DEFAULT 0,
    duration_ms         bigint,
    host                text,
    version             text NOT NULL,
    error               text
);

CREATE INDEX sweep_runs_started_at ON sweep_runs (started_at DESC);

CREATE TABLE conversations (
    conversation_id     text PRIMARY KEY,
    user_id             text,
    redis_key           text NOT NULL,
    -- The newest checkpoint seen, whole (unknown fields included).
    checkpoint          jsonb NOT NULL,
    -- Messages in that checkpoint: breaks ties of updated_at when deciding which is newer.
    checkpoint_messages integer NOT NULL,
    -- Messages stored for the conversation (more than checkpoint_messages when the key expired
    -- and the chat service started the conversation again with only the new turns).
    message_count       integer NOT NULL,
    -- SHA-256 of the checkpoint as Redis held it: an identical re-sweep writes nothing.
    content_hash        bytea NOT NULL,
    started_at          timestamptz,
    updated_at          timestamptz,
    first_persisted_at  timestamptz NOT NULL DEFAULT now(),
    last_persisted_at   timestamptz NOT NULL DEFAULT now(),
    last_run_id         bigint REFERENCES sweep_runs (id) ON DELETE SET NULL
);

CREATE INDEX conversations_user_id ON conversations (user_id);

CREATE TABLE messages (
    -- Deferred: a batch writes messages before their conversation rows, in one transaction.
    conversation_id text NOT NULL
                    REFERENCES conversations (conversation_id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    -- Identity within the conversation: 'id:' || the message's id, or 'h:' || a hash of role,
    -- content, ts and how many identical messages came before it, when it has no id.
    message_key     text NOT NULL,
    -- Position in the conversation's stored history, from 0.
    seq             integer NOT NULL,
    message_id      text,
    role            text NOT NULL,
    content         text NOT NULL,
    created_at      timestamptz,
    run_id          bigint REFERENCES sweep_runs (id) ON DELETE SET NULL,
    PRIMARY KEY (conversation_id, message_key)
);

CREATE INDEX messages_history ON messages (conversation_id, created_at);

CREATE TABLE sweep_rejects (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    redis_key     text NOT NULL,
    -- SHA-256 of the value (of its size and first 64 KiB when it was too large to read whole):
    -- the same bad value seen again adds no second row.
    value_hash    bytea NOT NULL,
    reason        text NOT NULL,
    -- The value's first 64 KiB, for inspection.
    raw           bytea NOT NULL,
    raw_size      bigint NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    seen_count    integer NOT NULL DEFAULT 1,
    first_run_id  bigint REFERENCES sweep_runs (id) ON DELETE SET NULL,
    last_run_id   bigint REFERENCES sweep_runs (id) ON DELETE SET NULL,
    UNIQUE (redis_key, value_hash)
);

-- Whether checkpoint `n` replaces the stored `o`: a later updated_at wins (none is older than any),
-- then the longer message list; on a full tie the one seen last wins if its content differs.
CREATE FUNCTION sweeper_replaces(n conversations, o conversations) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT (coalesce(n.updated_at, '-infinity'), n.checkpoint_messages)
               > (coalesce(o.updated_at, '-infinity'), o.checkpoint_messages)
        OR ((coalesce(n.updated_at, '-infinity'), n.checkpoint_messages)
               = (coalesce(o.updated_at, '-infinity'), o.checkpoint_messages)
            AND n.content_hash <> o.content_hash)
$$;
