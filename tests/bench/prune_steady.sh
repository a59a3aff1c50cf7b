#!/usr/bin/env bash
# Retention in steady state: a prune a "day" as the window moves over conversations whose ages
# are spread evenly over 30 days by id (the newest id the newest), so the window's edge crosses
# partitions slowly, as daily prunes see it. The WAL of 14 prunes, `--older-than` 28d down to
# 2d, and what is left past the last window, at a `grace` (message_partitioning.grace) given.
#
#   tests/servers.sh exec -- tests/bench/prune_steady.sh GRACE [CONVERSATIONS] [MESSAGES_EACH]
#
# Defaults: 100000 conversations of 10 message rows (one in 100 updated today: survivors), the
# default span of 20000 ids: a partition holds six "days". Uses the sweeper binary of
# target/release, else target/debug.
set -euo pipefail

grace=${1:?GRACE, e.g. 0 or '7 days'}
n=${2:-100000}
per=${3:-10}
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=$here/target/release/sweeper
[ -x "$bin" ] || bin=$here/target/debug/sweeper
: "${SWEEPER_TEST_PG_ADMIN:?run through tests/servers.sh exec}"
base=${SWEEPER_TEST_PG_ADMIN%/*}
export PGOPTIONS="-c search_path=${SWEEPER_SCHEMA:-sweeper},public"
db=bench_prune_steady_$$
trap 'psql -qX "$SWEEPER_TEST_PG_ADMIN" -c "DROP DATABASE IF EXISTS $db" 2>/dev/null' EXIT

psql -qX "$SWEEPER_TEST_PG_ADMIN" -c "CREATE DATABASE $db"
DATABASE_URL="$base/$db" "$bin" migrate -q >/dev/null
psql -qX "$base/$db" -v ON_ERROR_STOP=1 -c "
  UPDATE message_partitioning SET grace = '$grace';
  INSERT INTO conversations (id, conversation_id, redis_key, checkpoint, checkpoint_messages, message_count,
                             content_hash, updated_at)
  SELECT i, 'c' || i, 'checkpoint:c' || i,
         jsonb_build_object('messages', (SELECT jsonb_agg(jsonb_build_object('id', 'm' || j, 'role', 'user',
             'content', repeat('x', 80))) FROM generate_series(1, $per) j)),
         $per, $per, sha256(i::text::bytea),
         CASE WHEN i % 100 = 0 THEN now() ELSE now() - interval '30 days' * (1 - i::float8 / $n) END
  FROM generate_series(1, $n) i;
  SELECT setval('conversations_id_seq', $n);
  SELECT sweeper_extend_message_partitions();
  INSERT INTO message_rows (conversation, message_key, seq, message_id, role)
  SELECT i, sweeper_message_key('id:m' || j), j - 1, 'm' || j, 'user'
  FROM generate_series(1, $n) i, generate_series(1, $per) j;" >/dev/null
psql -qX "$base/$db" -c "VACUUM ANALYZE"
psql -qX "$SWEEPER_TEST_PG_ADMIN" -c "CHECKPOINT"
from=$(psql -qtAX "$base/$db" -c "SELECT pg_current_wal_insert_lsn()")
before=$(psql -qtAX "$base/$db" -c "SELECT count(*) FROM conversations")
for d in 28 26 24 22 20 18 16 14 12 10 8 6 4 2; do
  DATABASE_URL="$base/$db" "$bin" prune --older-than "${d}d" -q >/dev/null
done
wal=$(psql -qtAX "$base/$db" -c "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$from')::int8")
after=$(psql -qtAX "$base/$db" -c "SELECT count(*) FROM conversations")
left=$(psql -qtAX "$base/$db" -c "SELECT count(*) FROM conversations WHERE updated_at < now() - interval '2 days'")
printf 'grace %s: 14 prunes deleted %d conversations, WAL %.1f MB (%d bytes a conversation); %d past the last window left\n' \
  "$grace" $(( before - after )) "$(echo "$wal / 1048576" | bc -l)" $(( wal / (before - after) )) "$left"
