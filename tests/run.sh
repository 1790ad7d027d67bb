#!/usr/bin/env bash
# The test command (the README's second line; .ci/run runs exactly this).
# Starts the real local services (installing what a fresh machine lacks), then runs every
# tier: formatting, clippy, Rust unit + integration tests against the services, and the
# Python checks (fastavro decoding, migrations on chDB). Services stay up afterwards for
# fast reruns; `deploy/local/services.sh down` stops them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.local/venv"
step() { printf '\n==> %s\n' "$*"; }

step "local services (first run on a machine installs ClickHouse/Prometheus and builds tansu, ~15 min)"
deploy/local/services.sh up

step "python test environment ($VENV)"
if ! "$VENV/bin/python" -c 'import fastavro, chdb, pytest, yaml' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
fi

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo build the touchstream binary (the crash test and the python tests run it)"
cargo build --quiet -p touchstream

step "cargo test (unit + integration against the local services)"
cargo test --workspace --quiet

step "ClickHouse cluster tests (ZooKeeper + 3 more ClickHouse servers, README \"Running on a cluster\"; ~4 min)"
deploy/local/services.sh up --cluster
if ! cargo test --quiet --test cluster -- --ignored; then
  deploy/local/services.sh cluster-down
  exit 1
fi
deploy/local/services.sh cluster-down

step "python tests"
TS_BIN="$ROOT/target/debug/touchstream" "$VENV/bin/python" -m pytest -q tests/python

printf '\nall test tiers passed. Local services are still up: deploy/local/services.sh status | down\n'
