#!/usr/bin/env bash
# ClickHouse's CPU per event inserted, on one server and on the local cluster
# (docs/scaling.md). Each event is the three rows the processor writes for it
# (`events`, `touchpoint_journey`, `customer_touchpoints`, which feeds
# `touchpoints_by_day` through its materialized view), sent as RowBinary over HTTP in
# batches, as the processor sends them.
#
#   deploy/local/services.sh up --cluster
#   cargo build --release -p touchstream
#   deploy/local/insert_cost.sh [EVENTS=500000] [BATCH=50000]
#
# CPU is read from /proc (utime + stime) of the cluster's own server processes, which
# only this script talks to, so other work on the box does not count. "One server" is
# a plain (unreplicated) database on ch3; "cluster" is a database migrated with
# clickhouse.cluster = touchstream_local, written through ch1's Distributed tables with
# insert_distributed_sync = 1: both shards, and shard 01's second replica, do their
# part. Both measurements include 15 s after the last insert (merges), minus the same
# servers' CPU over 15 idle seconds (ZooKeeper sessions, background tasks).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCAL="${TS_LOCAL_DIR:-$ROOT/.local}"
EVENTS="${1:-500000}"
BATCH="${2:-50000}"
BIN="${TS_BIN:-$ROOT/target/release/touchstream}"
GEN_URL="${TS_GEN_CLICKHOUSE_URL:-http://127.0.0.1:8131}"
TICK=$(getconf CLK_TCK)
RUN="insert_cost_$$"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

die() { printf 'insert_cost: %s\n' "$*" >&2; exit 1; }
[[ -x $BIN ]] || die "no $BIN: cargo build --release -p touchstream"
for n in ch1 ch2 ch3; do
  [[ -f $LOCAL/run/$n.pid ]] && kill -0 "$(cat "$LOCAL/run/$n.pid")" 2>/dev/null ||
    die "$n is not running: deploy/local/services.sh up --cluster"
done

q() { # url sql [data-file]
  if [[ -n ${3:-} ]]; then
    curl -sSf "$1/?insert_distributed_sync=1" --url-query "query=$2" --data-binary "@$3"
  else
    curl -sSf "$1/" --data-binary "$2"
  fi
}

cpu_ticks() { # node names...
  local n t=0 f
  for n in "$@"; do
    read -r -a f <"/proc/$(cat "$LOCAL/run/$n.pid")/stat"
    t=$((t + f[13] + f[14]))
  done
  echo "$t"
}

# The rows of events [first, first + BATCH): realistic sizes (a ~300-byte context,
# ~100-byte properties), 1 customer per 10 events, times over the last 3 days.
gen() { # table first count
  local base="number + $2" t="toInt64(1764000000000 + (number + $2) * 500)"
  case $1 in
    events) q "$GEN_URL" "SELECT concat('web:', toString($base)) AS event_id, toDate(intDiv($t, 1000)), toDateTime(intDiv($t, 1000)), $t, $t + 40, 'track', 'Product Viewed', concat('anon-', toString(intDiv($base, 10))), concat('user-', toString(intDiv($base, 10))), '', 'web', '', concat('{\"sku\":\"SKU-', toString($base % 977), '\",\"price\":', toString($base % 300), '.99,\"currency\":\"EUR\",\"category\":\"shoes\"}'), '{}', concat('{\"page\":{\"path\":\"/p/', toString($base % 977), '\",\"url\":\"https://shop.example/p/', toString($base % 977), '\",\"referrer\":\"https://www.google.com/\"},\"userAgent\":\"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\",\"locale\":\"de-DE\",\"library\":{\"name\":\"analytics.js\",\"version\":\"4.1.0\"}}'), '203.0.113.7', 'Mozilla/5.0', '{}', toInt32($base % 6), toInt64($base) FROM numbers($3) FORMAT RowBinary" ;;
    touchpoint_journey) q "$GEN_URL" "SELECT concat('web:', toString($base)), toDate(intDiv($t, 1000)), concat('user-', toString(intDiv($base, 10))), lower(hex(MD5(toString(intDiv($base, 30))))), 'consideration', 'web', toUInt8(0), toUInt64($base) FROM numbers($3) FORMAT RowBinary" ;;
    customer_touchpoints) q "$GEN_URL" "SELECT concat('user-', toString(intDiv($base, 10))), toDate(intDiv($t, 1000)), $t, concat('web:', toString($base)), toDateTime(intDiv($t, 1000)), 'track', 'Product Viewed', 'consideration', 'web', lower(hex(MD5(toString(intDiv($base, 30))))), toUInt8(0), toUInt8(0), toUInt64($base) FROM numbers($3) FORMAT RowBinary" ;;
  esac
}
COLUMNS_events="event_id, event_date, event_time, event_time_ms, received_at_ms, type, event, anonymous_id, user_id, previous_id, source, message_channel, properties, traits, context, ip, user_agent, extra, kafka_partition, kafka_offset"
COLUMNS_touchpoint_journey="event_id, event_date, customer_id, session_id, stage, channel, is_late, version"
COLUMNS_customer_touchpoints="customer_id, event_date, event_time_ms, event_id, event_time, type, event, stage, channel, session_id, is_late, is_deleted, version"
TABLES=(events touchpoint_journey customer_touchpoints)

