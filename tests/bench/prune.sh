#!/usr/bin/env bash
# The prune bench: `sweeper prune` (batched deletes) against one plain DELETE of the same rows,
# side by side: the WAL each writes, how long it takes, and how long a sweep writing one of the
# doomed conversations meanwhile is blocked (what a late write of an old conversation meets).
#
#   tests/servers.sh exec -- tests/bench/prune.sh [CONVERSATIONS] [MESSAGES_EACH]
#
# Defaults: 200000 conversations of 10 message rows, half of them 400 days old: 1M message rows
# and 100k conversations to delete. Each side gets a fresh database filled the same way (by SQL,
# not by a sweep: only the deletes are measured), a CHECKPOINT first (so both pay the same
# full-page images), and concurrent UPDATEs of old conversations, as a sweep's upsert would lock
# them. Uses the sweeper binary of target/release, else target/debug.
set -euo pipefail

n=${1:-200000}
per=${2:-10}
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=$here/target/release/sweeper
[ -x "$bin" ] || bin=$here/target/debug/sweeper
: "${SWEEPER_TEST_PG_ADMIN:?run through tests/servers.sh exec}"
base=${SWEEPER_TEST_PG_ADMIN%/*}
# sweeper's tables are in its schema (`--schema`, default sweeper): psql finds them unqualified.
export PGOPTIONS="-c search_path=${SWEEPER_SCHEMA:-sweeper},public"

fill() { # DB
  psql -qX "$base/$1" -v ON_ERROR_STOP=1 -c "
    INSERT INTO conversations (id, conversation_id, user_id, redis_key, checkpoint, checkpoint_messages,
                               message_count, content_hash, updated_at, last_persisted_at)
    SELECT i, 'c' || i, 'u' || (i % 1000), 'checkpoint:c' || i,
           jsonb_build_object('messages', (SELECT jsonb_agg(jsonb_build_object('id', 'm' || j, 'role', 'user',
               'content', repeat('x', 80))) FROM generate_series(1, $per) j)),
           $per, $per, sha256(i::text::bytea),
           CASE WHEN i % 2 = 0 THEN now() - interval '400 days' ELSE now() END, now()
    FROM generate_series(1, $n) i;
    INSERT INTO message_rows (conversation, message_key, seq, message_id, role, content)
    SELECT i, sweeper_message_key('id:m' || j), j - 1, 'm' || j, 'user', NULL
    FROM generate_series(1, $n) i, generate_series(1, $per) j;
    SELECT setval('conversations_id_seq', $n);" >/dev/null
  psql -qX "$base/$1" -c "VACUUM ANALYZE conversations, message_rows"
}

lsn() { psql -qtAX "$base/$1" -c "SELECT pg_current_wal_insert_lsn()"; }
ms() { date +%s%3N; }

# A sweep's write of an old conversation (its upsert locks the row), every 100 ms while the
# delete runs, each on another doomed row: the longest wait.
blocked() { # DB DONE-FILE
  local worst=0 id=2 t0 took
  while [ ! -f "$2" ]; do
    t0=$(ms)
    psql -qX "$base/$1" -c "UPDATE conversations SET last_persisted_at = now() WHERE id = $id" >/dev/null
    took=$(( $(ms) - t0 ))
    [ "$took" -gt "$worst" ] && worst=$took
    id=$(( id + 2 ))
    sleep 0.1
  done
  echo "$worst"
}

run() { # NAME DELETE-COMMAND...
  local name=$1; shift
  local db="bench_prune_${name}_$$"
  psql -qX "$SWEEPER_TEST_PG_ADMIN" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
  DATABASE_URL="$base/$db" "$bin" migrate -q >/dev/null
  fill "$db"
  psql -qX "$SWEEPER_TEST_PG_ADMIN" -c "CHECKPOINT"
  local from t0 t1 wait
  from=$(lsn "$db")
  rm -f "/tmp/prune-bench-$$.done"
  blocked "$db" "/tmp/prune-bench-$$.done" > "/tmp/prune-bench-$$" &
  t0=$(ms)
  DB="$db" "$@" >/dev/null
  t1=$(ms)
  touch "/tmp/prune-bench-$$.done"
  wait
  wait=$(cat "/tmp/prune-bench-$$")
  local wal
  wal=$(psql -qtAX "$base/$db" -c "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$from')::int8")
  local left
  left=$(psql -qtAX "$base/$db" -c "SELECT count(*) FROM message_rows")
  printf '%-28s %10d ms  WAL %8.1f MB  sweep blocked %6d ms  message rows left %d\n' \
    "$name" $(( t1 - t0 )) "$(echo "$wal / 1048576" | bc -l)" "$wait" "$left"
  psql -qX "$SWEEPER_TEST_PG_ADMIN" -c "DROP DATABASE $db"
  rm -f "/tmp/prune-bench-$$" "/tmp/prune-bench-$$.done"
}

plain() {
  psql -qX "$base/$DB" -v ON_ERROR_STOP=1 -c "BEGIN" \
    -c "DELETE FROM message_rows WHERE conversation IN (SELECT id FROM conversations WHERE updated_at < now() - interval '365 days')" \
    -c "DELETE FROM conversations WHERE updated_at < now() - interval '365 days'" -c "COMMIT"
}
batched() { DATABASE_URL="$base/$DB" "$bin" prune --older-than 365d -q; }

echo "prune bench: $n conversations x $per message rows, half older than the window"
run plain_delete plain
run sweeper_prune batched
