# `make demo`: a real sweep on private Redis and PostgreSQL servers started for it.
# `make test`: every test, against private servers started for them.
# Both install redis-server and postgresql from Debian's packages when missing (as root).

CARGO   ?= cargo
SERVERS := tests/servers.sh exec --
SWEEPER := target/release/sweeper
# The test build of the binary, wherever CARGO_TARGET_DIR puts it.
DEBUG_BIN := $(or $(CARGO_TARGET_DIR),target)/debug/sweeper

.PHONY: all build test test-orchestrators unit soak bench bench-quick bench-curve bench-live bench-storage demo demo-steps lint fmt image clean audit licenses deb

IMAGE ?= sweeper:dev

DURATION ?= 30m

all: build

build:
	$(CARGO) build --release --locked

# The Rust tests, then the orchestrator checks (tests/orchestrators/check.sh) on the same servers.
test:
	$(SERVERS) env SWEEPER_NO_SKIP=1 sh -c '$(CARGO) test --locked --lib --bins --tests && tests/orchestrators/check.sh $(DEBUG_BIN)'

# Only the orchestrator checks: the k8s manifests (kubernetes-validate, checkov), the Dockerfile
# (hadolint), the Airflow DAGs (DagBag; `airflow dags test` for real) and the Flyte workflow
# (pyflyte package), with tools from cached venvs (built once: about 75s, in parallel).
test-orchestrators:
	$(CARGO) build --locked --bin sweeper
	$(SERVERS) tests/orchestrators/check.sh $(DEBUG_BIN)

# The zero-loss soaks (kills and a restart; partitions and failovers), long: `make soak
# DURATION=30m` (make test runs each for 60s, side by side).
soak:
	$(SERVERS) env SWEEPER_SOAK_DURATION=$(DURATION) $(CARGO) test --locked --release --test soak -- --nocapture

# The sweep against the raw limits (Redis floor, psql \copy) at 100k and 1M keys; one table.
# Pass BENCH_ARGS=--naive to add the write-every-turn baseline.
bench: build
	$(SERVERS) $(CARGO) bench --locked --bench sweep -- --sizes 100000,1000000 $(BENCH_ARGS)

bench-quick: build
	$(SERVERS) $(CARGO) bench --locked --bench sweep -- --sizes 100000 $(BENCH_ARGS)

# The cost curve: floor, copy limit, dry run and sweep at 100k, 1M and 5M keys, with checkpoints of
# 4 messages (about 1.3 KB: 5M of 10 messages would need 15 GB of Redis). Long: see performance.md.
bench-curve: build
	$(SERVERS) $(CARGO) bench --locked --bench sweep -- --curve --messages 4 --sizes 100000,1000000,5000000 $(BENCH_ARGS)

# The design's saving, measured: a chat service simulated live on a compressed clock, persisted
# three ways (a write per turn, `sweeper daemon` on its schedule, one write per session). One table.
bench-live: build
	$(SERVERS) $(CARGO) bench --locked --bench live -- $(BENCH_ARGS)

# What a sweep costs PostgreSQL in bytes: WAL and table growth against the bytes read from Redis
# (20k simulated conversations of 10-30 messages, swept once, then again each 2 messages longer).
bench-storage: build
	$(SERVERS) $(CARGO) bench --locked --bench sweep -- --storage $(BENCH_ARGS)

# Unit tests only: no servers needed.
unit:
	$(CARGO) test --locked --lib --bins

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

demo: build
	$(SERVERS) $(MAKE) --no-print-directory demo-steps

# Runs inside `demo` with REDIS_URL and DATABASE_URL pointing at the private servers.
demo-steps:
	@echo; echo "== 1. sweeper migrate: create the schema"
	$(SWEEPER) -q migrate
	@echo; echo "== 2. sweeper simulate: the chat service writes 200 conversations, TTLs spread over 0-30 minutes"
	$(SWEEPER) -q simulate --conversations 200 --ttl-spread 0s..30m
	@echo; echo "== 3. sweeper run --dry-run: which conversations are ending (TTL under 10m)? Most urgent first; nothing is written."
	$(SWEEPER) -q run --dry-run | awk 'NR <= 11 || /^dry run/'
	@echo; echo "== 4. sweeper run: save them to PostgreSQL"
	$(SWEEPER) run
	@echo; echo "== 5. sweeper run again: nothing changed, nothing written"
	$(SWEEPER) -q run --output json
	@echo; echo "== 6. What landed in PostgreSQL"
	psql -X -q "$$DATABASE_URL" -c "SELECT conversation_id, user_id, message_count, updated_at, last_run_id FROM sweeper.conversations ORDER BY updated_at DESC LIMIT 8" \
	  -c "SELECT conversation_id, seq, role, left(content, 50) AS content FROM sweeper.messages WHERE conversation_id = (SELECT min(conversation_id) FROM sweeper.conversations) ORDER BY seq LIMIT 6" \
	  -c "SELECT id, status, scanned, due, persisted, unchanged, rejected, duration_ms FROM sweeper.sweep_runs ORDER BY id"

# Supply chain: cargo-audit (crates.io's, built once into ~/.cache/sweeper/cargo-tools by
# tests/orchestrators/tools.sh) checks Cargo.lock against the RustSec advisory database, fetched as
# cargo audit does by default (~/.cargo/advisory-db); ADVISORY_DB=DIR checks against a snapshot
# there instead, offline (CI passes one). docs/licenses.md must match Cargo.lock and name no
# copyleft license.
ADVISORY_DB ?=
audit:
	"$$(tests/orchestrators/tools.sh cargo-audit)" audit $(if $(ADVISORY_DB),--db $(ADVISORY_DB) --no-fetch --stale)
	@tests/licenses.sh | diff -u docs/licenses.md - || { echo "docs/licenses.md does not match Cargo.lock: run make licenses"; exit 1; }
	@! grep -E '^\| [^|]+ \| [^|]+ \| [^|]*(GPL|MPL|EPL|EUPL|CDDL|SSPL)' docs/licenses.md || { echo "a copyleft license in the dependency tree (above)"; exit 1; }
	@echo "audit: no advisory for Cargo.lock; docs/licenses.md matches it, no copyleft license"

licenses:
	tests/licenses.sh >docs/licenses.md

# The Debian package (cargo-deb, built once into ~/.cache/sweeper/cargo-tools): the release binary,
# its man page and completions (generated by the binary), the systemd units and settings of deb/.
# Written to target/debian/. `make test` checks a package of the test build (check.sh deb).
deb: build
	mkdir -p target/deb-assets
	$(SWEEPER) man | gzip -9n >target/deb-assets/sweeper.1.gz
	$(SWEEPER) completions bash >target/deb-assets/sweeper.bash
	$(SWEEPER) completions zsh >target/deb-assets/_sweeper
	$(SWEEPER) completions fish >target/deb-assets/sweeper.fish
	"$$(tests/orchestrators/tools.sh cargo-deb)" --locked --no-build -o target/debian/

# Needs a Docker engine (none on CI: tests/deploy.rs checks the Dockerfile instead).
image:
	docker build -t $(IMAGE) .

clean:
	$(CARGO) clean
