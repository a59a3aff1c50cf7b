#!/usr/bin/env bash
# A cached virtualenv for the orchestrator checks:
#
#   tests/orchestrators/venv.sh NAME [REQUIREMENTS]   # NAME: airflow | dagster | flyte | lint | langgraph
#
# prints the path of a venv holding REQUIREMENTS (by default tests/orchestrators/requirements-NAME.txt;
# tests/langgraph/setup.sh passes its own), building it the first
# time only: ${SWEEPER_VENV_ROOT:-$HOME/.cache/sweeper/venvs}/NAME-<python version>-<first 12 hex of a
# sha256 of the file, the pip version and Python's full version>. The Python is $SWEEPER_PYTHON, else
# the python3 on PATH (Debian's /usr/bin/python3 on a stock machine). A changed requirements file
# gets a new venv (the old one stays until removed by hand). A lock (flock) makes concurrent callers wait for one build
# instead of racing two. Progress goes to stderr; stdout is only the path.
set -euo pipefail

die() { printf 'venv: error: %s\n' "$*" >&2; exit 1; }

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 NAME [REQUIREMENTS]"
here=$(cd "$(dirname "$0")" && pwd)
req=${2:-"$here/requirements-$1.txt"}
[ -f "$req" ] || die "no $req"

# The pip that resolved the pinned files; the one a fresh python3 -m venv brings may be years older.
PIP_VERSION=26.3
python=${SWEEPER_PYTHON:-python3}
root=${SWEEPER_VENV_ROOT:-$HOME/.cache/sweeper/venvs}
# Keyed by the interpreter's full version (3.11.2 and 3.11.7 differ in what they import: redis-py needs
# async-timeout below 3.11.3), and named by it, so a venv built for one Python is never reused by another.
pyver=$("$python" -c 'import platform; print(platform.python_implementation().lower() + platform.python_version())') \
  || die "no Python at $python"
hash=$( { cat "$req"; echo "pip==$PIP_VERSION"; echo "$pyver"; } | sha256sum | cut -c1-12)
venv="$root/$1-$pyver-$hash"

# A venv is complete once its marker is written, last: an interrupted build is removed and redone.
if [ ! -f "$venv/.complete" ]; then
  mkdir -p "$root"
  exec 9>"$root/.$1-$hash.lock"
  flock 9
  # Another caller may have built it while this one waited for the lock.
  if [ ! -f "$venv/.complete" ]; then
    rm -rf "$venv"
    start=$(date +%s)
    printf 'venv: building %s from %s (once; cached under %s)\n' "$1" "$req" "$root" >&2
    "$python" -m venv "$venv"
    pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check --timeout 30 --retries 2)
    "${pip[@]}" "pip==$PIP_VERSION" >&2
    "${pip[@]}" -r "$req" >&2
    touch "$venv/.complete"
    printf 'venv: %s built in %ss\n' "$1" "$(( $(date +%s) - start ))" >&2
  fi
  exec 9>&-
fi
echo "$venv"
