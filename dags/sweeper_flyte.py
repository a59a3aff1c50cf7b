"""A Flyte workflow running `sweeper run` every five minutes (flytekit 1.16).

A ContainerTask on the sweeper image: `--outputs-dir /var/outputs` makes the binary write one file per
summary field, which Flyte's copilot reads back as the task's typed outputs. The URLs come from the
Kubernetes Secret `sweeper` (keys redis-url, database-url, as in k8s/), mounted as files by Flyte's
secret injection and read with `--redis-url-file` / `--database-url-file`.

Register: `pyflyte --pkgs dags package --image <image>` then `flytectl register files`, or
`pyflyte register dags/sweeper_flyte.py`; activate the launch plan `sweeper_every_5m`.
(Airflow skips this file: dags/.airflowignore.)
"""

from __future__ import annotations

import typing

from flytekit import (
    ContainerTask,
    CronSchedule,
    LaunchPlan,
    Resources,
    Secret,
    TaskMetadata,
    kwtypes,
    workflow,
)
from sweeper_policy import (
    IMAGE,
    RUN_ENV,
    SCHEDULE,
    SECRET,
    SECRET_DATABASE_URL,
    SECRET_REDIS_URL,
    TIMEOUT,
)

OUTPUTS_DIR = "/var/outputs"
# Where Flyte mounts a secret requested as a file: /etc/flyte/secrets/<group>/<key>.
SECRETS_DIR = f"/etc/flyte/secrets/{SECRET}"

# The outputs are files the binary writes under --outputs-dir, named after the summary's fields.
SweepOutputs = typing.NamedTuple(
    "SweepOutputs",
    [
        ("status", str),
        ("scanned", int),
        ("due", int),
        ("persisted", int),
        ("unchanged", int),
        ("rejected", int),
    ],
)

sweep = ContainerTask(
    name="sweeper.run",
    image=IMAGE,
    # `command` replaces the image's entrypoint, so the binary is named, by its path in the image.
    command=[
        "/usr/local/bin/sweeper",
        "run",
        "--output",
        "json",
        "--outputs-dir",
        OUTPUTS_DIR,
    ],
    input_data_dir="/var/inputs",
    output_data_dir=OUTPUTS_DIR,
    inputs=kwtypes(),
    outputs=kwtypes(
        status=str,
        scanned=int,
        due=int,
        persisted=int,
        unchanged=int,
        rejected=int,
    ),
    environment={
        **RUN_ENV,
        "SWEEPER_REDIS_URL_FILE": f"{SECRETS_DIR}/{SECRET_REDIS_URL}",
        "SWEEPER_DATABASE_URL_FILE": f"{SECRETS_DIR}/{SECRET_DATABASE_URL}",
    },
    secret_requests=[
        Secret(group=SECRET, key=SECRET_REDIS_URL, mount_requirement=Secret.MountType.FILE),
        Secret(group=SECRET, key=SECRET_DATABASE_URL, mount_requirement=Secret.MountType.FILE),
    ],
    requests=Resources(cpu="250m", mem="128Mi"),
    limits=Resources(cpu="1", mem="256Mi"),
    metadata=TaskMetadata(
        # Under the 5-minute gap, after sweeper's own --deadline (4m) has stopped it.
        timeout=TIMEOUT,
        # A retry would start when the next scheduled run does: the next run is the retry.
        retries=0,
    ),
)


@workflow
def sweeper_wf() -> SweepOutputs:
    res = sweep()
    return SweepOutputs(
        status=res.status,
        scanned=res.scanned,
        due=res.due,
        persisted=res.persisted,
        unchanged=res.unchanged,
        rejected=res.rejected,
    )


sweeper_every_5m = LaunchPlan.get_or_create(
    workflow=sweeper_wf,
    name="sweeper_every_5m",
    schedule=CronSchedule(schedule=SCHEDULE),
)
