"""The Helm chart (k8s/helm/sweeper) and the kustomization (k8s/), rendered by the real tools.

    python check_helm.py HELM KUBECTL SWEEPER OUT_DIR

- `helm lint --strict` on the defaults and on a sharded install (check.sh runs this file once per
  Helm in use: 3.17, 4.1, 4.3);
- `helm template` of both into OUT_DIR (check.sh passes the files to kubernetes-validate and checkov);
- the rendered CronJob is k8s/cronjob.yaml in substance (every field but Helm's extra labels and
  the namespace), the sharded one k8s/cronjob-sharded.yaml, the migrate Job k8s/migrate-job.yaml
  plus its pre-install/pre-upgrade hook annotations;
- the chart refuses a schedule and threshold exactly when `sweeper check-schedule` does (the binary
  is the judge), a protect-ttl not above the threshold, and values its schema forbids;
- `kubectl kustomize k8s/` renders the migrate Job and the CronJob, as written in the files;
- the forget Job: k8s/forget/ filled in as docs/installing.md says is the chart's `forget.*` Job
  in substance (the eraser's Secret, a hook named after the reason, which is required).

Exits 1 with every failed expectation listed.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

helm, kubectl, sweeper, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
CHART = "k8s/helm/sweeper"
failures: list[str] = []


def expect(cond: bool, what: str) -> None:
    print(("  ok    " if cond else "  FAIL  ") + what)
    if not cond:
        failures.append(what)


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(objs: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objs}


def substance(obj: dict) -> dict:
    """The object without what names it rather than what it does: labels other than
    app.kubernetes.io/name (Helm adds its own), the namespace, annotations (the hook's are checked
    on their own), the pod template's labels."""
    o = copy.deepcopy(obj)
    meta = o["metadata"]
    meta.pop("namespace", None)
    if o["kind"] == "Job":
        # Named per release in k8s/, per revision in the chart: checked on their own.
        meta.pop("name", None)
    meta.pop("annotations", None)
    meta["labels"] = {"app.kubernetes.io/name": (meta.get("labels") or {}).get("app.kubernetes.io/name")}
    spec = o["spec"].get("jobTemplate", {}).get("spec", o["spec"])
    spec["template"].pop("metadata", None)
    return o


def diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff(a.get(k), b.get(k), f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: chart {a!r}, k8s/ {b!r}"]


# The one required value without a default (k8s/cronjob.yaml's address).
PUSHGATEWAY = ("--set", "pushgateway=http://pushgateway.monitoring:9091")


def template(name: str, *args: str) -> subprocess.CompletedProcess:
    return run(helm, "template", name, CHART, "--namespace", "sweeper", "--kube-version", "1.37.0", *PUSHGATEWAY,
               *args)


# --- lint and render --------------------------------------------------------------------------
SHARDED = ("--set", "shards=3", "--set", "backoffLimit=2")
for what, args in (("defaults", ()), ("sharded", SHARDED)):
    r = run(helm, "lint", "--strict", CHART, *PUSHGATEWAY, *args)
    print(r.stdout.strip())
    expect(r.returncode == 0, f"helm lint --strict ({what}): {r.stderr.strip()}")

r = template("sweeper")
expect(r.returncode == 0, f"helm template (defaults): {r.stderr.strip()}")
(out / "chart-default.yaml").write_text(r.stdout)
single = by_kind(docs(r.stdout))
r = template("sweeper-sharded", *SHARDED)
expect(r.returncode == 0, f"helm template (sharded): {r.stderr.strip()}")
(out / "chart-sharded.yaml").write_text(r.stdout)
sharded = by_kind(docs(r.stdout))
expect(set(single) == {"CronJob", "Job", "NetworkPolicy"}, f"a CronJob, the migrate Job, a NetworkPolicy: {sorted(single)}")

# --- the same objects as k8s/ --------------------------------------------------------------------
k8s = {p: yaml.safe_load(Path(p).read_text()) for p in ("k8s/cronjob.yaml", "k8s/cronjob-sharded.yaml", "k8s/migrate-job.yaml")}
for chart_obj, path in ((single.get("CronJob"), "k8s/cronjob.yaml"),
                        (sharded.get("CronJob"), "k8s/cronjob-sharded.yaml"),
                        (single.get("Job"), "k8s/migrate-job.yaml")):
    if chart_obj is None:
        expect(False, f"rendered object for {path}")
        continue
    d = diff(substance(chart_obj), substance(k8s[path]))
    expect(not d, f"the chart's {chart_obj['kind']} {chart_obj['metadata']['name']} is {path} in substance: {d}")

job = single.get("Job", {})
expect(job.get("metadata", {}).get("name") == "sweeper-migrate-1", f"the hook Job is named per revision: {job.get('metadata')}")
r = template("sweeper", "--set", "migrate.existingSecret=sweeper-owner", "--set", "migrate.databaseUrlKey=OWNER",
             "--is-upgrade")
vols = {o["kind"]: o["spec"].get("jobTemplate", {}).get("spec", o["spec"])["template"]["spec"]["volumes"]
        for o in docs(r.stdout) if o["kind"] != "NetworkPolicy"}
expect(r.returncode == 0 and vols.get("Job") == [{"name": "secrets", "secret": {"secretName": "sweeper-owner",
       "items": [{"key": "OWNER", "path": "database-url"}]}}] and vols["CronJob"][0]["secret"]["secretName"] == "sweeper",
       f"migrate takes a Secret of its own, the sweep keeps its: {vols}")
ann = job.get("metadata", {}).get("annotations", {})
expect(ann.get("helm.sh/hook") == "pre-install,pre-upgrade", f"migrate Job is a pre-install,pre-upgrade hook: {ann}")
labels = single.get("CronJob", {}).get("metadata", {}).get("labels", {})
for k in ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
          "app.kubernetes.io/managed-by"):
    expect(k in labels, f"label {k}: {labels.get(k)}")