printf 'generating %s events in batches of %s ...\n' "$EVENTS" "$BATCH" >&2
batches=$(((EVENTS + BATCH - 1) / BATCH))
for ((b = 0; b < batches; b++)); do
  for t in "${TABLES[@]}"; do gen "$t" $((b * BATCH)) "$BATCH" >"$TMP/$t.$b"; done
done

migrate() { # url database [cluster]
  env TOUCHSTREAM__CLICKHOUSE__URL="$1" TOUCHSTREAM__CLICKHOUSE__DATABASE="$2" \
    ${3:+TOUCHSTREAM__CLICKHOUSE__CLUSTER=$3} RUST_LOG=warn "$BIN" migrate >/dev/null
}

insert_all() { # url database
  local b t cols
  for ((b = 0; b < batches; b++)); do
    for t in "${TABLES[@]}"; do
      cols="COLUMNS_$t"
      q "$1" "INSERT INTO \`$2\`.$t (${!cols}) FORMAT RowBinary" "$TMP/$t.$b" &
    done
    wait
  done
}

measure() { # label url database nodes...
  local label=$1 url=$2 db=$3; shift 3
  local idle0 idle1 c0 c1 s0 s1
  idle0=$(cpu_ticks "$@"); sleep 15; idle1=$(cpu_ticks "$@")
  c0=$(cpu_ticks "$@"); s0=$(date +%s.%N)
  insert_all "$url" "$db"
  s1=$(date +%s.%N)
  sleep 15
  c1=$(cpu_ticks "$@")
  awk -v l="$label" -v c=$((c1 - c0 - (idle1 - idle0))) -v tick="$TICK" -v n="$EVENTS" -v s0="$s0" -v s1="$s1" \
    'BEGIN { printf "%-34s %8.3f CPU s per 100k events (%.1f CPU s for %d events; inserts took %.1f s wall)\n", l, c / tick / n * 100000, c / tick, n, s1 - s0 }'
}

migrate http://127.0.0.1:8133 "${RUN}_single"
migrate http://127.0.0.1:8131 "${RUN}_cluster" touchstream_local
measure "one server (ch3)" http://127.0.0.1:8133 "${RUN}_single" ch3
measure "cluster (2 shards, 3 servers)" http://127.0.0.1:8131 "${RUN}_cluster" ch1 ch2 ch3
for n in 1 2 3; do
  printf '  ch%s holds %s events rows\n' "$n" "$(q "http://127.0.0.1:813$n" "SELECT count() FROM \`${RUN}_cluster\`.events_local")"
done
q http://127.0.0.1:8133 "DROP DATABASE IF EXISTS \`${RUN}_single\`" >/dev/null
q http://127.0.0.1:8131 "DROP DATABASE IF EXISTS \`${RUN}_cluster\` ON CLUSTER touchstream_local" >/dev/null
