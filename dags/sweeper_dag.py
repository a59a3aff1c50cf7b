"""Airflow DAGs running `sweeper run` every five minutes, and `sweeper prune` daily (Airflow 3.3).

- `sweeper`: a KubernetesPodOperator on the sweeper image, the URLs from the Kubernetes Secret
  `sweeper` (the one k8s/cronjob.yaml mounts), the JSON summary pushed to XCom through
  `--summary-file /airflow/xcom/return.json`.
- `sweeper_local`: for installs without Kubernetes, a BashOperator running the binary on the
  worker (`SWEEPER_BIN`, default `sweeper` on PATH), with REDIS_URL and DATABASE_URL from the
  worker's environment; the JSON summary (stdout's last line) goes to XCom.
- `sweeper_local_sharded`: the same, one mapped task per shard (`SWEEPER_DAG_SHARDS`, 3), each
  running `sweeper run --shard I/N` on its share of the keys (docs/scale-out.md).

- `sweeper_retention`: retention, daily: `sweeper prune` in a pod (a KubernetesPodOperator on the
  same image), deleting the conversations last updated longer ago than the Airflow Variable
  `sweeper_retention` (default 365d), with the eraser's database URL from the Kubernetes Secret
  `sweeper-eraser` (a role with DELETE, which the sweep's has not; docs/deploying.md).

In each sweep DAG, a task `migrate` runs `sweeper migrate` first, with a URL of its own (the Secret
`SWEEPER_MIGRATE_SECRET`, or the worker's `SWEEPER_MIGRATE_DATABASE_URL`; the sweep's by default),
and the sweep runs after it whether it succeeded or not: with PostgreSQL down the sweep must still
protect the due keys (and refuses a schema it finds too old). A task `conversations_landed` after
the sweep updates the Asset `sweeper_conversations`
(the conversations table) when the sweep persisted something, with the counts as the event's
extra; when nothing was persisted it is skipped and no asset event is emitted, so DAGs scheduled
on the Asset (sweeper_downstream.py) run only when conversations landed.

The schedule, the threshold and the timeouts (sweeper_policy.py, shared with the Flyte workflow) go
together, as in k8s/cronjob.yaml:
`sweeper check-schedule --schedule '*/5 * * * *' --threshold 10m --max-runtime 270s` passes, and
each run passes `--schedule` so sweeper itself refuses a threshold the schedule cannot keep.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.secret import Secret
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset, task
from airflow.sdk.exceptions import AirflowSkipException
from kubernetes.client import models as k8s
from sweeper_policy import (
    CONVERSATIONS_ASSET,
    CONVERSATIONS_URI,
    ERASER_SECRET,
    IMAGE,
    MIGRATE_SECRET,
    RETENTION_SCHEDULE,
    RETENTION_TIMEOUT,
    RUN_ENV,
    SCHEDULE,
    SECRET,
    SHARDS,
    SECRET_DATABASE_URL,
    SECRET_REDIS_URL,
    TIMEOUT,
)

# One quick retry, for a failure at start (a server briefly unreachable). A retry that makes the
# run late only delays the next run (max_active_runs=1, and sweeper's lock skips an overlap).
RETRIES = 1
RETRY_DELAY = timedelta(seconds=30)

# The image: SWEEPER_IMAGE in the scheduler's environment sets the default (sweeper_policy.IMAGE),
# the Airflow Variable `sweeper_image` overrides it per run without a redeploy (read when the task
# runs, not at parse).
IMAGE_TEMPLATE = "{{ var.value.get('sweeper_image', '%s') }}" % IMAGE
# The Kubernetes namespace of the pod and of the Secret.
NAMESPACE = os.environ.get("SWEEPER_NAMESPACE", "default")

CONVERSATIONS = Asset(name=CONVERSATIONS_ASSET, uri=CONVERSATIONS_URI)

DEFAULT_ARGS = {
    "owner": "sweeper",
    "retries": RETRIES,
    "retry_delay": RETRY_DELAY,
    "execution_timeout": TIMEOUT,
}


def _dag(dag_id: str, doc: str, schedule: str = SCHEDULE) -> DAG:
    return DAG(
        dag_id=dag_id,
        doc_md=doc,
        schedule=schedule,
        start_date=datetime(2026, 1, 1),
        # Only the latest sweep matters: a missed one is not worth running late.
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["sweeper"],
    )


def _conversations_landed(sweep) -> None:
    """After the sweep: an asset event on CONVERSATIONS when it persisted something, else skipped.

    Airflow emits an outlet's event when the task succeeds, never when it is skipped, so the skip
    is how a run that saved nothing wakes no downstream DAG. A failed sweep fails nothing more: this
    task is then upstream_failed, also without an event."""

    @task(task_id="conversations_landed", outlets=[CONVERSATIONS], retries=0)
    def conversations_landed(summary, **context) -> int:
        # One summary, or one per shard of a mapped sweep. KubernetesPodOperator's XCom is the
        # parsed summary file; BashOperator's the summary line.
        many = [summary] if isinstance(summary, (str, dict)) else list(summary)
        runs = [json.loads(s) if isinstance(s, str) else s for s in many]
        persisted = sum(int(s.get("persisted") or 0) for s in runs)
        if persisted == 0:
            raise AirflowSkipException("the sweep persisted no conversation: no asset event")
        ids = [s.get("run_id") for s in runs]
        context["outlet_events"][CONVERSATIONS].extra = {
            "persisted": persisted,
            "messages_added": sum(int(s.get("messages_added") or 0) for s in runs),
            "sweeper_run_id": ids[0] if len(ids) == 1 else ids,
            "match": runs[0].get("match"),
        }
        return persisted

    conversations_landed(sweep.output)


# The same locked-down pod as k8s/cronjob.yaml, for every pod of these DAGs.
POD_SECURITY = k8s.V1PodSecurityContext(
    run_as_non_root=True,
    run_as_user=65532,
    run_as_group=65532,
    seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
)
CONTAINER_SECURITY = k8s.V1SecurityContext(
    allow_privilege_escalation=False,
    read_only_root_filesystem=True,
    capabilities=k8s.V1Capabilities(drop=["ALL"]),
)


def _pod(
    task_id: str,
    arguments: list[str],
    secrets: list[Secret],
    env_vars: dict | None = None,
    timeout=TIMEOUT,
    resources: tuple[dict, dict] = ({"cpu": "250m", "memory": "128Mi"}, {"cpu": "1", "memory": "256Mi"}),
    **kwargs,
) -> KubernetesPodOperator:
    """A pod on the sweeper image, locked down as k8s/cronjob.yaml's; the URLs as env from a
    Secret (a reference: no URL or password is in the DAG or the pod spec)."""
    return KubernetesPodOperator(
        task_id=task_id,
        name=f"sweeper-{task_id}",
        namespace=NAMESPACE,
        image=IMAGE_TEMPLATE,
        # The image's entrypoint is the binary: these are its arguments.
        arguments=arguments,
        env_vars=dict(RUN_ENV) if env_vars is None else env_vars,
        secrets=secrets,
        get_logs=True,
        on_finish_action="delete_pod",
        execution_timeout=timeout,
        # Kubernetes kills the pod too if the task's timeout somehow did not.
        active_deadline_seconds=int(timeout.total_seconds()),
        automount_service_account_token=False,
        security_context=POD_SECURITY,
        container_security_context=CONTAINER_SECURITY,
        container_resources=k8s.V1ResourceRequirements(requests=resources[0], limits=resources[1]),
        **kwargs,
    )


with _dag("sweeper", "`sweeper run` in a pod on the sweeper image; the JSON summary in XCom."):
    migrate = _pod(
        "migrate",
        ["migrate", "--log-format", "json"],
        [Secret("env", "DATABASE_URL", MIGRATE_SECRET, SECRET_DATABASE_URL)],
        retries=0,
    )
    pod = _pod(
        "sweep",
        # The summary file is what the xcom sidecar reads; sweeper writes it even for a failed run.
        ["run", "--output", "json", "--summary-file", "/airflow/xcom/return.json"],
        # The URLs from the Secret k8s/ uses (keys redis-url, database-url).
        [
            Secret("env", "REDIS_URL", SECRET, SECRET_REDIS_URL),
            Secret("env", "DATABASE_URL", SECRET, SECRET_DATABASE_URL),
        ],
        do_xcom_push=True,
        trigger_rule="all_done",
    )
    migrate >> pod
    _conversations_landed(pod)


# `exec`: sweeper's exit status is the task's, and the timeout's SIGTERM reaches it (it then saves
# what it read). Never piped: a pipe would report the last command's status instead.
LOCAL_SWEEP = 'exec "${SWEEPER_BIN:-sweeper}" run --output json'
# migrate with the schema owner's URL when the worker has one.
LOCAL_MIGRATE = 'DATABASE_URL="${SWEEPER_MIGRATE_DATABASE_URL:-$DATABASE_URL}" exec "${SWEEPER_BIN:-sweeper}" -q migrate'
LOCAL_ARGS = {
    # The worker's environment (REDIS_URL, DATABASE_URL, SWEEPER_BIN, PATH) plus the run policy.
    "env": dict(RUN_ENV),
    "append_env": True,
    # Every non-zero exit fails the task: by default exit 99 would mark it skipped.
    "skip_on_exit_code": None,
    # The last line of output is the JSON summary (logs go to stderr before it).
    "do_xcom_push": True,
}

def _local_migrate() -> BashOperator:
    return BashOperator(
        task_id="migrate",
        bash_command=LOCAL_MIGRATE,
        env=dict(RUN_ENV),
        append_env=True,
        skip_on_exit_code=None,
        retries=0,
    )


with _dag("sweeper_local", "`sweeper run` on the worker (no Kubernetes); the JSON summary in XCom."):
    bash = BashOperator(task_id="sweep", bash_command=LOCAL_SWEEP, trigger_rule="all_done", **LOCAL_ARGS)
    _local_migrate() >> bash
    _conversations_landed(bash)


with _dag(
    "sweeper_local_sharded",
    f"`sweeper run --shard I/{SHARDS}` on the worker, one mapped task per shard; the summaries in XCom.",
):
    # Each shard has its own lock and its own row in sweep_runs; together they sweep every key once.
    shards = BashOperator.partial(task_id="sweep", trigger_rule="all_done", **LOCAL_ARGS).expand(
        bash_command=[f"{LOCAL_SWEEP} --shard {i}/{SHARDS}" for i in range(SHARDS)]
    )
    _local_migrate() >> shards
    _conversations_landed(shards)


with _dag(
    "sweeper_retention",
    "`sweeper prune` daily in a pod, with the eraser's database URL; its JSON report in the log.",
    schedule=RETENTION_SCHEDULE,
):
    _pod(
        "prune",
        ["prune", "--output", "json", "--log-format", "json"],
        # Only the database, and as the eraser: no Redis, and not the sweep's role.
        [Secret("env", "DATABASE_URL", ERASER_SECRET, SECRET_DATABASE_URL)],
        # The window from the Variable `sweeper_retention` (read when the task runs), or 365d.
        env_vars={"SWEEPER_OLDER_THAN": "{{ var.value.get('sweeper_retention', '365d') }}"},
        # A prune stopped here has a receipt of what it deleted; the next one deletes the rest.
        timeout=RETENTION_TIMEOUT,
        resources=({"cpu": "100m", "memory": "64Mi"}, {"cpu": "500m", "memory": "128Mi"}),
    )
