#!/usr/bin/env bash
# Private, throwaway Redis and PostgreSQL servers for tests, the demo and benchmarks.
#
#   tests/servers.sh exec -- CMD [ARGS...]
#
# installs redis-server and postgresql from Debian's packages when they are missing (as root), starts
# one of each on free loopback ports in a temp dir, runs CMD with these variables set, stops both
# servers whatever CMD did, and exits with CMD's status:
#
#   REDIS_URL              redis://127.0.0.1:PORT/
#   DATABASE_URL           postgres://postgres@127.0.0.1:PORT/sweeper   (an empty database)
#   SWEEPER_TEST_PG_ADMIN  postgres://postgres@127.0.0.1:PORT/postgres  (tests create their own databases)
#   SWEEPER_TEST_PG_BIN    the folder holding pg_ctl, so fault tests can stop and restart PostgreSQL
#   SWEEPER_TEST_PG_DATA   the PostgreSQL data folder
#   SWEEPER_TEST_DIR       the temp dir holding both servers' files
set -euo pipefail

log() { printf 'servers: %s\n' "$*" >&2; }
die() { printf 'servers: error: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root to run: $*"; fi; }

pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }; done
  return 1
}

install_missing() {
  local pkgs=()
  command -v redis-server >/dev/null || pkgs+=(redis-server)
  pg_bindir >/dev/null || pkgs+=(postgresql)
  command -v psql >/dev/null || pkgs+=(postgresql-client)
  [ ${#pkgs[@]} -eq 0 ] && return 0
  log "installing ${pkgs[*]} from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
    || log "apt-get update failed; trying the install with the package lists at hand"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null \
    || die "could not install ${pkgs[*]}"
  # Debian's packages start system-wide services; ours are private, so those are not needed.
  as_root service redis-server stop >/dev/null 2>&1 || true
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Run a PostgreSQL tool as the `postgres` user when we are root: PostgreSQL refuses to run as root.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

start() {
  install_missing
  local dir bin rport pport
  dir=$(mktemp -d /tmp/sweeper-servers.XXXXXX)
  chmod 755 "$dir"
  bin=$(pg_bindir) || die "no PostgreSQL server binaries under /usr/lib/postgresql"
  rport=$(free_port)
  pport=$(free_port)

  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
  mkdir -p "$dir/pg"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir/pg"
  as_pg "$bin/initdb" -D "$dir/pg/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  as_pg "$bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/postgres.log" -w -t 60 \
    -o "-p $pport -k $dir/pg -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null || { cat "$dir/pg/postgres.log" >&2; die "PostgreSQL did not start"; }
  for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$rport" ping >/dev/null || die "Redis did not start (see $dir/redis.log)"
  psql -q -h 127.0.0.1 -p "$pport" -U postgres -d postgres -c 'CREATE DATABASE sweeper' >/dev/null

  cat >"$dir/env" <<EOF
export REDIS_URL=redis://127.0.0.1:$rport/
export DATABASE_URL=postgres://postgres@127.0.0.1:$pport/sweeper
export SWEEPER_TEST_PG_ADMIN=postgres://postgres@127.0.0.1:$pport/postgres
export SWEEPER_TEST_PG_BIN=$bin
export SWEEPER_TEST_PG_DATA=$dir/pg/data
export SWEEPER_TEST_DIR=$dir
EOF
  echo "$dir"
}

stop() {
  local dir=$1
  [ -f "$dir/redis.pid" ] && kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
  # shellcheck disable=SC1091
  [ -f "$dir/env" ] && . "$dir/env"
  as_pg "${SWEEPER_TEST_PG_BIN:-$(pg_bindir)}/pg_ctl" -D "$dir/pg/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}

case "${1:-}" in
  exec)
    shift
    [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || die "usage: $0 exec -- CMD [ARGS...]"
    dir=$(start)
    trap 'stop "$dir"' EXIT
    trap 'exit 130' INT TERM
    # shellcheck disable=SC1091
    . "$dir/env"
    log "Redis at $REDIS_URL, PostgreSQL at $DATABASE_URL"
    set +e
    "$@"
    status=$?
    set -e
    exit $status
    ;;
  *) die "usage: $0 exec -- CMD [ARGS...]" ;;
esac
