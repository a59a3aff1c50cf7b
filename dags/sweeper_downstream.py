"""An example of a DAG downstream of the sweep (Airflow 3.3 data-aware scheduling): it runs when a
sweep persisted conversations, i.e. when the `sweeper` or `sweeper_local` DAG emitted an event on
the Asset `sweeper_conversations` (the conversations table), and reads what landed from the
events' extra (`persisted`, `messages_added`, `sweeper_run_id`, `match`). Replace the task with
your analytics or embeddings job; select the new rows with `updated_at` or `last_run_id`.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Asset, task
from sweeper_policy import CONVERSATIONS_ASSET, CONVERSATIONS_URI

CONVERSATIONS = Asset(name=CONVERSATIONS_ASSET, uri=CONVERSATIONS_URI)

with DAG(
    dag_id="sweeper_conversations_landed",
    doc_md=__doc__,
    schedule=[CONVERSATIONS],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["sweeper", "example"],
):

    @task
    def new_conversations(**context) -> dict:
        events = context["triggering_asset_events"][CONVERSATIONS]
        landed = {
            "events": len(events),
            "persisted": sum(int((e.extra or {}).get("persisted", 0)) for e in events),
            "sweeper_run_ids": [(e.extra or {}).get("sweeper_run_id") for e in events],
        }
        print(f"conversations landed: {landed}")
        return landed

    new_conversations()
