"""Sharded sweeps pushing to a real Pushgateway: one group per shard, none overwriting another.

    python check_pushgateway.py PUSHGATEWAY_URL PATTERN ROUND1_JSON ROUND2_JSON

check.sh has pushed, for 3 shards of PATTERN: round 1, all three ok; round 2, shard 1 failing
(Redis unreachable) and shards 0 and 2 ok again; then one more push with --instance. The
summaries' JSON lines are in ROUND1_JSON and ROUND2_JSON. Reads the gateway's groups
(GET /api/v1/metrics) and checks: three groups for PATTERN (shard 0, 1, 2) plus the --instance
one; shard 1's last status is failed and its last-success time is still round 1's, older than the
other shards' new one; each group's counters are its own shard's.
"""

from __future__ import annotations

import json
import sys
import urllib.request

base, pattern, round1, round2 = sys.argv[1:5]
failures: list[str] = []


def expect(cond: bool, what: str) -> None:
    print(("  ok    " if cond else "  FAIL  ") + what)
    if not cond:
        failures.append(what)


def summaries(path: str) -> dict[str, dict]:
    out = {}
    for line in open(path):
        if line.strip():
            s = json.loads(line)
            out[s.get("shard", "").split("/")[0] or "?"] = s
    return out


first, second = summaries(round1), summaries(round2)
with urllib.request.urlopen(f"{base}/api/v1/metrics", timeout=10) as r:
    data = json.load(r)["data"]


def value(group: dict, metric: str, **labels) -> float | None:
    for m in group.get(metric, {}).get("metrics", []):
        if all(m["labels"].get(k) == v for k, v in labels.items()):
            return float(m["value"])
    return None


groups = {}
for g in data:
    labels = g["labels"]
    print(f"  group {labels}")
    if labels.get("job") == "sweeper" and labels.get("match") == pattern:
        groups[(labels.get("shard"), labels.get("instance", ""))] = g

expect(set(groups) == {("0", ""), ("1", ""), ("2", ""), ("0", "eu-1")},
       f"a group per shard of {pattern}, and the --instance one: {sorted(groups)}")
if not failures:
    success = {s: value(groups[(s, "")], "sweeper_last_success_timestamp_seconds") for s in "012"}
    print(f"  last success per shard: {success}")
    expect(value(groups[("1", "")], "sweeper_last_run_status", status="failed") == 1.0,
           "shard 1's last run is failed")
    expect(second["1"]["status"] == "failed", f"shard 1's second summary says failed: {second['1'].get('error')}")
    for s in "02":
        expect(value(groups[(s, "")], "sweeper_last_run_status", status="ok") == 1.0, f"shard {s}'s last run is ok")
        expect(success["1"] is not None and success[s] is not None and success[s] > success["1"],
               f"shard 1's last success ({success['1']}) is older than shard {s}'s ({success[s]})")
    # Shard 1's round-2 push had no last success (PostgreSQL was never asked): the gateway kept round 1's.
    shard1_push = value(groups[("1", "")], "sweeper_last_run_timestamp_seconds")
    expect(success["1"] is not None and shard1_push is not None and success["1"] < shard1_push,
           f"shard 1's last success ({success['1']}) is before its last (failed) run ({shard1_push})")
    for s in "02":
        got = value(groups[(s, "")], "sweeper_last_run_scanned_keys")
        expect(got == second[s]["scanned"], f"shard {s}'s group holds its own counts: scanned {got} = {second[s]['scanned']}")
    total = sum(first[s]["scanned"] for s in "012")
    expect(all(0 < first[s]["scanned"] < total for s in "012"), f"each shard scanned a share of {total} keys")
    ok_runs = value(groups[("0", "")], "sweeper_runs_total", status="ok")
    expect(ok_runs == 2.0, f"shard 0's sweeper_runs_total{{status=ok}} counts its own 2 runs: {ok_runs}")

if failures:
    print(f"check_pushgateway: {len(failures)} failed")
    sys.exit(1)
print("check_pushgateway: all ok")
