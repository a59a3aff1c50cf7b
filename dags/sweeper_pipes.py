"""The external side of the Dagster asset in sweeper_dagster.py, in the Dagster Pipes protocol:

    python sweeper_pipes.py PATH/TO/sweeper

runs `sweeper run --output json --summary-file FILE` (the settings come from the environment Pipes
passes on), then reports the summary's counters as the asset's materialization through
dagster-pipes. Exit 0 (ok or skipped) and 5 (partial: the deadline passed, what was read is saved)
materialize; any other exit code is logged with the summary's error and returned, which fails the
materialization. Only the Python standard library and dagster-pipes are needed, so the same script
runs wherever Pipes starts it (a subprocess here, a pod with PipesK8sClient).
"""

import json
import os
import subprocess
import sys
import tempfile

from dagster_pipes import open_dagster_pipes

MATERIALIZING = {0: "ok or skipped", 5: "partial: the deadline passed, what was read is saved"}
COUNTERS = ("scanned", "due", "not_due", "persisted", "unchanged", "rejected", "no_ttl",
            "expired_before_read", "protected", "messages_added", "duration_ms")


def main(binary: str) -> int:
    with open_dagster_pipes() as pipes, tempfile.TemporaryDirectory(prefix="sweeper-pipes-") as tmp:
        summary_file = os.path.join(tmp, "summary.json")
        # The JSON summary also goes to stdout (the run's log); the file is written for failed runs too.
        code = subprocess.run([binary, "run", "--output", "json", "--summary-file", summary_file]).returncode
        summary = {}
        if os.path.exists(summary_file):
            with open(summary_file) as f:
                summary = json.load(f)
        if code not in MATERIALIZING:
            pipes.log.error(f"sweeper exited {code}: {summary.get('error', 'no summary written')}")
            return code
        if code == 5:
            pipes.log.warning(f"sweeper: {MATERIALIZING[5]}; the next run goes on")
        metadata = {name: summary.get(name, 0) for name in COUNTERS}
        metadata.update({
            "status": summary.get("status", ""),
            "match": summary.get("match", ""),
            "sweeper_run_id": summary.get("run_id", -1),
            "exit_code": code,
        })
        pipes.report_asset_materialization(metadata=metadata)
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
