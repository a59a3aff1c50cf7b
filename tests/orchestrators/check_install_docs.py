"""docs/installing.md's blocks, command by command, as written: each runs here, or its offline twin
does (no cluster, registry or systemd here), or what it names is checked to exist. A command no
rule below knows fails the check, so the page cannot drift from what is tested.

Usage: check_install_docs.py HELM KUBECTL
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

helm, kubectl = sys.argv[1:3]
failures: list[str] = []
SECTIONS = ("Kubernetes with Helm", "Kubernetes with kustomize", "A VM: the Debian package", "Airflow", "Dagster")
VERSION = next(line.split('"')[1] for line in Path("Cargo.toml").read_text().splitlines() if line.startswith("version"))


def expect(cond: bool, what: str) -> None:
    print(("  ok    " if cond else "  FAIL  ") + what)
    if not cond:
        failures.append(what)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True)


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
        r = run(helm, "template", *k[2:])
        expect(r.returncode == 0 and "kind: CronJob" in r.stdout,
               f"{cmd}: helm template with the same flags {r.stderr.strip()[:200]}")
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

if failures:
    print(f"check_install_docs: {len(failures)} failed")
    sys.exit(1)
print("check_install_docs: all ok")
