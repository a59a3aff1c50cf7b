#!/usr/bin/env bash
# The orchestrator files as shipped, checked with the orchestrators' own tools:
#
#   tests/servers.sh exec -- tests/orchestrators/check.sh target/debug/sweeper
#
#   k8s          kubernetes-validate --strict (the oldest and newest Kubernetes we claim), checkov;
#                the sharded CronJob's pods (its args, env and JOB_COMPLETION_INDEX) run at once
#                against the servers of tests/servers.sh save every due key once
#   dockerfile   hadolint
#   airflow      Airflow's DagBag imports dags/ with the expected policy (check_dags.py); then
#                `airflow dags test sweeper_local` runs the binary for real against the servers of
#                tests/servers.sh (REDIS_URL, DATABASE_URL): rows land, the run succeeds with the
#                JSON summary in XCom; and with PostgreSQL unreachable the DAG run fails
#                (run_as_declared.py: the pod's arguments run the binary, its summary file is JSON);
#                `airflow dags test sweeper_local_sharded`: a mapped task per `--shard I/3`, every key once
#   flyte        flytekit imports dags/sweeper_flyte.py, `pyflyte package` serialises it, and the
#                archive holds the task, the workflow and the launch plan every five minutes; the
#                task's command run for real writes every declared output
#   dagster      dags/sweeper_dagster.py loads (schedule, max runtime); `dagster asset materialize`
#                runs the binary through Dagster Pipes against the servers: the materialization's
#                metadata is the summary, as stored; with PostgreSQL down it fails, nothing recorded
#   helm         docs/installing.md's commands, as written or by their offline twins
#                (check_install_docs.py); k8s/helm/sweeper on Helm 3.17, 4.1 and 4.3: `helm lint --strict`, `helm template`
#                (defaults, sharded); the newest's renders through
#                kubernetes-validate --strict and checkov, the same objects as k8s/ in substance,
#                refusals judged by `sweeper check-schedule`; `kubectl kustomize k8s/` rendered and
#                validated (check_helm.py; helm and kubectl from tools.sh)
#   pushgateway  three shards of a sweep push to a real Pushgateway (Debian's), one of them failing:
#                three groups stay, the failing shard's last success is visibly older
#                (check_pushgateway.py)
#   deb          the .deb (cargo-deb, of this binary): built, listed, its version the binary's, its
#                systemd units through `systemd-analyze verify`, the man page and bash completion
#                loaded, and the packaged binary run as the units run it (settings from the
#                packaged EnvironmentFile, URLs from files) against the servers; then installed
#                over the same binary packaged as 0.0.9-1 (dpkg on a private root): the conffile
#                edit kept, the timer still enabled, the daemon restarted, the units' migrate and sweep
#   monitoring   k8s/monitoring/: `promtool test rules` (every alert firing and not), the
#                PrometheusRule equal to the rules file, the dashboard's PromQL parsed by promtool,
#                every metric named there written by a real sweep's --metrics-file
#
# The tools come from cached venvs (tests/orchestrators/venv.sh; built once, about a minute each,
# in parallel) and tests/orchestrators/tools.sh (promtool, the Pushgateway, helm, kubectl,
# cargo-deb; installed once, cached under ~/.cache/sweeper). The checks run in parallel lanes, one per orchestrator; each prints its own output,
# shown lane by lane at the end, then one line per check; the script
# exits 1 when any failed. CHECKS="k8s airflow" runs only those.
set -euo pipefail

die() { printf 'check: error: %s\n' "$*" >&2; exit 2; }

[ $# -eq 1 ] || die "usage: $0 PATH/TO/sweeper"
[ -x "$1" ] || die "$1 is not an executable (build it: cargo build --bin sweeper)"
here=$(cd "$(dirname "$0")" && pwd)
CHECKS=${CHECKS:-k8s dockerfile airflow flyte dagster helm monitoring pushgateway deb}
# No __pycache__ left in dags/ or here by the imports.
export PYTHONDONTWRITEBYTECODE=1

work=$(mktemp -d /tmp/sweeper-orchestrators.XXXXXX)
trap 'rm -rf "$work"' EXIT
# A copy: a cargo build running meanwhile replaces target/debug/sweeper under the checks' feet.
cp "$1" "$work/sweeper"
SWEEPER=$work/sweeper
cd "$here/../.."

# The venvs these checks need, built in parallel when missing (each build holds its own lock).
declare -A VENV
venvs() {
  local name pids=() names=()
  for name in "$@"; do
    "$here/venv.sh" "$name" >"$work/venv-$name" &
    pids+=($!)
    names+=("$name")
  done
  local i
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || die "could not build the ${names[$i]} venv"
    VENV[${names[$i]}]=$(cat "$work/venv-${names[$i]}")
  done
}
wanted=()
for c in $CHECKS; do
  case $c in
    k8s | dockerfile | helm | monitoring | pushgateway) wanted+=(lint) ;;
    deb) ;;
    airflow) wanted+=(airflow) ;;
    flyte) wanted+=(flyte) ;;
    dagster) wanted+=(dagster) ;;
    *) die "unknown check $c" ;;
  esac
done
start=$(date +%s)
# The command-line tools these checks need (tools.sh), installed meanwhile in the background.
declare -A TOOL
wanted_tools=()
for c in $CHECKS; do
  case $c in
    helm) wanted_tools+=(helm helm-4.1 helm-3.17 kubectl) ;;
    monitoring) wanted_tools+=(promtool) ;;
    pushgateway) wanted_tools+=(pushgateway) ;;
    deb) wanted_tools+=(cargo-deb) ;;
  esac
