"""Dagster (1.13): the conversations table as an asset, materialized by `sweeper run` every five
minutes.

`sweeper_conversations` runs sweeper_pipes.py (beside this file) through Dagster Pipes' subprocess
client: it gets the worker's environment (REDIS_URL, DATABASE_URL or the SWEEPER_*_URL_FILE
settings) plus the run policy of sweeper_policy.py, runs the binary (`SWEEPER_BIN`, default
`sweeper` on PATH), and reports the run's summary counters back through Pipes as the
materialization's metadata. Exit codes 0 (ok, or skipped: another sweep held the lock) and 5
(partial: the deadline passed, what was read is saved) materialize; every other (1, 2 usage,
3 Redis, 4 PostgreSQL, 130/143 signals) fails the materialization, the summary's error in the log.
On Kubernetes, dagster-k8s's PipesK8sClient can start the same script in a pod whose image holds
Python, dagster-pipes and the binary (not checked here).

Load it with `dagster dev -f sweeper_dagster.py -d .` (or as a code location) after
`sweeper migrate` once. Kept out of Airflow's DagBag by .airflowignore.
"""


import os
import shutil
import sys

import dagster as dg
from sweeper_policy import CONVERSATIONS_ASSET, RUN_ENV, SCHEDULE, TIMEOUT

# The Pipes external side, beside this file.
EXTERNAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sweeper_pipes.py")


@dg.asset(
    name=CONVERSATIONS_ASSET,
    group_name="sweeper",
    kinds={"postgres", "redis"},
    description="Conversations saved from Redis checkpoints to PostgreSQL by `sweeper run`.",
)
def sweeper_conversations(
    context: dg.AssetExecutionContext, pipes_subprocess_client: dg.PipesSubprocessClient
) -> dg.MaterializeResult:
    binary = shutil.which(os.environ.get("SWEEPER_BIN", "sweeper"))
    if binary is None:
        raise dg.Failure("no sweeper binary: put it on PATH or set SWEEPER_BIN")
    # A failure exit raises DagsterPipesExecutionError: the materialization fails.
    return pipes_subprocess_client.run(
        command=[sys.executable, EXTERNAL, binary], context=context, env=dict(RUN_ENV)
    ).get_materialize_result()


sweep_job = dg.define_asset_job(
    "sweeper_job",
    selection=[sweeper_conversations],
    # Dagster's run monitoring ends a run past this (sweeper's own --deadline ends the sweep first).
    tags={"dagster/max_runtime": int(TIMEOUT.total_seconds())},
)

defs = dg.Definitions(
    assets=[sweeper_conversations],
    jobs=[sweep_job],
    schedules=[
        dg.ScheduleDefinition(
            name="sweeper_every_5m",
            job=sweep_job,
            cron_schedule=SCHEDULE,
            execution_timezone="UTC",
            default_status=dg.DefaultScheduleStatus.RUNNING,
        )
    ],
    resources={"pipes_subprocess_client": dg.PipesSubprocessClient()},
    # One step whose work is a subprocess: no process per step needed.
    executor=dg.in_process_executor,
)

