"""The archive `pyflyte package` made of dags/sweeper_flyte.py holds what Flyte will register: the
ContainerTask on the sweeper image writing its outputs under /var/outputs, the workflow, and the
launch plan firing every five minutes.

    python check_flyte.py ARCHIVE.tgz

Exits 1 with every failed expectation listed.
"""

from __future__ import annotations

import sys
import tarfile

from flyteidl.admin import launch_plan_pb2, task_pb2, workflow_pb2
from flyteidl.core import types_pb2

failures: list[str] = []


def expect(cond: bool, what: str) -> None:
    print(("  ok    " if cond else "  FAIL  ") + what)
    if not cond:
        failures.append(what)


# The binary's --outputs-dir file names for the typed outputs (a subset of the summary's fields).
OUTPUTS = {"status": "STRING", "scanned": "INTEGER", "due": "INTEGER", "persisted": "INTEGER",
           "unchanged": "INTEGER", "rejected": "INTEGER"}

tasks, workflows, plans = [], [], []
with tarfile.open(sys.argv[1]) as tar:
    for member in tar.getmembers():
        data = tar.extractfile(member).read()
        name = member.name
        # pyflyte names each file N_<entity name>_<resource type>.pb: 1 task, 2 workflow, 3 launch plan.
        kind = name.rsplit("_", 1)[-1].removesuffix(".pb")
        if kind == "1":
            msg = task_pb2.TaskSpec()
            msg.ParseFromString(data)
            tasks.append(msg)
        elif kind == "2":
            msg = workflow_pb2.WorkflowSpec()
            msg.ParseFromString(data)
            workflows.append(msg)
        elif kind == "3":
            msg = launch_plan_pb2.LaunchPlan()
            msg.ParseFromString(data)
            plans.append(msg)

expect(len(tasks) == 1, f"one task: {len(tasks)}")
expect(len(workflows) == 1, f"one workflow: {len(workflows)}")
scheduled = [p for p in plans if p.spec.entity_metadata.schedule.cron_schedule.schedule]
expect(len(scheduled) == 1, f"one scheduled launch plan: {[p.id.name for p in plans]}")
for plan in scheduled:
    cron = plan.spec.entity_metadata.schedule.cron_schedule.schedule
    expect(cron == "*/5 * * * *", f"launch plan {plan.id.name} fires on {cron!r}")
    expect(plan.spec.workflow_id.name == workflows[0].template.id.name if workflows else False,
           f"it launches the workflow {plan.spec.workflow_id.name}")

for spec in tasks:
    t = spec.template
    c = t.container
    expect("sweeper" in c.image, f"image {c.image}")
    args = list(c.command) + list(c.args)
    joined = " ".join(args)
    expect(joined.startswith("/usr/local/bin/sweeper run") and "--output json" in joined
           and "--outputs-dir /var/outputs" in joined, f"runs {joined!r}")
    expect(c.data_config.output_path == "/var/outputs", f"outputs read from {c.data_config.output_path!r}")
    outs = {k: types_pb2.SimpleType.Name(v.type.simple) for k, v in t.interface.outputs.variables.items()}
    expect(outs == OUTPUTS, f"typed outputs {outs}")
    env = {kv.key: kv.value for kv in c.env}
    expect(env.get("SWEEPER_SCHEDULE") == "*/5 * * * *" and env.get("SWEEPER_DEADLINE") == "4m",
           f"the run's schedule and deadline: {env}")
    expect(not any("://" in v for v in env.values()), "no URL in the task's env")
    secrets = {(s.group, s.key) for s in t.security_context.secrets}
    expect(secrets == {("sweeper", "redis-url"), ("sweeper", "database-url")}, f"secrets {sorted(secrets)}")
    timeout = t.metadata.timeout.seconds
    expect(0 < timeout < 300, f"timeout {timeout}s under the 5-minute gap")

if failures:
    print(f"check_flyte: {len(failures)} failed")
    sys.exit(1)
print("check_flyte: all ok")