done
tool_pids=()
for name in "${wanted_tools[@]}"; do
  "$here/tools.sh" "$name" >"$work/tool-$name" &
  tool_pids+=($!)
done
# shellcheck disable=SC2046
venvs $(printf '%s\n' "${wanted[@]}" | sort -u)
for i in "${!tool_pids[@]}"; do
  wait "${tool_pids[$i]}" || die "could not install ${wanted_tools[$i]}"
  TOOL[${wanted_tools[$i]}]=$(cat "$work/tool-${wanted_tools[$i]}")
done
echo "check: venvs and tools ready in $(($(date +%s) - start))s"

# --- the checks: each runs in a subshell with errexit on; its status is the check's ------------

check_k8s() {
  local lint=${VENV[lint]} files=()
  local f
  for f in k8s/*.yaml k8s/forget/job.yaml; do
    # The kustomization is kustomize's config, not a Kubernetes object.
    [ "$(basename "$f")" = kustomization.yaml ] || files+=("$f")
  done
  # 1.27: the oldest with CronJob timeZone (GA); 1.37: the newest schemas the package bundles.
  local v
  for v in 1.27.0 1.37.0; do
    "$lint/bin/kubernetes-validate" --strict --kubernetes-version "$v" "${files[@]}"
  done
  # Skipped, with reasons:
  #   CKV_K8S_43 (image by digest): the manifests name a release tag; the deploy pins the digest
  #              (`kustomize edit set image ghcr.io/example/sweeper=...@sha256:...`), which a
  #              file in the repository cannot know before the image is built.
  #   CKV_K8S_15 (imagePullPolicy Always): the tag is immutable (a release per version), so
  #              IfNotPresent is the same image without a registry round trip every five minutes,
  #              and a registry outage cannot stop the sweeps that keep conversations from expiring.
  #   CKV_K8S_21 (default namespace): no namespace is written in the files on purpose; it is
  #              chosen at deploy (`kubectl apply -n` or kustomize's `namespace:`).
  "$lint/bin/checkov" --framework kubernetes --skip-download --compact --quiet \
    --skip-check CKV_K8S_43,CKV_K8S_15,CKV_K8S_21 -d k8s
}

check_dockerfile() {
  "${VENV[lint]}/bin/hadolint" Dockerfile
  echo "hadolint: Dockerfile clean"
}

# Airflow on SQLite in a temp AIRFLOW_HOME, reading dags/ only.
airflow_env() {
  export AIRFLOW_HOME=$work/airflow
  export AIRFLOW__CORE__DAGS_FOLDER=$PWD/dags
  export AIRFLOW__CORE__LOAD_EXAMPLES=False
  export AIRFLOW__CORE__UNIT_TEST_MODE=False
  # Parsing time is not what is checked: the lanes run at once on 2 cores, where importing the
  # Kubernetes provider alone can pass Airflow's 30s default.
  export AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT=600 AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT=600
  mkdir -p "$AIRFLOW_HOME"
}

# `airflow db migrate` once for both dags test checks.
airflow_migrate() {
  [ -f "$AIRFLOW_HOME/.migrated" ] && return 0
  "${VENV[airflow]}/bin/airflow" db migrate >"$work/airflow-migrate.log" 2>&1 \
    || { tail -n 30 "$work/airflow-migrate.log"; return 1; }
  touch "$AIRFLOW_HOME/.migrated"
}

# A value from Airflow's SQLite database (the run's state, its XCom).
airflow_db() { "${VENV[airflow]}/bin/python" - "$AIRFLOW_HOME/airflow.db" "$@" <<'EOF'
import sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute(sys.argv[2], sys.argv[3:]).fetchall()
print("\n".join("|".join("" if v is None else str(v) for v in r) for r in rows))
EOF
}

# A migrated database and 50 checkpoints under a key prefix of the calling check's own, so no other
# test's data counts there: fresh_db NAME PREFIX [TTL_SPREAD] sets DATABASE_URL, SWEEPER_MATCH and
# SWEEPER_BIN.
fresh_db() {
  [ -n "${REDIS_URL:-}" ] && [ -n "${DATABASE_URL:-}" ] \
    || { echo "REDIS_URL and DATABASE_URL unset: run under tests/servers.sh exec --"; return 1; }
  if [ -n "${SWEEPER_TEST_PG_ADMIN:-}" ]; then
    local db=orchestrators_$1_$$
    psql -X -q "$SWEEPER_TEST_PG_ADMIN" -c "CREATE DATABASE $db"
    DATABASE_URL=${SWEEPER_TEST_PG_ADMIN%/*}/$db
  fi
  export DATABASE_URL SWEEPER_BIN=$SWEEPER SWEEPER_MATCH="$2:checkpoint:*"
  "$SWEEPER" -q migrate
  "$SWEEPER" -q simulate --conversations 50 --ttl-spread "${3:-0s..30m}" --match-prefix "$2:checkpoint:"
}

# The sharded CronJob's pods as Kubernetes would start them: its container args and env, all at
# once, JOB_COMPLETION_INDEX 0..completions-1. Every key due (TTLs 2m to 5m: none expires during
# the check), so together the shards must save all 50, once each.
check_k8s_sharded() {
  fresh_db sharded orch-sharded 2m..5m
  SWEEPER_TEST_DUE=50 "${VENV[lint]}/bin/python" tests/orchestrators/run_as_declared.py sharded k8s/cronjob-sharded.yaml
  local stored
  stored=$(psql -X -At "$DATABASE_URL" -c 'SELECT count(*) FROM sweeper.conversations')
  echo "conversations stored: $stored of 50"
  [ "$stored" = 50 ]
}

# The pod's declared arguments against the real binary: the summary file XCom reads is JSON, also
# for a failed run.
check_airflow_kpo_args() {
  fresh_db kpo orch-kpo
  airflow_env
  "${VENV[airflow]}/bin/python" tests/orchestrators/run_as_declared.py kpo
}

check_airflow_dagbag() {
  airflow_env
  "${VENV[airflow]}/bin/python" tests/orchestrators/check_dags.py
}

check_airflow_dags_test() {
  fresh_db dags_test orch
  airflow_env
  local airflow=${VENV[airflow]}/bin/airflow
  airflow_migrate
  # The DAGs in the database, so the asset event finds the downstream DAG scheduled on it.
  "$airflow" dags reserialize >"$work/reserialize.log" 2>&1 || { tail -n 20 "$work/reserialize.log"; return 1; }
  # Unpaused, as an operator would: events queue runs of active DAGs only.
  "$airflow" dags unpause sweeper_conversations_landed >>"$work/reserialize.log" 2>&1 \
    || { tail -n 20 "$work/reserialize.log"; return 1; }

  echo "airflow dags test sweeper_local (log: last lines only)"
  local rc=0
  "$airflow" dags test sweeper_local >"$work/dags-test.log" 2>&1 || rc=$?
  grep -E 'Running command|Command exited|DagRun Finished|ERROR|Error' "$work/dags-test.log" | cut -c1-400 || true
  [ "$rc" = 0 ] || { tail -n 40 "$work/dags-test.log"; echo "airflow dags test exited $rc"; return 1; }

  local state xcom
  state=$(airflow_db "SELECT state FROM dag_run WHERE dag_id = 'sweeper_local'")
  echo "dag run state: $state"
  [ "$state" = success ]
  state=$(airflow_db "SELECT state FROM task_instance WHERE dag_id = 'sweeper_local' AND task_id = 'sweep'")
  echo "task state: $state"
  [ "$state" = success ]
  xcom=$(airflow_db "SELECT value FROM xcom WHERE dag_id = 'sweeper_local' AND task_id = 'sweep' AND key = 'return_value'")
  echo "xcom return_value: $xcom"
  # The XCom is the summary line, JSON-encoded as a string: decode both, check it against PostgreSQL.
  local stored runs events queued
  stored=$(psql -X -At "$DATABASE_URL" -c 'SELECT count(*) FROM sweeper.conversations')
  runs=$(psql -X -At "$DATABASE_URL" -c "SELECT count(*) FROM sweeper.sweep_runs WHERE status = 'ok'")
  echo "conversations stored: $stored; sweep_runs ok: $runs"
  # The Asset: one event, its extra the summary's counts, and the downstream DAG queued by it.
  events=$(airflow_db "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id
    WHERE a.name = 'sweeper_conversations' AND e.source_dag_id = 'sweeper_local'")
  queued=$(airflow_db "SELECT q.target_dag_id FROM asset_dag_run_queue q JOIN asset a ON a.id = q.asset_id
    WHERE a.name = 'sweeper_conversations'")
  echo "asset events: $events; DAGs queued by them: $queued"
  [ "$queued" = sweeper_conversations_landed ]
  "${VENV[airflow]}/bin/python" - "$xcom" "$stored" "$runs" "$events" <<'EOF'
import json, sys
value, stored, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
events = [json.loads(line) for line in sys.argv[4].splitlines() if line.strip()]
summary = json.loads(value)
if isinstance(summary, str):
    summary = json.loads(summary)
assert summary["status"] == "ok", summary
assert summary["match"] == "orch:checkpoint:*", summary
assert summary["scanned"] > 0 and summary["persisted"] > 0, summary
assert summary["due"] == summary["persisted"] + summary["unchanged"] + summary["rejected"], summary
assert stored == summary["persisted"], f"{stored} rows in conversations, summary says {summary['persisted']}"
assert runs == 1, f"{runs} ok rows in sweep_runs"
assert len(events) == 1, f"one asset event, got {events}"
extra = events[0] if isinstance(events[0], dict) else json.loads(events[0])
assert extra.get("persisted") == summary["persisted"] and extra.get("sweeper_run_id") == summary["run_id"], extra
print(f"ok: status ok, {summary['persisted']} of {summary['scanned']} conversations persisted, as stored; "
      f"the asset event says {extra}")
EOF

  # Again on a pattern no key matches: nothing is persisted, so conversations_landed is skipped
  # and no second event wakes the downstream DAG. (Not the same keys again: meanwhile more of
  # them fall under the threshold and are saved.)
  echo "airflow dags test sweeper_local, again: nothing to persist"
  rc=0
  SWEEPER_MATCH='orch-nothing:checkpoint:*' "$airflow" dags test sweeper_local >"$work/dags-test-again.log" 2>&1 || rc=$?
  [ "$rc" = 0 ] || { tail -n 40 "$work/dags-test-again.log"; echo "airflow dags test exited $rc"; return 1; }
  local landed count
  landed=$(airflow_db "SELECT ti.state FROM task_instance ti JOIN dag_run r ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id
    WHERE r.dag_id = 'sweeper_local' AND ti.task_id = 'conversations_landed' ORDER BY r.id DESC LIMIT 1")
  count=$(airflow_db "SELECT count(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = 'sweeper_conversations'")
  echo "conversations_landed: $landed; asset events: $count"
  [ "$landed" = skipped ]
  [ "$count" = 1 ]

  echo "airflow dags test sweeper_conversations_landed"
  rc=0
  "$airflow" dags test sweeper_conversations_landed >"$work/dags-test-downstream.log" 2>&1 || rc=$?
  grep -E 'conversations landed|DagRun Finished' "$work/dags-test-downstream.log" | cut -c1-300 || true
  [ "$rc" = 0 ] || { tail -n 40 "$work/dags-test-downstream.log"; return 1; }
  state=$(airflow_db "SELECT state FROM dag_run WHERE dag_id = 'sweeper_conversations_landed'")
  echo "downstream dag run state: $state"
  [ "$state" = success ]
}

# The same DAG with PostgreSQL unreachable: sweeper exits 4, the task and the DAG run fail.
check_airflow_dags_test_fails() {
  [ -n "${REDIS_URL:-}" ] || { echo "REDIS_URL unset: run under tests/servers.sh exec --"; return 1; }
  airflow_env
  local airflow=${VENV[airflow]}/bin/airflow
  airflow_migrate
  # Port 1 on loopback: refused at once; a short connect timeout so the retries cost seconds.
  # No due keys under this prefix, so nothing is protected either.
  export SWEEPER_BIN=$SWEEPER SWEEPER_MATCH='orch-failing:checkpoint:*' SWEEPER_CONNECT_TIMEOUT=1s
  export DATABASE_URL=postgres://postgres@127.0.0.1:1/nowhere
  local rc=0
  "$airflow" dags test sweeper_local >"$work/dags-test-failing.log" 2>&1 || rc=$?
  grep -E 'Command exited|DagRun Finished|sweeper: error' "$work/dags-test-failing.log" | cut -c1-400 || true
  # The newest run of the DAG (the successful one of the check before may be there too).
  local state task exits
  state=$(airflow_db "SELECT state FROM dag_run WHERE dag_id = 'sweeper_local' ORDER BY id DESC LIMIT 1")
  task=$(airflow_db "SELECT ti.state FROM task_instance ti JOIN dag_run r ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id
    WHERE r.dag_id = 'sweeper_local' AND ti.task_id = 'sweep' ORDER BY r.id DESC LIMIT 1")
  exits=$(grep -c 'Command exited with return code 4' "$work/dags-test-failing.log" || true)
  echo "airflow dags test exited $rc; dag run state: $state; task state: $task; tries that exited 4: $exits"
  [ "$rc" != 0 ]
  [ "$state" = failed ]
  [ "$task" = failed ]
  # migrate once (no retries), exiting 4; then the sweep anyway (its trigger rule: it protects due
  # keys), twice (retries=1, after retry_delay, 30s), exiting 4 both times.
  [ "$exits" = 3 ]
  local migrate
  migrate=$(airflow_db "SELECT ti.state FROM task_instance ti JOIN dag_run r ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id
    WHERE r.dag_id = 'sweeper_local' AND ti.task_id = 'migrate' ORDER BY r.id DESC LIMIT 1")
  echo "migrate: $migrate"
  [ "$migrate" = failed ]
  # A failed sweep emits no asset event: conversations_landed is upstream_failed.
  local landed
  landed=$(airflow_db "SELECT ti.state FROM task_instance ti JOIN dag_run r ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id
    WHERE r.dag_id = 'sweeper_local' AND ti.task_id = 'conversations_landed' ORDER BY r.id DESC LIMIT 1")
  echo "conversations_landed: $landed"
  [ "$landed" = upstream_failed ]
}

# The sharded DAG as `airflow dags test` runs it: one mapped task per shard, each `--shard I/3`,
# every key due, so together they save all 50, once each, in three ok rows of sweep_runs.
check_airflow_sharded() {
  fresh_db dags_sharded orch-sharded-dag 2m..5m
  airflow_env
  local airflow=${VENV[airflow]}/bin/airflow rc=0
  airflow_migrate
  "$airflow" dags test sweeper_local_sharded >"$work/dags-test-sharded.log" 2>&1 || rc=$?
  grep -E 'Running command|Command exited|DagRun Finished' "$work/dags-test-sharded.log" | cut -c1-300 || true
  [ "$rc" = 0 ] || { tail -n 40 "$work/dags-test-sharded.log"; echo "airflow dags test exited $rc"; return 1; }
  local stored shards tasks
  stored=$(psql -X -At "$DATABASE_URL" -c 'SELECT count(*) FROM sweeper.conversations')
  shards=$(psql -X -At "$DATABASE_URL" -c "SELECT string_agg(shard_index || '/' || shard_count, ' ' ORDER BY shard_index)
    FROM sweeper.sweep_runs WHERE status = 'ok'")
  tasks=$(airflow_db "SELECT count(*) FROM task_instance WHERE dag_id = 'sweeper_local_sharded' AND task_id = 'sweep'
    AND state = 'success'")
  echo "conversations stored: $stored of 50; ok runs by shard: $shards; mapped tasks succeeded: $tasks"
  [ "$stored" = 50 ] && [ "$shards" = "0/3 1/3 2/3" ] && [ "$tasks" = 3 ]
}

check_flyte() {
  local flyte=${VENV[flyte]}
  # pyflyte loads the module from the folder it is given as source root; Airflow's files there
  # are not imported (only the named module is).
  (cd dags && "$flyte/bin/pyflyte" --pkgs sweeper_flyte package \
    --image ghcr.io/example/sweeper:0.1.0 --output "$work/flyte.tgz" --force)
  "$flyte/bin/python" tests/orchestrators/check_flyte.py "$work/flyte.tgz"
  # The packaged task's command against the real binary: every declared output is a file it writes.
  if [ -n "${REDIS_URL:-}" ]; then
    fresh_db flyte orch-flyte
    "$flyte/bin/python" tests/orchestrators/run_as_declared.py flyte "$work/flyte.tgz"
  else
    echo "REDIS_URL unset: run under tests/servers.sh exec --"
    return 1
  fi
}

check_dagster() {
  local dagster=${VENV[dagster]}
  export DAGSTER_HOME=$work/dagster
  mkdir -p "$DAGSTER_HOME"
  "$dagster/bin/dagster" --version
  "$dagster/bin/python" tests/orchestrators/check_dagster.py definitions
  # Every key due (threshold 10m) with minutes to spare for a slow start.
  fresh_db dagster orch-dagster 5m..9m
  local rc=0 stored
  "$dagster/bin/dagster" asset materialize -f dags/sweeper_dagster.py -d dags --select sweeper_conversations \
    >"$work/dagster.log" 2>&1 || rc=$?
  grep -E 'ASSET_MATERIALIZATION|RUN_SUCCESS|RUN_FAILURE|pipes' "$work/dagster.log" | cut -c1-300 || true
  [ "$rc" = 0 ] || { tail -n 40 "$work/dagster.log"; echo "dagster asset materialize exited $rc"; return 1; }
  stored=$(psql -X -At "$DATABASE_URL" -c 'SELECT count(*) FROM sweeper.conversations')
  echo "conversations stored: $stored of 50"
  [ "$stored" -gt 0 ]
  "$dagster/bin/python" tests/orchestrators/check_dagster.py materialized "$stored"
  # PostgreSQL unreachable: sweeper exits 4, the materialization fails and records nothing.
  rc=0
  DATABASE_URL=postgres://postgres@127.0.0.1:1/nowhere SWEEPER_CONNECT_TIMEOUT=1s \
    "$dagster/bin/dagster" asset materialize -f dags/sweeper_dagster.py -d dags --select sweeper_conversations \
    >"$work/dagster-failing.log" 2>&1 || rc=$?
  grep -E 'sweeper exited|RUN_FAILURE' "$work/dagster-failing.log" | cut -c1-300 || true
  echo "dagster asset materialize with PostgreSQL down exited $rc"
  [ "$rc" != 0 ]
  grep -q 'sweeper exited 4' "$work/dagster-failing.log"
  "$dagster/bin/python" tests/orchestrators/check_dagster.py failed
}

check_helm() {
  local lint=${VENV[lint]} out=$work/helm helm
  # The whole chart check on each Helm in use (their schema validators differ: 4.1 refused a
  # schema 3.17 and 4.3 accept); the newest's renders are validated below.
  for helm in helm-3.17 helm-4.1; do
    echo "-- $("${TOOL[$helm]}" version --short)"
    mkdir -p "$out/$helm"
    "$lint/bin/python" tests/orchestrators/check_helm.py "${TOOL[$helm]}" "${TOOL[kubectl]}" "$SWEEPER" "$out/$helm"
  done
  echo "-- $("${TOOL[helm]}" version --short)"
  mkdir -p "$out"
  "$lint/bin/python" tests/orchestrators/check_helm.py "${TOOL[helm]}" "${TOOL[kubectl]}" "$SWEEPER" "$out"
  # Every rendered manifest (the chart's defaults, the sharded chart, the kustomization) as k8s/ is
  # checked: the same Kubernetes versions, the same checkov skips for the same reasons.
  local v
  for v in 1.27.0 1.37.0; do
    "$lint/bin/kubernetes-validate" --strict --kubernetes-version "$v" "$out"/*.yaml
  done
  "$lint/bin/checkov" --framework kubernetes --skip-download --compact --quiet \
    --skip-check CKV_K8S_43,CKV_K8S_15,CKV_K8S_21 -d "$out"
}

# docs/installing.md's blocks, command by command, as written or by their offline twins.
check_install_docs() {
  "${VENV[lint]}/bin/python" tests/orchestrators/check_install_docs.py "${TOOL[helm]}" "${TOOL[kubectl]}"
}

check_monitoring() {
  local promtool=${TOOL[promtool]}
  "$promtool" --version | head -n 1
  (cd k8s/monitoring && "$promtool" check rules sweeper-rules.yaml && "$promtool" test rules sweeper-rules.test.yaml)
  # A real sweep's metrics: the names the rules and the dashboard may use.
  fresh_db monitoring orch-monitoring
  "$SWEEPER" -q run --metrics-file "$work/sweeper.prom" >/dev/null
  "$promtool" check metrics <"$work/sweeper.prom"
  "${VENV[lint]}/bin/python" tests/orchestrators/check_monitoring.py "$promtool" "$work/sweeper.prom" "$work"
}

check_pushgateway() {
  fresh_db pushgateway orch-push 2m..5m
  local port gw pid
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  gw=http://127.0.0.1:$port
  "${TOOL[pushgateway]}" --web.listen-address="127.0.0.1:$port" >"$work/pushgateway.log" 2>&1 &
  pid=$!
  # shellcheck disable=SC2064
  trap "kill $pid 2>/dev/null || true" RETURN
  local i
  for i in $(seq 1 100); do
    curl -fsS "$gw/-/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  "${TOOL[pushgateway]}" --version 2>&1 | head -n 1
  # Round 1: the three shards, ok. Round 2: shard 1 cannot reach Redis (exit 3), 0 and 2 run again.
  for i in 0 1 2; do
    "$SWEEPER" -q run --shard "$i/3" --pushgateway "$gw" --output json >>"$work/push-round1.json"
  done
  local rc=0
  SWEEPER_CONNECT_TIMEOUT=1s REDIS_URL=redis://127.0.0.1:1 \
    "$SWEEPER" -q run --shard 1/3 --pushgateway "$gw" --output json >>"$work/push-round2.json" 2>/dev/null || rc=$?
  echo "shard 1 with Redis unreachable exited $rc"
  [ "$rc" = 3 ]
  for i in 0 2; do
    "$SWEEPER" -q run --shard "$i/3" --pushgateway "$gw" --output json >>"$work/push-round2.json"
  done
  # Another sweep of the same pattern and shard under its own --instance name: a group of its own.
  SWEEPER_INSTANCE=eu-1 "$SWEEPER" -q run --shard 0/3 --pushgateway "$gw" --output json >/dev/null
  "${VENV[lint]}/bin/python" tests/orchestrators/check_pushgateway.py "$gw" "$SWEEPER_MATCH" \
    "$work/push-round1.json" "$work/push-round2.json"
}

check_deb() {
  # The package of the binary under test: cargo-deb takes target/release/sweeper from the target
  # dir it is given, here a staging one, so no release build is needed (`make deb` does the real one).
  local stage=$work/deb-target root=$work/deb-root deb
  mkdir -p "$stage/release" target/deb-assets "$root"
  cp "$SWEEPER" "$stage/release/sweeper"
  "$SWEEPER" man | gzip -9n >target/deb-assets/sweeper.1.gz
  "$SWEEPER" completions bash >target/deb-assets/sweeper.bash
  "$SWEEPER" completions zsh >target/deb-assets/_sweeper
  "$SWEEPER" completions fish >target/deb-assets/sweeper.fish
  "${TOOL[cargo-deb]}" --version
  # --strip: the test build carries debug info; gzip (-Z gz --fast): xz takes minutes on 2 cores.
  CARGO_TARGET_DIR=$stage "${TOOL[cargo-deb]}" --locked --no-build --strip -Z gz --fast -o "$work/deb/"
  deb=$(ls "$work"/deb/*.deb)
  dpkg-deb --info "$deb"
  dpkg-deb --contents "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$work/deb-contents"
  local f missing=0
  for f in /usr/bin/sweeper /usr/share/man/man1/sweeper.1.gz /usr/share/bash-completion/completions/sweeper \
    /usr/share/zsh/vendor-completions/_sweeper /usr/share/fish/vendor_completions.d/sweeper.fish \
    /lib/systemd/system/sweeper.service /lib/systemd/system/sweeper.timer \
    /lib/systemd/system/sweeper-daemon.service /lib/systemd/system/sweeper-migrate.service /etc/sweeper/sweeper.env /usr/share/doc/sweeper/copyright \
    /usr/share/doc/sweeper/installing.md; do
    grep -qx "$f" "$work/deb-contents" || { echo "missing from the package: $f"; missing=1; }
  done
  [ $missing = 0 ]
  # The settings file is a conffile: an upgrade keeps the operator's edits.
  [ "$(dpkg-deb -I "$deb" conffiles)" = /etc/sweeper/sweeper.env ]
  dpkg-deb -x "$deb" "$root"
  # The package's version is the binary's.
  local version binary
  version=$(dpkg-deb -f "$deb" Version)
  binary=$("$root/usr/bin/sweeper" --version)
  echo "package $version, packaged binary: $binary"
  [ "sweeper ${version%-*}" = "$binary" ]
  # The units, in the package's tree plus the system's own units they refer to (timers.target...).
  cp -an /lib/systemd/system/. "$root/lib/systemd/system/"
  systemd-analyze --version | head -n 1
  (cd "$root" && systemd-analyze verify --man=no --root="$root" \
    lib/systemd/system/sweeper.service lib/systemd/system/sweeper.timer lib/systemd/system/sweeper-daemon.service \
    lib/systemd/system/sweeper-migrate.service)
  echo "systemd-analyze verify: the four units are clean"
  # migrate is a unit of its own (credentials of its own), which both sweeps want and start after,
  # but do not require: with PostgreSQL down the sweep must still run to protect the due keys.
  grep -qx 'Wants=sweeper-migrate.service' "$root/lib/systemd/system/sweeper.service"
  grep -qx 'Wants=sweeper-migrate.service' "$root/lib/systemd/system/sweeper-daemon.service"
  [ -z "$(grep -h '^Requires=' "$root/lib/systemd/system/sweeper.service" "$root/lib/systemd/system/sweeper-daemon.service")" ]
  [ -z "$(grep '^Exec.*migrate' "$root/lib/systemd/system/sweeper.service" "$root/lib/systemd/system/sweeper-daemon.service")" ]
  # The timer fires on the schedule the settings file gives the runs (which check their threshold).
  grep -qx 'OnCalendar=\*:0/5' "$root/lib/systemd/system/sweeper.timer"
  grep -qx 'SWEEPER_SCHEDULE="\*/5 \* \* \* \*"' "$root/etc/sweeper/sweeper.env"
  MANWIDTH=100 man -l "$root/usr/share/man/man1/sweeper.1.gz" 2>/dev/null | grep -q 'sweeper'
  bash -c "source '$root/usr/share/bash-completion/completions/sweeper' && complete -p sweeper" | grep -q sweeper
  echo "man page renders, bash completion loads"
  # The packaged binary as the units run it: settings from the EnvironmentFile, URLs from files
  # (what LoadCredential hands it), `migrate` then `run --output json`.
  fresh_db deb orch-deb 2m..5m
  local creds=$work/deb-creds summary
  mkdir -p "$creds"
  printf '%s\n' "$REDIS_URL" >"$creds/redis-url"
  printf '%s\n' "$DATABASE_URL" >"$creds/database-url"
  summary=$(env -i PATH=/usr/bin:/bin SWEEPER_MATCH="$SWEEPER_MATCH" bash -c "set -a; . '$root/etc/sweeper/sweeper.env'; set +a
    export SWEEPER_REDIS_URL_FILE='$creds/redis-url' SWEEPER_DATABASE_URL_FILE='$creds/database-url'
    '$root/usr/bin/sweeper' -q migrate >/dev/null && exec '$root/usr/bin/sweeper' run --output json")
  echo "packaged binary's summary: $summary"
  python3 -c 'import json,sys; s=json.loads(sys.argv[1]); assert s["status"]=="ok" and s["persisted"]==50, s' "$summary"
}

# An upgrade over the previous version, as dpkg does it, on a private root (--root; the maintainer
# scripts run without chroot, DPKG_ROOT set): the same binary packaged as 0.0.9-1 (the "previous"
# release) is installed, its timer enabled and its settings file edited as an operator would, then
# this package installed over it. The edit is kept (a conffile), the timer still enabled, the
# scripts asked systemd to reload and to restart a running daemon, and the upgraded units' migrate
# and sweep, run as the units run them, bring a new database up to date and save its keys.
# systemctl is a stand-in on the PATH: enable/disable/is-enabled go to the real one on the private
# root (what the scripts change on disk), the rest is logged (no systemd runs here).
check_deb_upgrade() {
  local stage=$work/deb-target root=$work/deb-upgrade stub=$work/deb-stub log=$work/deb-systemctl.log
  local old new version
  new=$(ls "$work"/deb/*.deb) || { echo "no package: check_deb builds it first"; return 1; }
  mkdir -p "$work/deb-old" "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/run/systemd/system" "$stub"
  : >"$root/var/lib/dpkg/status"
  CARGO_TARGET_DIR=$stage "${TOOL[cargo-deb]}" --locked --no-build --strip -Z gz --fast --deb-version 0.0.9-1 \
    -o "$work/deb-old/" >/dev/null
  old=$(ls "$work"/deb-old/*.deb)
  printf '%s\n' '#!/bin/sh' \
    "echo \"\$*\" >>'$log'" \
    'case "$1" in enable|disable|is-enabled)' \
    '  verb=$1; shift; [ "$1" = --now ] && shift' \
    "  exec /bin/systemctl --root='$root' \"\$verb\" \"\$@\" ;;" \
    'esac' >"$stub/systemctl"
  chmod +x "$stub/systemctl"
  local dpkg_args=(--root="$root" --force-script-chrootless --force-depends --force-confdef --force-confold)
  PATH="$stub:$PATH" dpkg "${dpkg_args[@]}" -i "$old"
  [ "$(dpkg-query --root="$root" -W -f='${Version}' sweeper)" = 0.0.9-1 ]
  PATH="$stub:$PATH" systemctl enable sweeper.timer
  printf '# a local edit\nSWEEPER_SCAN_COUNT=500\n' >>"$root/etc/sweeper/sweeper.env"
  : >"$log"
  PATH="$stub:$PATH" dpkg "${dpkg_args[@]}" -i "$new"
  version=$(dpkg-query --root="$root" -W -f='${Version}' sweeper)
  echo "upgraded 0.0.9-1 -> $version; the scripts called systemctl: $(tr '\n' ';' <"$log")"
  [ "$version" = "$(dpkg-deb -f "$new" Version)" ]
  grep -qx 'SWEEPER_SCAN_COUNT=500' "$root/etc/sweeper/sweeper.env"
  [ "$(/bin/systemctl --root="$root" is-enabled sweeper.timer)" = enabled ]
  grep -qx 'daemon-reload' "$log"
  grep -qx 'try-restart sweeper-daemon.service' "$log"
  if grep -q '^disable' "$log"; then echo "the upgrade disabled units"; return 1; fi
  echo "conffile edit kept, sweeper.timer still enabled, a running daemon restarted"
  # The upgraded units' migrate, then sweep, as the units run them, on a database never migrated.
  local db=orchestrators_upgrade_$$ creds=$work/deb-upgrade-creds migrate_cmd run_cmd summary
  psql -X -q "$SWEEPER_TEST_PG_ADMIN" -c "CREATE DATABASE $db"
  mkdir -p "$creds"
  printf '%s\n' "$REDIS_URL" >"$creds/redis-url"
  printf '%s\n' "${SWEEPER_TEST_PG_ADMIN%/*}/$db" >"$creds/database-url"
  REDIS_URL=$REDIS_URL "$SWEEPER" -q simulate --conversations 50 --ttl-spread 2m..5m \
    --match-prefix orch-upgrade:checkpoint:
  grep -qx 'Wants=sweeper-migrate.service' "$root/lib/systemd/system/sweeper.service"
  migrate_cmd=$(sed -n "s|^ExecStart=/usr/bin/|$root/usr/bin/|p" "$root/lib/systemd/system/sweeper-migrate.service")
  run_cmd=$(sed -n "s|^ExecStart=/usr/bin/|$root/usr/bin/|p" "$root/lib/systemd/system/sweeper.service")
  summary=$(env -i PATH=/usr/bin:/bin SWEEPER_MATCH='orch-upgrade:checkpoint:*' bash -c "set -a; . '$root/etc/sweeper/sweeper.env'; set +a
    export SWEEPER_REDIS_URL_FILE='$creds/redis-url' SWEEPER_DATABASE_URL_FILE='$creds/database-url'
    $migrate_cmd && exec $run_cmd" | tail -n 1)
  echo "after the upgrade, the units' migrate, then the sweep's summary: $summary"
  python3 -c 'import json,sys; s=json.loads(sys.argv[1]); assert s["status"]=="ok" and s["persisted"]==50, s' "$summary"
  [ "$(psql -X -At "${SWEEPER_TEST_PG_ADMIN%/*}/$db" -c 'SELECT count(*) FROM sweeper._sqlx_migrations WHERE success')" \
    = "$(find migrations -name '*.sql' | wc -l)" ]
  echo "the schema has every migration of the package"
}

# --- run them ---------------------------------------------------------------------------------
# One lane per orchestrator, all lanes at once (much of a check is waiting: Airflow's retry delay,
# process start-up); the checks of a lane run one after another, as they share state (Airflow's
# database). A lane's output is printed whole when every lane is done.

run() {
  local name=$1 fn=$2 t0 rc
  printf '\n=== %s\n' "$name"
  t0=$(date +%s)
  set +e
  (
    set -euo pipefail
    "$fn"
  )
  rc=$?
  set -e
  if [ $rc = 0 ]; then
    echo "ok      $name ($(($(date +%s) - t0))s)" >>"$work/results-$LANE"
  else
    echo "FAILED  $name (exit $rc, $(($(date +%s) - t0))s)" >>"$work/results-$LANE"
  fi
}

lane() {
  LANE=$1
  : >"$work/results-$LANE"
  case $1 in
    k8s)
      run "k8s: kubernetes-validate --strict, checkov" check_k8s
      run "k8s: the sharded CronJob's pods, run at once, save every key once" check_k8s_sharded
      ;;
    dockerfile) run "Dockerfile: hadolint" check_dockerfile ;;
    airflow)
      run "airflow: DagBag imports dags/, both DAGs' policy" check_airflow_dagbag
      run "airflow: the pod's arguments run the binary, the XCom file is its summary" check_airflow_kpo_args
      run "airflow: dags test sweeper_local, rows land, the Asset's event only when some did; the downstream DAG" check_airflow_dags_test
      run "airflow: dags test sweeper_local fails when PostgreSQL is down" check_airflow_dags_test_fails
      run "airflow: dags test sweeper_local_sharded, one mapped task per --shard I/3, every key once" check_airflow_sharded
      ;;
    flyte) run "flyte: pyflyte package, the launch plan every 5 minutes, the outputs the binary writes" check_flyte ;;
    dagster) run "dagster: asset materialize through Pipes, the summary as metadata; failing on exit 4" check_dagster ;;
    helm)
      run "helm: lint, template through kubernetes-validate and checkov, k8s/ in substance, refusals; kustomize" check_helm
      run "docs: installing.md's commands as written, or their offline twins" check_install_docs
      ;;
    monitoring) run "monitoring: promtool test rules, the dashboard's PromQL, only exported metrics" check_monitoring ;;
    pushgateway) run "pushgateway: three shards, three groups, the failing shard's last success old" check_pushgateway ;;
    deb)
      run "deb: cargo-deb builds it, its contents, systemd-analyze verify, the packaged binary sweeps" check_deb
      run "deb: over the previous version: conffile kept, timer enabled, daemon restarted, migrate" check_deb_upgrade
      ;;
  esac
}

lane_pids=()
for c in $CHECKS; do
  lane "$c" >"$work/log-$c" 2>&1 &
  lane_pids+=($!)
done
for i in "${!lane_pids[@]}"; do wait "${lane_pids[$i]}" || true; done
for c in $CHECKS; do cat "$work/log-$c"; done

printf '\n=== orchestrator checks (%ss)\n' "$(($(date +%s) - start))"
cat $(for c in $CHECKS; do echo "$work/results-$c"; done)
failed=$(cat "$work"/results-* | grep -c '^FAILED' || true)
[ "$failed" = 0 ] || { echo "$failed check(s) failed"; exit 1; }
