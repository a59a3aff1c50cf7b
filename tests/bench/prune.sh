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
# CHECKPOINT first. Both sides run twice, on a private PostgreSQL with full_page_writes on (a
# production server's setting) and off (tests/bench/lib.sh). Meanwhile, every 100 ms, two sweep-like writes, each in a transaction of its
# own: a new conversation with its message rows (what every sweep does), and a late write of
# one of the old conversations (a row of it updated, a message row added: what a sweep saving
# a late checkpoint of one does); the longest each waited. Uses the sweeper binary of
# target/release, else target/debug.
set -euo pipefail

n=${1:-200000}
per=${2:-10}
keep=${3:-1}
span=${4:-}
# shellcheck source=tests/bench/lib.sh
. "$(dirname "$0")/lib.sh"
tmp=/tmp/prune-bench-$$
# The probes and the server stop when this does, whatever stopped it.
trap 'touch "$tmp.done"; sleep 0.3; rm -f "$tmp".*; stop_pg' EXIT
ms() { date +%s%3N; }

# One sweep-like write every 100 ms until DONE-FILE exists; prints the longest it waited.
probe() { # DB DONE-FILE KIND
  local worst=0 k=0 t0 took sql
  while [ ! -f "$2" ]; do
    k=$(( k + 1 ))
    if [ "$3" = new ]; then
      sql="BEGIN;
        INSERT INTO conversation_ids (conversation_id) VALUES ('probe$k');
        INSERT INTO conversations (id, conversation_id, redis_key, checkpoint, checkpoint_messages, message_count, content_hash)
          VALUES (currval('conversations_id_seq'), 'probe$k', 'checkpoint:probe$k', '{\"messages\": []}', 0, 1, '\\x00');
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
  fresh_db "$db" "$span"
  fill "$db" "$n" "$per" "CASE WHEN i <= $n / 2 AND i % 100 >= $keep
                                 THEN now() - interval '400 days' + i * interval '1 second'
                                 ELSE now() - interval '1 day' END"
  psql -qX "$SWEEPER_TEST_PG_ADMIN" -c "CHECKPOINT"
  local from t0 t1 wal all left size csize new late
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
  psql -qX "$base/$db" -c "VACUUM conversations, conversation_ids, message_rows"
  all=$(wal_since "$db" "$from")
  left=$(psql -qtAX "$base/$db" -c "SELECT count(*) FROM message_rows")
  size=$(psql -qtAX "$base/$db" -c "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('message_rows')")
  csize=$(psql -qtAX "$base/$db" -c "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('conversations')")
  printf 'full_page_writes %-3s %-14s %7d ms  WAL %6.1f MB  with VACUUM %6.1f MB  message_rows %6.1f MB (%d rows)  conversations %6.1f MB  sweep blocked: new %4d ms, late write %4d ms\n' \
    "$fpw" "$name" $(( t1 - t0 )) "$(mb "$wal")" "$(mb "$all")" "$(mb "$size")" "$left" "$(mb "$csize")" "$new" "$late"
  echo "$name $wal $all" >> "$tmp.wal"
  psql -qX "$SWEEPER_TEST_PG_ADMIN" -c "DROP DATABASE $db"
  rm -f "$tmp.new" "$tmp.late" "$tmp.done"
}

# The conversations first, then their messages (a statement of its own: it sees the rows a late
# write added before the first took its conversation), then their ids, in one transaction.
plain() {
  psql -qX "$base/$DB" -v ON_ERROR_STOP=1 -c "BEGIN" \
    -c "CREATE TEMP TABLE gone AS WITH d AS (DELETE FROM conversations WHERE updated_at < now() - interval '365 days' RETURNING id) SELECT id FROM d" \
    -c "DELETE FROM message_rows WHERE conversation IN (SELECT id FROM gone)" \
    -c "DELETE FROM conversation_ids WHERE id IN (SELECT id FROM gone)" -c "COMMIT"
}
pruned() { DATABASE_URL="$base/$DB" "$bin" prune --older-than 365d -q; }

echo "prune bench: $n conversations x $per message rows, the older half by id past the window but $keep% of it"
for fpw in on off; do
  start_pg "$fpw"
  rm -f "$tmp.wal"
  run plain_delete plain
  run sweeper_prune pruned
  read -r _ pw pa < <(head -1 "$tmp.wal")
  read -r _ sw sa < <(tail -1 "$tmp.wal")
  printf 'full_page_writes %s: WAL, plain DELETE / sweeper prune: %.1fx (%.1fx with the VACUUM after)\n' \
    "$fpw" "$(echo "$pw / $sw" | bc -l)" "$(echo "$pa / $sa" | bc -l)"
  rm -f "$tmp.wal"
  stop_pg
done
