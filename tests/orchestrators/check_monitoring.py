"""The alert rules and the Grafana dashboard of k8s/monitoring/ against promtool and the binary.

    python check_monitoring.py PROMTOOL METRICS_FILE OUT_DIR

- prometheusrule.yaml holds exactly the groups of sweeper-rules.yaml;
- every PromQL expression of the dashboard (panel targets and the variables' label_values
  selectors), with its Grafana variables given values, is a recording rule of a generated rules
  file that `promtool check rules` parses with Prometheus's own parser;
- every sweeper_* metric the rules and the dashboard name is one the binary wrote to METRICS_FILE
  (a real sweep's --metrics-file), and every metric the binary writes is shown on the dashboard.

(`promtool test rules` on sweeper-rules.test.yaml runs from check.sh.) Exits 1 with every failed
expectation listed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

promtool, metrics_file, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
DIR = Path("k8s/monitoring")
failures: list[str] = []


def expect(cond: bool, what: str) -> None:
    print(("  ok    " if cond else "  FAIL  ") + what)
    if not cond:
        failures.append(what)


rules = yaml.safe_load((DIR / "sweeper-rules.yaml").read_text())
operator = yaml.safe_load((DIR / "prometheusrule.yaml").read_text())
expect(operator["kind"] == "PrometheusRule" and operator["apiVersion"] == "monitoring.coreos.com/v1",
       "prometheusrule.yaml is a monitoring.coreos.com/v1 PrometheusRule")
expect(operator["spec"]["groups"] == rules["groups"], "the PrometheusRule's groups are sweeper-rules.yaml's")
alerts = [r for g in rules["groups"] for r in g["rules"]]
expect(all(r.get("labels", {}).get("severity") in ("warning", "critical") for r in alerts),
       "every alert has a severity")

# The dashboard's expressions with its variables set the way Grafana would substitute them.
dash = json.loads((DIR / "sweeper-dashboard.json").read_text())
VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h", "$job": "sweeper", "$shard": ".*",
        "$deadline": "240"}
var_names = {v["name"] for v in dash["templating"]["list"]}
exprs: list[tuple[str, str]] = []
for p in dash["panels"]:
    for t in p.get("targets", []):
        exprs.append((f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"]))
for v in dash["templating"]["list"]:
    if v["type"] == "query":
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["query"]["query"])
        expect(m is not None, f"variable {v['name']} is label_values(SELECTOR, LABEL)")
        if m:
            exprs.append((f"variable {v['name']}", m.group(1)))
used_vars = {u for _, e in exprs for u in re.findall(r"\$\w+", e)}
expect(used_vars <= set(VARS) and {u for u in used_vars if not u.startswith("$__")} <= {f"${n}" for n in var_names},
       f"every variable used is defined: {sorted(used_vars)}")
generated = {"groups": [{"name": "dashboard", "rules": []}]}
for i, (where, e) in enumerate(exprs):
    for k in sorted(VARS, key=len, reverse=True):
        e = e.replace(k, VARS[k])
    generated["groups"][0]["rules"].append({"record": f"sweeper_dashboard:expr_{i}", "expr": e})
gen = out / "dashboard-rules.yaml"
gen.write_text(yaml.safe_dump(generated, sort_keys=False))
r = subprocess.run([promtool, "check", "rules", str(gen)], capture_output=True, text=True)
print(r.stdout.strip(), r.stderr.strip())
expect(r.returncode == 0, f"promtool check rules parses the dashboard's {len(exprs)} expressions")

# Metric names against what the binary writes.
exported = {line.split()[2] for line in metrics_file.read_text().splitlines() if line.startswith("# TYPE ")}
print(f"  the binary exports: {sorted(exported)}")
expect(len(exported) >= 10, "the binary's metrics file has the sweeper metrics")
name = re.compile(r"\bsweeper_[a-z_]+\b")
in_rules = {m for r in alerts for m in name.findall(r["expr"])}
in_dash = {m for _, e in exprs for m in name.findall(e)}
expect(in_rules <= exported, f"the alerts name only exported metrics: {sorted(in_rules - exported)} unknown")
expect(in_dash <= exported, f"the dashboard names only exported metrics: {sorted(in_dash - exported)} unknown")
expect(exported <= in_dash, f"the dashboard shows every exported metric: {sorted(exported - in_dash)} missing")

if failures:
    print(f"check_monitoring: {len(failures)} failed")
    sys.exit(1)
print("check_monitoring: all ok")
