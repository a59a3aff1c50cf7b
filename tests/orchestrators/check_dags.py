"""Airflow's DagBag imports dags/ with no import error, and both DAGs have the policy they must have.

Run with the Airflow venv's python, AIRFLOW_HOME in a temp dir, AIRFLOW__CORE__DAGS_FOLDER=dags and
AIRFLOW__CORE__LOAD_EXAMPLES=False. Exits 1 with every failed expectation listed.
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import timedelta

from airflow.dag_processing.dagbag import DagBag

failures: list[str] = []


def expect(cond: bool, what: str) -> None:
    print(("  ok    " if cond else "  FAIL  ") + what)
    if not cond:
        failures.append(what)


folder = os.environ["AIRFLOW__CORE__DAGS_FOLDER"]
# Airflow's DAG processor and task runner put the DAG folder (bundle) on sys.path, so the DAG file
# imports sweeper_policy.py beside it; a bare DagBag does not (`airflow dags test` below runs the
# real way).
sys.path.append(folder)
bag = DagBag(dag_folder=folder)

expect(not bag.import_errors, f"no import errors in {folder}: {dict(bag.import_errors)}")
expect(set(bag.dag_ids) == {"sweeper", "sweeper_local", "sweeper_local_sharded", "sweeper_conversations_landed",
                           "sweeper_retention"},
       f"exactly the three sweep DAGs, the downstream example and retention: {sorted(bag.dag_ids)}")
# dags/.airflowignore keeps Airflow from importing the Flyte workflow and the Dagster assets
# (neither flytekit nor dagster is installed here).
for other in ("sweeper_flyte", "sweeper_dagster"):
    expect(
        not any(other in str(s.file) for s in bag.dagbag_stats),
        f"{other}.py is ignored: parsed {[str(s.file) for s in bag.dagbag_stats]}",
    )

LIMIT = timedelta(minutes=5)
for dag_id in ("sweeper", "sweeper_local"):
    dag = bag.dags.get(dag_id)
    if dag is None:
        continue
    print(f"{dag_id}:")
    tasks = dag.tasks
    expect(sorted(t.task_id for t in tasks) == ["conversations_landed", "migrate", "sweep"],
           f"migrate, the sweep and conversations_landed: {[t.task_id for t in tasks]}")
    task = dag.get_task("sweep")
    migrate = dag.task_dict.get("migrate")
    expect(migrate is not None and migrate.downstream_task_ids == {"sweep"} and task.trigger_rule == "all_done",
           f"migrate runs first, and the sweep after it even when it failed (due keys are protected): "
           f"{task.trigger_rule}")
    landed = dag.task_dict.get("conversations_landed")
    if landed is not None:
        outlets = [(o.name, o.uri) for o in landed.outlets]
        expect(outlets == [("sweeper_conversations", "postgres://postgres:5432/sweeper/sweeper/conversations")],
               f"conversations_landed's outlet is the conversations Asset: {outlets}")
        expect(landed.upstream_task_ids == {"sweep"}, f"conversations_landed follows the sweep: {landed.upstream_task_ids}")
        expect(task.outlets == [], f"the sweep itself emits no asset event (a run that saved nothing): {task.outlets}")
    expect(dag.schedule == "*/5 * * * *", f"schedule {dag.schedule!r}")
    expect(dag.catchup is False, f"catchup {dag.catchup}")
    expect(dag.max_active_runs == 1, f"max_active_runs {dag.max_active_runs}")
    expect(task.retries >= 1, f"retries {task.retries}")
    expect(task.retry_delay > timedelta(0), f"retry_delay {task.retry_delay}")
    timeout = task.execution_timeout
    expect(timeout is not None and timeout < LIMIT, f"execution_timeout {timeout} under the 5-minute gap")
    expect(task.do_xcom_push is True, "do_xcom_push")
    env = task.env_vars if dag_id == "sweeper" else task.env
    env = {e.name: e.value for e in env} if isinstance(env, list) else dict(env or {})
    expect(env.get("SWEEPER_SCHEDULE") == dag.schedule, f"SWEEPER_SCHEDULE is the DAG's schedule: {env}")
    expect(env.get("SWEEPER_DEADLINE") == "4m" and timeout is not None and timeout > timedelta(minutes=4),
           "sweeper's --deadline (4m) ends the run before execution_timeout")

    if dag_id == "sweeper":
        expect(type(task).__name__ == "KubernetesPodOperator", f"a KubernetesPodOperator: {type(task).__name__}")
        if migrate is not None:
            expect(list(migrate.arguments)[:1] == ["migrate"]
                   and {(s.deploy_target, s.key) for s in migrate.secrets} == {("DATABASE_URL", "database-url")},
                   f"the migrate pod runs `migrate` with a database URL from its Secret: {migrate.arguments}")
        args = list(task.arguments)
        joined = " ".join(args)
        expect(args[:3] == ["run", "--output", "json"], f"arguments {args}")
        expect("--summary-file /airflow/xcom/return.json" in joined, "--summary-file /airflow/xcom/return.json")
        expect("sweeper" in task.image and "var.value" in task.image, f"image from the Variable, defaulted: {task.image}")
        secrets = {(s.deploy_target, s.secret, s.key) for s in task.secrets}
        expect(secrets == {("REDIS_URL", "sweeper", "redis-url"), ("DATABASE_URL", "sweeper", "database-url")},
               f"URLs as env from the Secret sweeper: {sorted(secrets)}")
        expect(not any("://" in str(v) for v in env.values()), "no URL in the pod's env")
        csc = task.container_security_context
        expect(csc is not None and csc.read_only_root_filesystem and not csc.allow_privilege_escalation
               and csc.capabilities.drop == ["ALL"], "locked-down container")
        psc = task.security_context
        expect(psc is not None and psc.run_as_non_root, "non-root pod")
    else:
        expect(type(task).__name__ == "BashOperator", f"a BashOperator: {type(task).__name__}")
        cmd = task.bash_command
        expect("|" not in cmd, f"the command is not piped: {cmd!r}")
        words = shlex.split(cmd)
        expect(words[0] == "exec" and "SWEEPER_BIN" in words[1] and words[2:5] == ["run", "--output", "json"],
               f"execs $SWEEPER_BIN run --output json: {words}")
        expect(task.skip_on_exit_code is None or not task.skip_on_exit_code, f"no exit code skips: {task.skip_on_exit_code}")
        expect(task.append_env is True, "the worker's environment is kept (REDIS_URL, DATABASE_URL, PATH)")

sharded = bag.dags.get("sweeper_local_sharded")
if sharded is not None:
    print("sweeper_local_sharded:")
    task = sharded.get_task("sweep")
    expect(type(task).__name__ == "MappedOperator", f"the sweep is one mapped task: {type(task).__name__}")
    commands = task.expand_input.value.get("bash_command", [])
    want = [f'exec "${{SWEEPER_BIN:-sweeper}}" run --output json --shard {i}/3' for i in range(3)]
    expect(commands == want, f"one `--shard I/3` per shard: {commands}")
    expect(sharded.schedule == "*/5 * * * *" and sharded.max_active_runs == 1 and sharded.catchup is False,
           "the sweep DAGs' schedule, one run at a time, no catchup")
    expect(task.trigger_rule == "all_done" and sharded.task_dict.get("migrate") is not None
           and sharded.task_dict["migrate"].downstream_task_ids == {"sweep"},
           f"migrate first, the shards after it whatever it did: {task.trigger_rule}")
    landed = sharded.task_dict.get("conversations_landed")
    expect(landed is not None and landed.upstream_task_ids == {"sweep"}, "conversations_landed follows the shards")

downstream = bag.dags.get("sweeper_conversations_landed")
if downstream is not None:
    print("sweeper_conversations_landed:")
    assets = [(a.name, a.uri) for a in downstream.timetable.asset_condition.objects] \
        if hasattr(downstream.timetable, "asset_condition") else []
    expect(assets == [("sweeper_conversations", "postgres://postgres:5432/sweeper/sweeper/conversations")],
           f"scheduled on the conversations Asset: {assets} ({type(downstream.timetable).__name__})")
    expect(downstream.catchup is False, f"catchup {downstream.catchup}")

retention = bag.dags.get("sweeper_retention")
if retention is not None:
    print("sweeper_retention:")
    expect([t.task_id for t in retention.tasks] == ["prune"], f"one task, prune: {[t.task_id for t in retention.tasks]}")
    task = retention.get_task("prune")
    expect(retention.schedule == "17 3 * * *", f"daily: {retention.schedule!r}")
    expect(retention.catchup is False and retention.max_active_runs == 1, "no catchup, one run at a time")
    expect(list(task.arguments)[:3] == ["prune", "--output", "json"], f"arguments {list(task.arguments)}")
    env = {e.name: e.value for e in task.env_vars} if isinstance(task.env_vars, list) else dict(task.env_vars)
    expect("sweeper_retention" in env.get("SWEEPER_OLDER_THAN", "") and "365d" in env.get("SWEEPER_OLDER_THAN", ""),
           f"the window from the Variable, defaulted: {env}")
    secrets = {(s.deploy_target, s.secret, s.key) for s in task.secrets}
    expect(secrets == {("DATABASE_URL", "sweeper-eraser", "database-url")},
           f"only the eraser's database URL: {sorted(secrets)}")
    csc, psc = task.container_security_context, task.security_context
    expect(csc is not None and csc.read_only_root_filesystem and psc is not None and psc.run_as_non_root,
           "the same locked-down pod")
    # Its own time limit (a daily prune may take longer than a sweep), Kubernetes' the same.
    limit = task.execution_timeout.total_seconds() if task.execution_timeout else None
    expect(limit is not None and task.active_deadline_seconds == int(limit)
           and limit > bag.dags["sweeper"].get_task("sweep").execution_timeout.total_seconds(),
           f"timeout {task.execution_timeout}, active deadline {task.active_deadline_seconds}")

if failures:
    print(f"check_dags: {len(failures)} failed")
    sys.exit(1)
print("check_dags: all ok")
