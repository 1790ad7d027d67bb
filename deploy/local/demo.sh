#!/usr/bin/env bash
# The main job, on one machine without Docker:
#   local services up → ClickHouse migrations → Kafka topics → collector + processor
#   → sample multi-channel journeys through the HTTP API → a report from ClickHouse.
#
#   deploy/local/demo.sh          run it (collector and processor keep running)
#   deploy/local/demo.sh stop     stop collector and processor (services: services.sh down)
#
# The synthetic journey generator (thousands of customers, configurable drop-off rates)
# is still to come; today the demo sends the journeys in tests/fixtures/demo_batch_*.json.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
LOCAL="${TS_LOCAL_DIR:-$ROOT/.local}"
BIN="$ROOT/target/debug/touchstream"
COLLECTOR="http://127.0.0.1:8080"
say() { printf '\n==> %s\n' "$*"; }

stop_apps() {
  local n f
  for n in collector processor; do
    f="$LOCAL/run/$n.pid"
    if [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null; then
      kill -TERM "$(cat "$f")" && echo "stopped $n"
    fi
    rm -f "$f"
  done
}

if [[ ${1:-} == stop ]]; then stop_apps; exit 0; fi

say "local services (first run installs ClickHouse/Prometheus and builds tansu, ~15 min)"
deploy/local/services.sh up

say "building touchstream"
cargo build --quiet -p touchstream

say "ClickHouse migrations"
"$BIN" migrate
say "Kafka topics"
"$BIN" topics

stop_apps >/dev/null
mkdir -p "$LOCAL/run" "$LOCAL/log"
say "starting collector (127.0.0.1:8080) and processor (metrics 127.0.0.1:9464)"
# Live demo traffic: place events 5 s behind the watermark (default 5 min) and let quiet
# partitions follow the clock after 3 s, so journeys show up within seconds.
export TOUCHSTREAM__PROCESSOR__ALLOWED_LATENESS_SECS="${TOUCHSTREAM__PROCESSOR__ALLOWED_LATENESS_SECS:-5}"
export TOUCHSTREAM__PROCESSOR__IDLE_WATERMARK_SECS="${TOUCHSTREAM__PROCESSOR__IDLE_WATERMARK_SECS:-3}"
setsid "$BIN" collector >>"$LOCAL/log/collector.log" 2>&1 < /dev/null & echo $! >"$LOCAL/run/collector.pid"
setsid "$BIN" processor >>"$LOCAL/log/processor.log" 2>&1 < /dev/null & echo $! >"$LOCAL/run/processor.pid"
for _ in $(seq 1 100); do curl -sf "$COLLECTOR/readyz" >/dev/null && break; sleep 0.2; done
curl -sf "$COLLECTOR/readyz" >/dev/null || { tail -n 20 "$LOCAL/log/collector.log"; echo "collector did not become ready" >&2; exit 1; }

say "sending sample journeys (web + call centre) through the collector"
curl -sS -u demo-web-key: -H 'content-type: application/json' --data-binary @tests/fixtures/demo_batch_web.json "$COLLECTOR/v1/batch"; echo
curl -sS -u demo-crm-key: -H 'content-type: application/json' --data-binary @tests/fixtures/demo_batch_crm.json "$COLLECTOR/v1/batch"; echo

say "waiting for the processor to write them"
q() { curl -sS "http://127.0.0.1:${TS_CLICKHOUSE_HTTP_PORT:-8123}/" --data-binary "$1"; }
for _ in $(seq 1 60); do
  n=$(q "SELECT count() FROM touchstream.touchpoint_journey FINAL WHERE event_id LIKE 'demo-%'")
  [[ $n -ge 14 ]] && break
  sleep 1
done

say "report"
echo "-- journey of demo-user-ada (anonymous browsing re-attributed after identify):"
q "SELECT event_time, type, event, stage, channel FROM touchstream.touchpoints WHERE customer_id = 'demo-user-ada' ORDER BY event_time_ms, event_id FORMAT PrettyCompactMonoBlock"
echo "-- touchpoints by stage and channel:"
q "$(sed 's/;$//' docs/queries/5_touchpoints_by_stage_channel.sql) FORMAT PrettyCompactMonoBlock"
echo "-- closed funnel attempts (drops close when the 1 h / 7 d windows pass):"
q "SELECT funnel, outcome, reached_step, count() AS attempts FROM touchstream.funnel_attempts FINAL WHERE is_deleted = 0 GROUP BY funnel, outcome, reached_step ORDER BY funnel, outcome FORMAT PrettyCompactMonoBlock"

cat <<MSG

Collector and processor keep running (logs in .local/log). Next:
  clickhouse-client --port ${TS_CLICKHOUSE_TCP_PORT:-9000} -d touchstream     # query: see docs/queries/ and the README
  curl -s $COLLECTOR/metrics ; curl -s 127.0.0.1:9464/metrics         # Prometheus metrics
  Prometheus UI: http://127.0.0.1:9090   Alertmanager: http://127.0.0.1:9093
  deploy/local/demo.sh stop ; deploy/local/services.sh down            # stop everything
MSG
