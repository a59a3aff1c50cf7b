# What the prune benches share (sourced): a private PostgreSQL with a production server's WAL
# settings, and archives filled by SQL as sweeps would have filled them.
#
# The test servers run with full_page_writes off (faster tests); a production server runs with
# it on (its default, and what crash safety needs): there the first change to a page after a
# checkpoint writes the whole page to the WAL, and a retention job changes pages untouched since
# long before the latest checkpoint. A WAL figure is only a production figure with it on.

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=$here/target/release/sweeper
[ -x "$bin" ] || bin=$here/target/debug/sweeper
: "${SWEEPER_TEST_PG_BIN:?run through tests/servers.sh exec}"
# sweeper's tables are in its schema (`--schema`, default sweeper): psql finds them unqualified.
export PGOPTIONS="-c search_path=${SWEEPER_SCHEMA:-sweeper},public"

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# Starts a private PostgreSQL with full_page_writes FPW (on|off), fsync off (it changes no WAL
# volume, only the disk's wait); sets SWEEPER_TEST_PG_ADMIN and base (URL without a database).
# stop_pg stops it.
start_pg() { # FPW
  pg_dir=$(mktemp -d /tmp/prune-bench-pg.XXXXXX)
  chmod 755 "$pg_dir"
  mkdir "$pg_dir/pg"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$pg_dir/pg"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  as_pg "$SWEEPER_TEST_PG_BIN/initdb" -D "$pg_dir/pg/data" -U postgres --auth=trust -E UTF8 >/dev/null
  as_pg "$SWEEPER_TEST_PG_BIN/pg_ctl" -D "$pg_dir/pg/data" -l "$pg_dir/pg/log" -w -o \
    "-p $port -k $pg_dir/pg -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=$1 -c max_wal_size=10GB" \
    start >/dev/null
  export SWEEPER_TEST_PG_ADMIN=postgres://postgres@127.0.0.1:$port/postgres
  base=${SWEEPER_TEST_PG_ADMIN%/*}
}
stop_pg() {
  [ -n "${pg_dir:-}" ] || return 0
  as_pg "$SWEEPER_TEST_PG_BIN/pg_ctl" -D "$pg_dir/pg/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$pg_dir"
  pg_dir=
}

# A fresh database DB, migrated; SPAN ids a partition when given.
fresh_db() { # DB [SPAN]
  psql -qX "$SWEEPER_TEST_PG_ADMIN" -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" 2>/dev/null
  DATABASE_URL="$base/$1" "$bin" migrate -q >/dev/null
  [ -z "${2:-}" ] || psql -qX "$base/$1" -v ON_ERROR_STOP=1 -c "
    DO \$\$ DECLARE p regclass; BEGIN
      FOR p IN SELECT part FROM sweeper_message_partitions() LOOP
        EXECUTE format('DROP TABLE %s, %s', p, replace(p::text, 'message_rows', 'conversations'));
      END LOOP;
    END \$\$;
    UPDATE message_partitioning SET span = $2;" >/dev/null
}

# N conversations of PER message rows, the i-th (1..N) with the id of the SQL expression ID (of
# i; default i) and last updated at UPDATED (of i), as sweeps store them: the text of each
# message in the checkpoint document only (80 characters), its row without it. Partitions made
# as a sweep makes them.
fill() { # DB N PER UPDATED [ID]
  psql -qX "$base/$1" -v ON_ERROR_STOP=1 -c "
    CREATE TEMP TABLE f AS SELECT i, (${5:-i})::int8 AS id FROM generate_series(1, $2) i;
    INSERT INTO conversation_ids (id, conversation_id) SELECT id, 'c' || i FROM f;
    INSERT INTO conversations (id, conversation_id, user_id, redis_key, checkpoint, checkpoint_messages,
                               message_count, content_hash, updated_at, last_persisted_at)
    SELECT id, 'c' || i, 'u' || (i % 1000), 'checkpoint:c' || i,
           jsonb_build_object('messages', (SELECT jsonb_agg(jsonb_build_object('id', 'm' || j, 'role', 'user',
               'content', repeat('x', 80))) FROM generate_series(1, $3) j)),
           $3, $3, sha256(i::text::bytea), $4, now()
    FROM f;
    SELECT setval('conversations_id_seq', (SELECT max(id) FROM f));
    SELECT sweeper_extend_message_partitions();
    INSERT INTO message_rows (conversation, message_key, seq, message_id, role, content)
    SELECT id, sweeper_message_key('id:m' || j), j - 1, 'm' || j, 'user', NULL
    FROM f, generate_series(1, $3) j;" >/dev/null
  psql -qX "$base/$1" -c "VACUUM ANALYZE"
}

lsn() { psql -qtAX "$base/$1" -c "SELECT pg_current_wal_insert_lsn()"; }
wal_since() { psql -qtAX "$base/$1" -c "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$2')::int8"; }
mb() { echo "$1 / 1048576" | bc -l; }
