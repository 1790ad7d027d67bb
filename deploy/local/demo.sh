#!/usr/bin/env bash
# The main job, on one machine without Docker:
#   local services up (installed on first run) → `touchstream demo`: ClickHouse
#   migrations, Kafka topics, a collector and a processor, generated multi-channel
#   journeys through the HTTP API, and a funnel report from ClickHouse with the
#   generator's configured rates beside the measured ones.
#
#   deploy/local/demo.sh                       2,000 customers, seed 42
#   deploy/local/demo.sh --customers 500 --seed 7 --checkout-dropoff 0.5,0.3,0.2
#   deploy/local/demo.sh --help                every option
# Services keep running afterwards: deploy/local/services.sh status | down
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

printf '==> local services (the first run on a machine installs ClickHouse/Prometheus and builds tansu, ~15 min)\n'
deploy/local/services.sh up

printf '\n==> building touchstream\n'
cargo build --quiet -p touchstream

printf '\n==> demo\n'
exec "$ROOT/target/debug/touchstream" demo "$@"
