#!/usr/bin/env bash
# The prune bench: `sweeper prune` (whole partitions of message_rows dropped, the rest deleted in
# batches) against one plain DELETE of the same rows, side by side: how long each takes, the WAL
# it writes, the WAL with the VACUUM that reclaims the space after it, what message_rows holds
# on disk then, and how long sweeps writing meanwhile are blocked.
#
#   tests/servers.sh exec -- tests/bench/prune.sh [CONVERSATIONS] [MESSAGES_EACH] [SURVIVORS_PERCENT] [SPAN]
#
# Defaults: 200000 conversations of 10 message rows. Ids in time order, as sweeps draw them: the
# older half by id was last updated 400 days ago, but 1% of those (ids ending in 00) was updated
# yesterday (a conversation resumed: it survives). `--older-than 365d` deletes 99000
# conversations and 990000 message rows. SPAN: conversation ids per partition (default: the
# migration's). Each side gets a fresh database filled the same way (by
# SQL, not by a sweep: only the deletes are measured; partitions made as a sweep makes them), a
# CHECKPOINT first. Meanwhile, every 100 ms, two sweep-like writes, each in a transaction of its
# own: a new conversation with its message rows (what every sweep does), and a late write of
# one of the old conversations (a row of it updated, a message row added: what a sweep saving
# a late checkpoint of one does); the longest each waited. Uses the sweeper binary of
# target/release, else target/debug.
set -euo pipefail

