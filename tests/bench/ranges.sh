#!/usr/bin/env bash
# What the archive's partitions cost a sweep: the same sweeps into an archive cut in few ranges
# and in many (a year of daily prunes closes a range a day: some 365 and more). Each read of
# `conversations` or `message_rows` a batch sends names its ids, so PostgreSQL plans only the
# partitions holding them; a statement that only joins them plans every partition, each batch.
#
#   tests/servers.sh exec -- tests/bench/ranges.sh [CONVERSATIONS] [SPANS]
#
# Defaults: 20000 conversations of 2-6 messages written by `sweeper simulate` (TTLs within the
# threshold: all due), swept into an archive of 100000 conversations filled by SQL, with spans of
# 5000 and 250 ids (27 and 483 ranges with the sweep's); then swept again unchanged (every batch a
# lookup only); then written again newer with 7-9 messages and swept (every batch merges).
# On a private PostgreSQL (tests/bench/lib.sh), Redis of tests/servers.sh. Uses the sweeper binary
# of target/release, else target/debug (BIN= another).
set -euo pipefail

n=${1:-20000}
spans=${2:-5000 250}
# shellcheck source=tests/bench/lib.sh
. "$(dirname "$0")/lib.sh"
bin=${BIN:-$bin}
start_pg off
trap stop_pg EXIT

secs() { local t0; t0=$(date +%s%3N); "$@" >/dev/null; echo "scale=2; ($(date +%s%3N) - $t0) / 1000" | bc; }

echo "ranges bench: $n conversations swept into an archive of 100000, $bin"
for span in $spans; do
  db=bench_ranges_$span
  fresh_db "$db" "$span"
  fill "$db" 100000 1 "now() - interval '1 day'"
  # The partitions the sweeps' ids need made first: only the sweeps' own work is timed.
  psql -qX "$base/$db" -c "UPDATE message_partitioning SET ahead = $n / $span + 2" \
    -c "SELECT sweeper_extend_message_partitions()" >/dev/null
  ranges=$(psql -qtAX "$base/$db" -c "SELECT count(*) FROM sweeper_message_partitions()")
  redis-cli -u "$REDIS_URL" FLUSHDB >/dev/null
  "$bin" simulate --redis-url "$REDIS_URL" --conversations "$n" --ttl-spread 2m..3m --messages 2..6 -q >/dev/null
  new=$(secs env DATABASE_URL="$base/$db" "$bin" run -q)
  again=$(secs env DATABASE_URL="$base/$db" "$bin" run -q)
  # The same conversations, newer and longer: every batch merges messages into stored ones.
  "$bin" simulate --redis-url "$REDIS_URL" --conversations "$n" --ttl-spread 2m..3m --messages 7..9 -q >/dev/null
  changed=$(secs env DATABASE_URL="$base/$db" "$bin" run -q)
  saved=$(psql -qtAX "$base/$db" -c "SELECT count(*) FROM conversations WHERE id > 100000")
  printf 'span %5d: %4d ranges  sweep of new conversations %6.2f s  again, unchanged %6.2f s  changed %6.2f s  (%d saved)\n' \
    "$span" "$ranges" "$new" "$again" "$changed" "$saved"
  psql -qX "$SWEEPER_TEST_PG_ADMIN" -c "DROP DATABASE $db"
done
