-- Sharded sweeps (--shard I/N): which shard a run swept. NULL for a run of the whole keyspace.
ALTER TABLE sweep_runs
    ADD COLUMN shard_index integer,
    ADD COLUMN shard_count integer,
    ADD CONSTRAINT sweep_runs_shard CHECK (
        (shard_index IS NULL AND shard_count IS NULL)
        OR (shard_count BETWEEN 1 AND 16384 AND shard_index >= 0 AND shard_index < shard_count)
    );