n=${1:-200000}
per=${2:-10}
keep=${3:-1}
span=${4:-}
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=$here/target/release/sweeper
[ -x "$bin" ] || bin=$here/target/debug/sweeper
: "${SWEEPER_TEST_PG_ADMIN:?run through tests/servers.sh exec}"
base=${SWEEPER_TEST_PG_ADMIN%/*}
# sweeper's tables are in its schema (`--schema`, default sweeper): psql finds them unqualified.
export PGOPTIONS="-c search_path=${SWEEPER_SCHEMA:-sweeper},public"
tmp=/tmp/prune-bench-$$
# The probes stop when this does, whatever stopped it.
trap 'touch "$tmp.done"; sleep 0.3; rm -f "$tmp".*' EXIT

fill() { # DB
  [ -z "$span" ] || psql -qX "$base/$1" -v ON_ERROR_STOP=1 -c "
    DO \$\$ DECLARE p regclass; BEGIN
      FOR p IN SELECT part FROM sweeper_message_partitions() LOOP EXECUTE format('DROP TABLE %s', p); END LOOP;
    END \$\$;
    UPDATE message_partitioning SET span = $span;" >/dev/null
  psql -qX "$base/$1" -v ON_ERROR_STOP=1 -c "
    INSERT INTO conversations (id, conversation_id, user_id, redis_key, checkpoint, checkpoint_messages,
                               message_count, content_hash, updated_at, last_persisted_at)
    SELECT i, 'c' || i, 'u' || (i % 1000), 'checkpoint:c' || i,
           jsonb_build_object('messages', (SELECT jsonb_agg(jsonb_build_object('id', 'm' || j, 'role', 'user',
               'content', repeat('x', 80))) FROM generate_series(1, $per) j)),
           $per, $per, sha256(i::text::bytea),
           CASE WHEN i <= $n / 2 AND i % 100 >= $keep THEN now() - interval '400 days' + i * interval '1 second'
                ELSE now() - interval '1 day' END, now()
    FROM generate_series(1, $n) i;
    SELECT setval('conversations_id_seq', $n);
    SELECT sweeper_extend_message_partitions();
    INSERT INTO message_rows (conversation, message_key, seq, message_id, role, content)
    SELECT i, sweeper_message_key('id:m' || j), j - 1, 'm' || j, 'user', NULL
    FROM generate_series(1, $n) i, generate_series(1, $per) j;" >/dev/null
  psql -qX "$base/$1" -c "VACUUM ANALYZE conversations, message_rows"
}

lsn() { psql -qtAX "$base/$1" -c "SELECT pg_current_wal_insert_lsn()"; }
wal_since() { psql -qtAX "$base/$1" -c "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$2')::int8"; }
ms() { date +%s%3N; }
mb() { echo "$1 / 1048576" | bc -l; }

# One sweep-like write every 100 ms until DONE-FILE exists; prints the longest it waited.
probe() { # DB DONE-FILE KIND
  local worst=0 k=0 t0 took sql
  while [ ! -f "$2" ]; do
    k=$(( k + 1 ))
    if [ "$3" = new ]; then
      sql="BEGIN;
        INSERT INTO conversations (conversation_id, redis_key, checkpoint, checkpoint_messages, message_count, content_hash)
          VALUES ('probe$k', 'checkpoint:probe$k', '{\"messages\": []}', 0, 1, '\\x00');
        INSERT INTO message_rows (conversation, message_key, seq, role, content)
          VALUES (currval('conversations_id_seq'), gen_random_uuid(), 0, 'user', 'hi');
        COMMIT;"
    else
      # An old conversation (not a survivor): 2, 4, 6, ...
      sql="BEGIN;
        UPDATE conversations SET last_persisted_at = now() WHERE id = $(( 2 * k ));
        INSERT INTO message_rows (conversation, message_key, seq, role, content)
          VALUES ($(( 2 * k )), gen_random_uuid(), 99, 'user', 'late');
        COMMIT;"
    fi
    t0=$(ms)
    psql -qX "$base/$1" -c "$sql" >/dev/null 2>&1 || true
    took=$(( $(ms) - t0 ))
    [ "$took" -gt "$worst" ] && worst=$took
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
  local from t0 t1 wal all left size new late
  from=$(lsn "$db")
  rm -f "$tmp.done"
  probe "$db" "$tmp.done" new > "$tmp.new" &
  probe "$db" "$tmp.done" late > "$tmp.late" &
  sleep 0.3
  t0=$(ms)
  DB="$db" "$@" >/dev/null
  t1=$(ms)
  sleep 0.3
  touch "$tmp.done"
  wait
  new=$(cat "$tmp.new")
  late=$(cat "$tmp.late")
  wal=$(wal_since "$db" "$from")
  psql -qX "$base/$db" -c "VACUUM conversations, message_rows"
  all=$(wal_since "$db" "$from")
  left=$(psql -qtAX "$base/$db" -c "SELECT count(*) FROM message_rows")
  size=$(psql -qtAX "$base/$db" -c "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('message_rows')")
  printf '%-14s %7d ms  WAL %6.1f MB  with VACUUM %6.1f MB  message_rows %6.1f MB (%d rows)  sweep blocked: new %4d ms, late write %4d ms\n' \
    "$name" $(( t1 - t0 )) "$(mb "$wal")" "$(mb "$all")" "$(mb "$size")" "$left" "$new" "$late"
  echo "$name $wal $all" >> "$tmp.wal"
  psql -qX "$SWEEPER_TEST_PG_ADMIN" -c "DROP DATABASE $db"
  rm -f "$tmp.new" "$tmp.late" "$tmp.done"
}

# The conversations first, then their messages (a statement of its own: it sees the rows a late
# write added before the first took its conversation), in one transaction.
plain() {
  psql -qX "$base/$DB" -v ON_ERROR_STOP=1 -c "BEGIN" \
    -c "CREATE TEMP TABLE gone AS WITH d AS (DELETE FROM conversations WHERE updated_at < now() - interval '365 days' RETURNING id) SELECT id FROM d" \
    -c "DELETE FROM message_rows WHERE conversation IN (SELECT id FROM gone)" -c "COMMIT"
}
pruned() { DATABASE_URL="$base/$DB" "$bin" prune --older-than 365d -q; }

echo "prune bench: $n conversations x $per message rows, the older half by id past the window but $keep% of it"
rm -f "$tmp.wal"
run plain_delete plain
run sweeper_prune pruned
read -r _ pw pa < <(head -1 "$tmp.wal")
read -r _ sw sa < <(tail -1 "$tmp.wal")
printf 'WAL, plain DELETE / sweeper prune: %.1fx (%.1fx with the VACUUM after)\n' \
  "$(echo "$pw / $sw" | bc -l)" "$(echo "$pa / $sa" | bc -l)"
rm -f "$tmp.wal"
