#!/usr/bin/env bash
# Retention in steady state: a prune a "day" as the window moves over conversations whose ages
# are spread evenly over 30 days by id (the newest id the newest), so the window's edge crosses
# partitions slowly, as daily prunes see it. The WAL of 14 prunes, `--older-than` 28d down to
# 2d, and what is left past the last window, at a `grace` (message_partitioning.grace) given.
#
#   tests/servers.sh exec -- tests/bench/prune_steady.sh GRACE [CONVERSATIONS] [MESSAGES_EACH] [LAYOUT]
#
# LAYOUT: `ids` (default), ids drawn one after another, a partition holding as many days as fit
# its span; `pruned`, the ranges cut at the prunes' times, as prunes closing the range ids are
# drawn in (message_partitioning.close_after) leave them once they have run a window long.
#
# Defaults: 100000 conversations of 10 message rows (one in 100 updated today: survivors), the
# default span of 20000 ids: a partition holds six "days". On a private PostgreSQL with
# full_page_writes on (tests/bench/lib.sh). Uses the sweeper binary of target/release, else
# target/debug.
set -euo pipefail

# GRACE `plain`: a plain DELETE of the same rows at each step instead of `sweeper prune`.
grace=${1:?GRACE, e.g. 0, '7 days' or plain}
n=${2:-100000}
per=${3:-10}
layout=${4:-ids}
# shellcheck source=tests/bench/lib.sh
. "$(dirname "$0")/lib.sh"
db=bench_prune_steady_$$
# A production server's WAL settings (full_page_writes on), stopped whatever stops this.
start_pg on
trap stop_pg EXIT

fresh_db "$db"
[ "$grace" = plain ] || psql -qX "$base/$db" -c "UPDATE message_partitioning SET grace = '$grace'" >/dev/null
case $layout in
  ids) ids=i ;;
  # 15 ranges of two "days" each (the prunes below are two days apart), at the span's starts.
  pruned) ids="(i - 1) / ($n / 15) * (SELECT span FROM message_partitioning) + (i - 1) % ($n / 15) + 1" ;;
  *) echo "LAYOUT: ids or pruned" >&2; exit 2 ;;
esac
fill "$db" "$n" "$per" "CASE WHEN i % 100 = 0 THEN now() ELSE now() - interval '30 days' * (1 - i::float8 / $n) END" "$ids"
psql -qX "$SWEEPER_TEST_PG_ADMIN" -c "CHECKPOINT"
from=$(psql -qtAX "$base/$db" -c "SELECT pg_current_wal_insert_lsn()")
before=$(psql -qtAX "$base/$db" -c "SELECT count(*) FROM conversations")
for d in 28 26 24 22 20 18 16 14 12 10 8 6 4 2; do
  # A day apart: checkpoints between them (every page a prune changes is written whole once).
  psql -qX "$SWEEPER_TEST_PG_ADMIN" -c "CHECKPOINT"
  if [ "$grace" = plain ]; then
    psql -qX "$base/$db" -v ON_ERROR_STOP=1 -c "BEGIN" \
      -c "CREATE TEMP TABLE gone AS WITH d AS (DELETE FROM conversations WHERE updated_at < now() - interval '$d days' RETURNING id) SELECT id FROM d" \
      -c "DELETE FROM message_rows WHERE conversation IN (SELECT id FROM gone)" \
      -c "DELETE FROM conversation_ids WHERE id IN (SELECT id FROM gone)" -c "COMMIT" >/dev/null
  else
    DATABASE_URL="$base/$db" "$bin" prune --older-than "${d}d" -q >/dev/null
  fi
done
wal=$(psql -qtAX "$base/$db" -c "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$from')::int8")
after=$(psql -qtAX "$base/$db" -c "SELECT count(*) FROM conversations")
left=$(psql -qtAX "$base/$db" -c "SELECT count(*) FROM conversations WHERE updated_at < now() - interval '2 days'")
printf 'layout %s, grace %s: 14 prunes deleted %d conversations, WAL %.1f MB (%d bytes a conversation); %d past the last window left\n' \
  "$layout" "$grace" $(( before - after )) "$(echo "$wal / 1048576" | bc -l)" $(( wal / (before - after) )) "$left"
