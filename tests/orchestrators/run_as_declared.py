"""Run the real binary the way an orchestrator declares it, and read its result the way the
orchestrator would. No pod, no Flyte cluster: the declared command and arguments, with paths moved
into a temp dir, against the servers of tests/servers.sh.

    python run_as_declared.py kpo    # Airflow venv: the KubernetesPodOperator's arguments; the
                                     # summary file must be one JSON object (what XCom gets)
    python run_as_declared.py flyte ARCHIVE.tgz
                                     # Flyte venv: the packaged ContainerTask's command; every
                                     # declared output must be a file of its type under outputs-dir
    python run_as_declared.py sharded k8s/cronjob-sharded.yaml
                                     # lint venv (PyYAML): the Indexed Job's pods, all at once, each
                                     # with its JOB_COMPLETION_INDEX: together they save every due
                                     # key once, each only its share

Needs SWEEPER_BIN, REDIS_URL, DATABASE_URL (a migrated database) and SWEEPER_MATCH. Exit 1 on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

failures: list[str] = []


def expect(cond: bool, what: str) -> None:
    print(("  ok    " if cond else "  FAIL  ") + what)
    if not cond:
        failures.append(what)


def run(argv: list[str], env: dict[str, str]) -> int:
    # Secrets are mounted files in a cluster; here the URLs come from the environment instead.
    env = {k: v for k, v in env.items() if not k.endswith("_URL_FILE")}
    full = {**os.environ, **env}
    print("  $ " + " ".join(argv))
    done = subprocess.run(argv, env=full, capture_output=True, text=True, timeout=120)
    print("  exit", done.returncode, "stdout:", done.stdout.strip()[-300:])
    if done.returncode != 0:
        print(done.stderr[-2000:])
    return done.returncode


binary = os.environ["SWEEPER_BIN"]
tmp = tempfile.mkdtemp(prefix="sweeper-declared-")

if sys.argv[1] == "kpo":
    from airflow.dag_processing.dagbag import DagBag

    # On sys.path as Airflow puts it there, for sweeper_policy.py (see check_dags.py).
    sys.path.append(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    task = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags["sweeper"].get_task("sweep")
    xcom_file = "/airflow/xcom/return.json"
    expect(xcom_file in task.arguments, f"the pod writes {xcom_file}")
    summary = os.path.join(tmp, "return.json")
    argv = [binary] + [summary if a == xcom_file else a for a in task.arguments]
    env = task.env_vars
    env = dict(env) if isinstance(env, dict) else {e.name: e.value for e in env}
    rc = run(argv, env)
    expect(rc == 0, f"exit {rc}")
    try:
        with open(summary) as f:
            doc = json.load(f)
        expect(isinstance(doc, dict) and doc.get("status") == "ok", f"the summary file is the JSON summary: {doc}")
    except (OSError, ValueError) as e:
        expect(False, f"the summary file reads as JSON: {e}")
    # A failed run still writes it (the xcom sidecar needs the file): PostgreSQL unreachable.
    os.remove(summary) if os.path.exists(summary) else None
    rc = run(argv, {**env, "DATABASE_URL": "postgres://postgres@127.0.0.1:1/nowhere", "SWEEPER_CONNECT_TIMEOUT": "1s"})
    expect(rc == 4, f"exit {rc} with PostgreSQL unreachable")
    try:
        with open(summary) as f:
            doc = json.load(f)
        expect(isinstance(doc, dict) and doc.get("status") not in (None, "ok"), f"a failed run's summary file: {doc}")
    except (OSError, ValueError) as e:
        expect(False, f"a failed run's summary file reads as JSON: {e}")

elif sys.argv[1] == "flyte":
    import tarfile

    from flyteidl.admin import task_pb2
    from flyteidl.core import types_pb2

    with tarfile.open(sys.argv[2]) as tar:
        specs = [m for m in tar.getmembers() if m.name.endswith("_1.pb")]
        spec = task_pb2.TaskSpec()
        spec.ParseFromString(tar.extractfile(specs[0]).read())
    c = spec.template.container
    declared = c.data_config.output_path
    outdir = os.path.join(tmp, "outputs")
    os.mkdir(outdir)
    argv = [binary if a.endswith("/sweeper") else outdir if a == declared else a for a in list(c.command) + list(c.args)]
    rc = run(argv, {kv.key: kv.value for kv in c.env})
    expect(rc == 0, f"exit {rc}")
    # Flyte's copilot reads each output from a file named after it, holding the plain value.
    for name, var in spec.template.interface.outputs.variables.items():
        kind = types_pb2.SimpleType.Name(var.type.simple)
        path = os.path.join(outdir, name)
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            expect(False, f"output {name}: {e}")
            continue
        ok = text.lstrip("-").isdigit() if kind == "INTEGER" else kind == "STRING" and text != ""
        expect(ok, f"output {name} ({kind}) = {text!r}")
    status = open(os.path.join(outdir, "status")).read() if os.path.exists(os.path.join(outdir, "status")) else None
    expect(status == "ok", f"status {status!r}")

elif sys.argv[1] == "sharded":
    import yaml

    with open(sys.argv[2]) as f:
        cronjob = yaml.safe_load(f)
    job = cronjob["spec"]["jobTemplate"]["spec"]
    container = job["template"]["spec"]["containers"][0]
    completions = job["completions"]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    env = {k: v for k, v in env.items() if not k.endswith("_URL_FILE")}
    argv = [binary] + container["args"]
    print(f"  {completions} pods at once: " + " ".join(argv))
    # Every pod at once, as parallelism: N does: the shards must not skip each other (lock per shard).
    procs = [
        subprocess.Popen(argv, env={**os.environ, **env, "JOB_COMPLETION_INDEX": str(i)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(completions)
    ]
    summaries = []
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=120)
        last = out.strip().splitlines()[-1] if out.strip() else ""
        print(f"  shard {i}: exit {p.returncode}: {last[:300]}")
        expect(p.returncode == 0, f"shard {i} exit {p.returncode}" + ("" if p.returncode == 0 else f": {err[-1500:]}"))
        try:
            summaries.append(json.loads(last))
        except ValueError:
            expect(False, f"shard {i} printed its JSON summary")
    if len(summaries) == completions:
        expect(all(s["status"] == "ok" for s in summaries), f"every shard ok: {[s['status'] for s in summaries]}")
        persisted = [s["persisted"] for s in summaries]
        scanned = [s["scanned"] for s in summaries]
        total = int(os.environ["SWEEPER_TEST_DUE"])
        expect(sum(persisted) == total, f"the shards saved {persisted}, {sum(persisted)} in all, of {total} due")
        expect(all(0 < n < total for n in persisted), f"each shard saved only its share: {persisted}")
        # Each key is in exactly one shard (scanned counts a shard's own keys, or every key it saw).
        expect(sum(scanned) in (total, total * completions), f"scanned {scanned}")

if failures:
    print(f"run_as_declared {sys.argv[1]}: {len(failures)} failed")
    sys.exit(1)
print(f"run_as_declared {sys.argv[1]}: all ok")
