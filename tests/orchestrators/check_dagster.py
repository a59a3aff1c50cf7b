"""What `dagster asset materialize` left in the Dagster instance (DAGSTER_HOME), against PostgreSQL.

    python check_dagster.py definitions
    python check_dagster.py materialized STORED_ROWS
    python check_dagster.py failed

- definitions: dags/sweeper_dagster.py loads; the asset, the schedule (every five minutes, UTC)
  and the job's max runtime under the 5-minute gap are what sweeper_policy.py says;
- materialized: one materialization of sweeper_conversations whose metadata (reported through
  Pipes by sweeper_pipes.py) is the run's summary: status ok, persisted = the rows stored;
- failed: the newest run failed and no second materialization was recorded.
"""

import importlib.util
import sys

import dagster as dg

failures: list[str] = []


def expect(cond: bool, what: str) -> None:
    print(("  ok    " if cond else "  FAIL  ") + what)
    if not cond:
        failures.append(what)


KEY = dg.AssetKey("sweeper_conversations")
mode = sys.argv[1]
if mode == "definitions":
    sys.path.insert(0, "dags")
    spec = importlib.util.spec_from_file_location("sweeper_dagster", "dags/sweeper_dagster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    defs = module.defs
    schedule = defs.resolve_schedule_def("sweeper_every_5m")
    expect(schedule.cron_schedule == "*/5 * * * *" and schedule.execution_timezone == "UTC",
           f"schedule {schedule.cron_schedule!r} in {schedule.execution_timezone}")
    job = defs.resolve_job_def("sweeper_job")
    expect(int(job.tags.get("dagster/max_runtime", 0)) == 270, f"the job's max runtime: {job.tags}")
    expect(KEY in {a.key for a in defs.resolve_all_asset_specs()}, "the asset sweeper_conversations")
else:
    instance = dg.DagsterInstance.get()
    events = instance.fetch_materializations(KEY, limit=10).records
    runs = instance.get_runs(limit=1)
    if mode == "materialized":
        stored = int(sys.argv[2])
        expect(len(events) == 1, f"one materialization: {len(events)}")
        if events:
            meta = {k: v.value for k, v in events[0].asset_materialization.metadata.items()}
            print(f"  metadata: {meta}")
            expect(meta.get("status") == "ok" and meta.get("exit_code") == 0, "status ok, exit 0")
            expect(meta.get("persisted") == stored, f"persisted {meta.get('persisted')} = {stored} rows stored")
            expect(meta.get("due") == meta.get("persisted", 0) + meta.get("unchanged", 0) + meta.get("rejected", 0),
                   "due = persisted + unchanged + rejected")
            expect(isinstance(meta.get("sweeper_run_id"), int) and meta["sweeper_run_id"] > 0, "the sweep_runs id")
    elif mode == "failed":
        expect(len(events) == 1, f"still one materialization after the failed run: {len(events)}")
        expect(runs and runs[0].status == dg.DagsterRunStatus.FAILURE, f"the newest run failed: {runs[0].status if runs else None}")

if failures:
    print(f"check_dagster: {len(failures)} failed")
    sys.exit(1)
print(f"check_dagster {mode}: all ok")
