#!/usr/bin/env bash
# What the chat-library tests (tests/chat_libraries.rs) need, built once and cached:
#
#   tests/layouts/setup.sh
#
# prints `name=value` lines on stdout (progress and errors go to stderr):
#
#   venv_LIB=PATH          a virtualenv holding tests/layouts/requirements-LIB.txt, one per library
#                          (their pins conflict: langchain-redis wants redis-py 7.1, agent-framework-redis
#                          redisvl<0.16), for LIB in langchain langchain-redis llamaindex redisvl
#                          openai-agents agent-framework; agent-memory-server and rasa (frozen
#                          sets installed without resolution: they declare other Pythons)
#   node_path=DIR          node_modules holding @langchain/redis and @langchain/core (npm install, cached)
#   redis_server=PATH, redis_modules=A:B, ld_library_path=DIR, or redis_url=URL
#                          a Redis Stack (RedisJSON, RediSearch), as tests/langgraph/setup.sh gives it
#
# and exits 0; or exits 1 with the reason as the last stderr line (`setup: unavailable: ...`).
# Everything lives under ${SWEEPER_CACHE:-$HOME/.cache/sweeper}: venvs/layouts-LIB-<hash>, npm/.
set -euo pipefail

unavailable() { printf 'setup: unavailable: %s\n' "$*" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd)
cache=${SWEEPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sweeper}
mkdir -p "$cache"

for lib in langchain langchain-redis llamaindex redisvl openai-agents agent-framework; do
  venv=$(SWEEPER_VENV_ROOT="$cache/venvs" "$here/../orchestrators/venv.sh" "layouts-$lib" \
    "$here/requirements-$lib.txt") || unavailable "could not build a venv for $lib (offline?)"
  echo "venv_${lib//-/_}=$venv"
done

# agent-memory-server (Python >= 3.12) and rasa (< 3.11, TensorFlow) on paper only: each a frozen
# set that runs here, installed as it is.
for lib in agent-memory-server rasa; do
  venv=$(PIP_NO_DEPS=1 PIP_IGNORE_REQUIRES_PYTHON=1 SWEEPER_VENV_ROOT="$cache/venvs" \
    "$here/../orchestrators/venv.sh" "layouts-$lib" "$here/requirements-$lib.txt") \
    || unavailable "could not build a venv for $lib (offline?)"
  echo "venv_${lib//-/_}=$venv"
done

# LangChain.js: the versions the issue measured; a changed line here gets a new folder.
npm_pkgs="@langchain/redis@1.1.2 @langchain/core@1.4.0"
# Node trusts only the CA list built into it; Debian's store (/etc/ssl/certs) is where the machine's
# own CAs are (a company proxy's among them), as pip and apt use it.
if [ -z "${NODE_EXTRA_CA_CERTS:-}" ] && [ -r /etc/ssl/certs/ca-certificates.crt ]; then
  export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
fi
npm_dir="$cache/npm/$(echo "$npm_pkgs" | sha256sum | cut -c1-12)"
if [ ! -f "$npm_dir/.complete" ]; then
  command -v npm >/dev/null || unavailable "no npm"
  mkdir -p "$npm_dir"
  exec 9>"$npm_dir.lock"
  flock 9
  if [ ! -f "$npm_dir/.complete" ]; then
    printf 'setup: npm install %s (once; cached in %s)\n' "$npm_pkgs" "$npm_dir" >&2
    # A package.json of its own, or npm installs into the nearest parent folder that has one.
    echo '{"private": true}' > "$npm_dir/package.json"
    # shellcheck disable=SC2086
    npm install --prefix "$npm_dir" --silent --no-audit --no-fund $npm_pkgs >&2 \
      || unavailable "npm install $npm_pkgs failed (offline?)"
    [ -f "$npm_dir/node_modules/@langchain/redis/package.json" ] \
      || unavailable "npm install left no @langchain/redis in $npm_dir"
    touch "$npm_dir/.complete"
  fi
  exec 9>&-
fi
echo "node_path=$npm_dir/node_modules"

# The Redis Stack, as the LangGraph tests get it (its venv line is not ours).
"$here/../langgraph/setup.sh" | grep -v '^venv='
