"""docs/installing.md's blocks, command by command, as written: each runs here, or its offline twin
does (no cluster, registry or systemd here), or what it names is checked to exist. A command no
rule below knows fails the check, so the page cannot drift from what is tested.

Usage: check_install_docs.py HELM KUBECTL
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

helm, kubectl = sys.argv[1:3]
failures: list[str] = []
SECTIONS = ("Kubernetes with Helm", "Kubernetes with kustomize", "Kubernetes: erasing on request", "A VM: the Debian package",
            "Airflow", "Dagster")
VERSION = next(line.split('"')[1] for line in Path("Cargo.toml").read_text().splitlines() if line.startswith("version"))


def expect(cond: bool, what: str) -> None:
    print(("  ok    " if cond else "  FAIL  ") + what)
    if not cond:
        failures.append(what)


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd)


# Where the commands that copy and edit files run, as written: a scratch copy of k8s/.
WORK = Path(tempfile.mkdtemp(prefix="install-docs-"))
shutil.copytree("k8s", WORK / "k8s")
# The flags of the Helm section's `helm install` (what `helm upgrade --reuse-values` reuses), and
# the Jobs the erasure section's renders name.
installed: list[str] = []
jobs: list[tuple[str, list[str]]] = []


def forget_jobs(text: str) -> dict[str, list[str]]:
    """The forget Jobs of rendered objects: name -> the container's args."""
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]["args"]
            for o in yaml.safe_load_all(text) if o and o["kind"] == "Job"
            and o["spec"]["template"]["spec"]["containers"][0]["args"][:1] == ["forget"]}


def commands(section: str) -> list[str]:
    """The commands of the section's sh block: continuation lines joined, comments dropped."""
    page = Path("docs/installing.md").read_text()
    body = page.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = body.split("```sh\n", 1)[1].split("\n```", 1)[0]
    out: list[str] = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def placeholders(words: list[str]) -> list[str]:
    """The doc's placeholders made values the tools accept (a digest's `...`)."""
    return [w.replace("sha256:...", "sha256:" + "0" * 64) for w in words]


def namespaced(words: list[str]) -> list[str]:
    """`kubectl -n NS rest...` without the namespace (the offline twins need none)."""
    return words[:1] + words[3:] if words[1:2] == ["-n"] else words


def found_args(found: dict[str, list[str]]) -> list[str]:
    """Every argument of the Jobs, none a placeholder left unfilled."""
    args = [a for v in found.values() for a in v]
    return args if not any(p in a for a in args for p in ("REQUEST", "USER_ID")) else ["unfilled"]


def unit_credentials() -> set[str]:
    return {m.group(1) for p in Path("deb").glob("*.service")
            for m in re.finditer(r"^LoadCredential=[^:]+:(\S+)$", p.read_text(), re.M)}


