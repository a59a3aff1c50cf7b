"""The sweep's policy, shared by the Airflow DAGs (sweeper_dag.py) and the Flyte workflow
(sweeper_flyte.py), written once. The same values are in k8s/cronjob.yaml (tests/deploy.rs checks
those). Together they pass `sweeper check-schedule --schedule '*/5 * * * *' --threshold 10m
--max-runtime 270s`. Plain Python: no orchestrator is imported here.
"""

import os
from datetime import timedelta

SCHEDULE = "*/5 * * * *"
THRESHOLD = "10m"
# sweeper's own deadline: it stops scanning and saves what it read (exit 5, status partial)...
RUN_DEADLINE = "4m"
# ...before the orchestrator kills the task, and both are under the 5-minute gap between runs.
TIMEOUT = timedelta(minutes=4, seconds=30)

# Workers of the sharded DAG (sweeper_local_sharded): one mapped task per shard, each running
# `sweeper run --shard I/N`. Not SWEEPER_SHARDS, which is `--shards`'s own twin.
SHARDS = int(os.environ.get("SWEEPER_DAG_SHARDS", "3"))

# The environment of every sweep: the run checks the schedule it is started on.
RUN_ENV = {
    "SWEEPER_THRESHOLD": THRESHOLD,
    "SWEEPER_DEADLINE": RUN_DEADLINE,
    "SWEEPER_SCHEDULE": SCHEDULE,
    "SWEEPER_LOG_FORMAT": "json",
}

# Retention (docs/deploying.md#retention-on-a-schedule): SWEEPER_RETENTION where the DAGs
# are parsed or the workflow is packaged (e.g. 365d) makes each sweep prune, once a day, the
# conversations last updated longer ago (`sweeper run --retention`); the sweep's database URL must
# then be a role with DELETE. Unset: no retention.
RETENTION = os.environ.get("SWEEPER_RETENTION", "")
if RETENTION:
    RUN_ENV["SWEEPER_RETENTION"] = RETENTION

# The retention DAG (sweeper_retention): daily, as k8s/retention-cronjob.yaml, with the eraser's
# database URL from its own Secret (same key as the sweep's).
RETENTION_SCHEDULE = "17 3 * * *"
RETENTION_TIMEOUT = timedelta(hours=1)
ERASER_SECRET = "sweeper-eraser"

# The image (`SWEEPER_IMAGE` where the DAGs are parsed or the workflow is packaged overrides it).
IMAGE = os.environ.get("SWEEPER_IMAGE", "ghcr.io/example/sweeper:0.1.0")
# The Kubernetes Secret holding the URLs, and its keys (as in k8s/).
SECRET = "sweeper"
# The Secret of the migrate step's URL (key database-url): the schema owner's, so the sweep's
# credentials cannot change the schema (docs/deploying.md); by default the sweep's own.
MIGRATE_SECRET = os.environ.get("SWEEPER_MIGRATE_SECRET", SECRET)
SECRET_REDIS_URL = "redis-url"
SECRET_DATABASE_URL = "database-url"

# The Airflow Asset the sweep updates: the conversations table. A downstream DAG scheduled on it
# runs when a sweep persisted conversations (sweeper_downstream.py). The URI names where the table
# is (postgres://HOST:PORT/DATABASE/SCHEMA/TABLE); SWEEPER_ASSET_URI sets yours.
CONVERSATIONS_ASSET = "sweeper_conversations"
CONVERSATIONS_URI = os.environ.get("SWEEPER_ASSET_URI", "postgres://postgres:5432/sweeper/sweeper/conversations")