expect(labels.get("app.kubernetes.io/version") == yaml.safe_load(Path(f"{CHART}/Chart.yaml").read_text())["appVersion"],
       "app.kubernetes.io/version is the chart's appVersion")
cargo_version = next(line.split('"')[1] for line in Path("Cargo.toml").read_text().splitlines() if line.startswith("version"))
expect(labels.get("app.kubernetes.io/version") == cargo_version, f"the chart's appVersion is the binary's version {cargo_version}")

# existingSecret with its key names.
r = template("sweeper", "--set", "existingSecret=chat-db", "--set", "secretKeys.redisUrl=REDIS",
             "--set", "secretKeys.databaseUrl=PG")
vols = [v for o in docs(r.stdout) if o["kind"] != "NetworkPolicy" for v in
        (o["spec"].get("jobTemplate", {}).get("spec", o["spec"]))["template"]["spec"]["volumes"]]
expect(r.returncode == 0 and all(v["secret"]["secretName"] == "chat-db" for v in vols)
       and {i["key"] for v in vols for i in v["secret"]["items"]} == {"REDIS", "PG"},
       f"existingSecret and its key names reach every volume: {vols}")

# --- the one-off forget Job: k8s/forget/ filled in as docs/installing.md says, and the chart's ----
def kustomized_forget(request: str, user: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        copy_dir = Path(tmp, f"forget-{request}")
        shutil.copytree("k8s/forget", copy_dir)
        kust = copy_dir / "kustomization.yaml"
        kust.write_text(kust.read_text().replace("REQUEST", request).replace("USER_ID", user))
        r = run(kubectl, "kustomize", str(copy_dir))
        expect(r.returncode == 0, f"kubectl kustomize of a filled k8s/forget: {r.stderr.strip()[:200]}")
        return docs(r.stdout)


FORGET = ("--set", "forget.users={u-123}", "--set", "forget.reason=dsr-42")
r = template("sweeper", *FORGET)
(out / "chart-forget.yaml").write_text(r.stdout)
jobs = {o["metadata"]["name"]: o for o in docs(r.stdout) if o["kind"] == "Job"}
chart_forget = jobs.get("sweeper-forget-dsr-42")
expect(r.returncode == 0 and set(jobs) == {"sweeper-migrate-1", "sweeper-forget-dsr-42"},
       f"forget.users and forget.reason render a forget Job named after the reason: {sorted(jobs)} {r.stderr.strip()[:200]}")
kustomized = kustomized_forget("dsr-42", "u-123")
k8s_forget = kustomized[0] if len(kustomized) == 1 else None
if chart_forget and k8s_forget:
    expect(k8s_forget["metadata"]["name"] == "sweeper-forget-dsr-42", f"k8s/forget's Job is named per request: {k8s_forget['metadata']}")
    d = diff(substance(chart_forget), substance(k8s_forget))
    expect(not d, f"the chart's forget Job is k8s/forget filled in, in substance: {d}")
    args = chart_forget["spec"]["template"]["spec"]["containers"][0]["args"]
    expect(args[:1] == ["forget"] and "--user=u-123" in args and "--reason=dsr-42" in args, f"the Job forgets: {args}")
    secret = chart_forget["spec"]["template"]["spec"]["volumes"][0]["secret"]
    expect(secret["secretName"] == "sweeper-eraser" and {i["key"] for i in secret["items"]} == {"redis-url", "database-url"},
           f"the forget Job reads the eraser's Secret, both URLs: {secret}")
    ann = chart_forget["metadata"].get("annotations", {})
    expect(ann.get("helm.sh/hook") == "post-install,post-upgrade", f"the forget Job is a post-install,post-upgrade hook: {ann}")
r = template("sweeper", "--set", "forget.conversations={c-1,c-2}", "--set", "forget.reason=DSR 7")
args = [a for o in docs(r.stdout) if o["kind"] == "Job" and "forget" in o["metadata"]["name"]
        for a in o["spec"]["template"]["spec"]["containers"][0]["args"]]
expect(r.returncode == 0 and "--conversation=c-1" in args and "--conversation=c-2" in args,
       f"forget.conversations, one --conversation each: {args} {r.stderr.strip()[:200]}")
r = template("sweeper", "--set", "forget.users={u-123}")
expect(r.returncode != 0 and "forget.reason is required" in r.stderr, f"a forget without reason is refused: {r.stderr.strip()[:200]}")

# --- refusals: the binary's check-schedule is the judge -----------------------------------------
CASES = [
    ("*/5 * * * *", "10m", "4m"), ("*/5 * * * *", "9m", "4m"), ("*/5 * * * *", "9m1s", "4m"),
    ("*/7 * * * *", "10m", "4m"), ("*/7 * * * *", "11m", "4m"), ("*/7 * * * *", "13m", "4m"),
    ("* * * * *", "2m", "1m"), ("* * * * *", "2m1s", "1m"),
    ("0,10,30 * * * *", "35m", "4m"), ("0,10,30 * * * *", "35m", "5m"), ("15 * * * *", "1h5m", "4m"),
    ("0 3 * * *", "25h", "4m"), ("0 3 * * *", "24h", "4m"),
]
for schedule, threshold, deadline in CASES:
    verdict = run(sweeper, "check-schedule", "--schedule", schedule, "--threshold", threshold,
                  "--max-runtime", deadline)
    vals = out / "values" / "case.yaml"
    vals.parent.mkdir(exist_ok=True)
    vals.write_text(yaml.safe_dump({"schedule": schedule, "threshold": threshold, "deadline": deadline,
                                    "protectTtl": "48h"}))
    r = template("sweeper", "-f", str(vals))
    refused = "cannot be kept by schedule" in r.stderr
    expect(r.returncode in (0, 1) and (r.returncode == 0) == (verdict.returncode == 0) and refused == (r.returncode == 1),
           f"{schedule!r} threshold {threshold} deadline {deadline}: check-schedule exits {verdict.returncode}, "
           f"the chart {'refuses' if r.returncode else 'renders'} {r.stderr.strip()[:160]}")

for args, want in (
    (("--set", "protectTtl=10m"), "protectTtl 10m must be above threshold"),
    (("--set", "schedule=*/5 9-17 * * 1-5"), "set scheduleLargestGap"),
    # Helm 4 says "minimum: got 0, want 1", Helm 3 "Must be greater than or equal to 1".
    (("--set", "shards=0"), ("minimum", "greater than or equal to 1")),
    (("--set", "threshold=ten minutes"), "threshold"),
    (("--set-json", "protectTtl=true"), "protectTtl"),
    (("--set-json", "protectTtl=1"), "protectTtl"),
    (("--set", "existingSecret="), "existingSecret"),
    (("--set", "pushgateway="), "pushgateway is required"),
):
    r = template("sweeper", *args)
    wants = want if isinstance(want, tuple) else (want,)
    expect(r.returncode != 0 and any(w in r.stderr for w in wants),
           f"{' '.join(args)} is refused ({want!r}): {r.stderr.strip()[:200]}")
r = template("sweeper", "--set", "schedule=*/5 9-17 * * 1-5", "--set", "scheduleLargestGap=16h5m",
             "--set", "threshold=16h10m", "--set", "protectTtl=17h")
expect(r.returncode == 0, f"an irregular schedule renders with scheduleLargestGap: {r.stderr.strip()[:200]}")
r = template("sweeper", "--set", "protectTtl=0")
expect(r.returncode == 0, f"protectTtl 0 turns protection off: {r.stderr.strip()[:200]}")

# --- kustomize ------------------------------------------------------------------------------------
r = run(kubectl, "kustomize", "k8s/")
expect(r.returncode == 0, f"kubectl kustomize k8s/: {r.stderr.strip()}")
(out / "kustomize.yaml").write_text(r.stdout)
rendered = docs(r.stdout)
listed = yaml.safe_load(Path("k8s/kustomization.yaml").read_text())["resources"]
expect(sorted(rendered, key=lambda o: o["kind"]) == sorted((yaml.safe_load(Path("k8s", p).read_text()) for p in listed),
                                                            key=lambda o: o["kind"]),
       f"kustomize renders {listed} as written: {[(o['kind'], o['metadata']['name']) for o in rendered]}")

if failures:
    print(f"check_helm: {len(failures)} failed")
    sys.exit(1)
print("check_helm: all ok")