def check(cmd: str) -> None:
    words = placeholders(shlex.split(cmd.split("<<<")[0]))
    if words[0] == "sudo":
        words = words[1:]
    k = namespaced(words) if words[0] == "kubectl" else words
    if k[:3] == ["kubectl", "create", "namespace"] or k[:3] == ["kubectl", "create", "secret"]:
        r = run(kubectl, *k[1:], "--dry-run=client", "-o", "yaml")
        expect(r.returncode == 0, f"{cmd}: kubectl --dry-run=client {r.stderr.strip()[:200]}")
        if k[2] == "secret":
            keys = set(yaml.safe_load(r.stdout or "{}").get("data", {}))
            expect(keys == {"redis-url", "database-url"}, f"the Secret holds the keys the manifests read: {keys}")
    elif k[:2] == ["helm", "install"]:
        installed[:] = k[4:]
        r = run(helm, "template", *k[2:])
        expect(r.returncode == 0 and "kind: CronJob" in r.stdout,
               f"{cmd}: helm template with the same flags {r.stderr.strip()[:200]}")
    elif k[:2] == ["helm", "upgrade"] and "--reuse-values" in k:
        flags = [w for w in k[4:] if w != "--reuse-values"]
        r = run(helm, "template", *k[2:4], *installed, *flags)
        found = forget_jobs(r.stdout)
        jobs.extend(found.items())
        expect(r.returncode == 0 and len(found) == 1,
               f"{cmd}: helm template with the install's flags and these renders one forget Job {sorted(found)} {r.stderr.strip()[:200]}")
    elif k[:2] == ["cp", "-r"] or k[:2] == ["sed", "-i"]:
        r = run(*k, cwd=WORK)
        expect(r.returncode == 0, f"{cmd}: run as written on a copy of k8s/ {r.stderr.strip()[:200]}")
    elif k[:3] == ["kubectl", "apply", "-k"] and (WORK / k[3]).exists() and not Path(k[3]).exists():
        r = run(kubectl, "kustomize", str(WORK / k[3]))
        found = forget_jobs(r.stdout)
        jobs.extend(found.items())
        expect(r.returncode == 0 and len(found) == 1 and found_args(found) != ["unfilled"],
               f"{cmd}: kubectl kustomize of the copy renders one forget Job, filled in: {found} {r.stderr.strip()[:200]}")
    elif k[:2] == ["kubectl", "logs"] and k[2].startswith("job/"):
        name = k[2].removeprefix("job/")
        expect(len(jobs) == 2 and {(n, tuple(a)) for n, a in jobs} == {(name, tuple(jobs[0][1]))},
               f"{cmd}: the Job the commands above render, with the same arguments each way: {jobs}")
    elif k[:3] == ["kubectl", "apply", "-k"]:
        r = run(kubectl, "kustomize", k[3])
        expect(r.returncode == 0 and "kind: CronJob" in r.stdout, f"{cmd}: kubectl kustomize {r.stderr.strip()[:200]}")
    elif k[:3] == ["kubectl", "apply", "-f"]:
        doc = yaml.safe_load(Path(k[3]).read_text()) if Path(k[3]).exists() else None
        expect(isinstance(doc, dict) and "kind" in doc, f"{cmd}: {k[3]} is a Kubernetes object")
    elif words == ["make", "deb"]:
        expect(run("make", "-n", "deb").returncode == 0, f"{cmd}: the target exists")
    elif words[:2] == ["apt", "install"]:
        want = f"./target/debian/sweeper_{VERSION}-1_amd64.deb"
        expect(words[2] == want, f"{cmd}: the package make deb writes is {want}")
    elif words[:3] == ["install", "-m", "600"]:
        expect(words[4] in unit_credentials(), f"{cmd}: {words[4]} is a credential the units load")
    elif words[0] == "editor":
        name = Path(words[1]).name
        shipped = f'["deb/{name}", "etc/sweeper/"' in Path("Cargo.toml").read_text()
        expect(words[1] == f"/etc/sweeper/{name}" and shipped, f"{cmd}: the package ships {words[1]}")
    elif words[:3] == ["systemctl", "enable", "--now"]:
        expect(Path("deb", words[3]).exists(), f"{cmd}: the package ships {words[3]}")
    elif words[0] == "cp":
        sources = words[1:-1]
        expect(all(Path(w).exists() for w in sources), f"{cmd}: {sources} exist")
    elif words[:3] == ["airflow", "dags", "unpause"]:
        expect(f'_dag("{words[3]}"' in Path("dags/sweeper_dag.py").read_text() or f'"{words[3]}",' in Path(
            "dags/sweeper_dag.py").read_text(), f"{cmd}: dags/sweeper_dag.py defines {words[3]} (its runs: check_dags.py, dags test)")
    elif words[0].startswith("SWEEPER_BIN=") and words[1:3] == ["dagster", "dev"]:
        expect(Path("dags", words[4]).exists(), f"{cmd}: a dev server, not run here; dags/{words[4]} exists")
    else:
        expect(False, f"no rule checks `{cmd}`: add one to tests/orchestrators/check_install_docs.py")


for section in SECTIONS:
    print(f"{section}:")
    cmds = commands(section)
    expect(bool(cmds), f"a block of commands under {section!r}")
    for c in cmds:
        check(c)

shutil.rmtree(WORK, ignore_errors=True)
if failures:
    print(f"check_install_docs: {len(failures)} failed")
    sys.exit(1)
print("check_install_docs: all ok")
