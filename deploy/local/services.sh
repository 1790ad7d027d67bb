#!/usr/bin/env bash
# Local real services for Touchstream, no Docker: a Kafka-compatible broker (tansu),
# ClickHouse (Debian's clickhouse-server), Prometheus and Alertmanager (Debian).
#
#   deploy/local/services.sh up       install what is missing, start everything (idempotent)
#   deploy/local/services.sh up --cluster   the same, plus a local ClickHouse cluster (below)
#   deploy/local/services.sh status   show what runs where
#   deploy/local/services.sh down     stop everything started by `up` (and the cluster)
#   deploy/local/services.sh cluster-up | cluster-down   start/stop only the cluster
#   deploy/local/services.sh restart-kafka | stop-kafka | start-kafka   (fault tests)
#   deploy/local/services.sh stop-node chN | start-node chN   (cluster fault tests)
#
# The cluster (README "Running on a cluster"): Debian's ZooKeeper on 127.0.0.1:2181 and
# three more clickhouse-server processes forming cluster `touchstream_local`, 2 shards:
# shard 01 = ch1 (HTTP 8131, TCP 9011) + ch2 (8132, 9012), two replicas; shard 02 = ch3
# (8133, 9013), one replica. Macros: {shard} = 01|02, {replica} = ch1|ch2|ch3 (unique in
# the cluster, so tables replicated to every server can use it alone). Knobs:
#   TS_ZOOKEEPER_PORT=2181 TS_CLUSTER_HTTP_BASE=8130 TS_CLUSTER_TCP_BASE=9010
#   TS_CLUSTER_INTERSERVER_BASE=9020   (node N uses BASE + N)
#
# Everything listens on 127.0.0.1. Data, logs and pid files live under $TS_LOCAL_DIR
# (default: <repo>/.local, git-ignored). Environment knobs, with defaults:
#   TS_KAFKA_PORT=9092 TS_CLICKHOUSE_HTTP_PORT=8123 TS_CLICKHOUSE_TCP_PORT=9000
#   TS_PROMETHEUS_PORT=9090 TS_ALERTMANAGER_PORT=9093
#   TS_KAFKA_STORAGE=memory|sqlite   (sqlite keeps topics and offsets across broker restarts)
#   TANSU_BIN=/path/to/tansu         (else PATH, else ~/.cargo/bin/tansu, else it is built)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCAL="${TS_LOCAL_DIR:-$ROOT/.local}"
KAFKA_PORT="${TS_KAFKA_PORT:-9092}"
CH_HTTP_PORT="${TS_CLICKHOUSE_HTTP_PORT:-8123}"
CH_TCP_PORT="${TS_CLICKHOUSE_TCP_PORT:-9000}"
PROM_PORT="${TS_PROMETHEUS_PORT:-9090}"
AM_PORT="${TS_ALERTMANAGER_PORT:-9093}"
KAFKA_STORAGE="${TS_KAFKA_STORAGE:-memory}"
ZK_PORT="${TS_ZOOKEEPER_PORT:-2181}"
CLUSTER_HTTP_BASE="${TS_CLUSTER_HTTP_BASE:-8130}"
CLUSTER_TCP_BASE="${TS_CLUSTER_TCP_BASE:-9010}"
CLUSTER_IS_BASE="${TS_CLUSTER_INTERSERVER_BASE:-9020}"
CLUSTER_NAME=touchstream_local
CLUSTER_NODES=(ch1 ch2 ch3)
TANSU_FEATURES="dynostore,libsql"

say() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { local f="$LOCAL/run/$1.pid"; [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null; }

wait_port() { # name port seconds logfile
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    port_open "$2" && return 0
    pid_alive "$1" || { tail -n 20 "$4" >&2 || true; die "$1 exited during start; log: $4"; }
    sleep 0.1
  done
  tail -n 20 "$4" >&2 || true
  die "$1 did not open port $2 within $3 s; log: $4"
}

# Start a daemon unless ours already runs; refuse a port held by something else.
start() { # name port logfile cmd...
  local name=$1 port=$2 log=$3; shift 3
  if pid_alive "$name"; then say "$name already running (pid $(cat "$LOCAL/run/$name.pid"), port $port)"; return 0; fi
  if port_open "$port"; then
    die "port $port, needed by $name, is taken by another process. Stop it (ss -ltnp 'sport = :$port' shows who), or pick another port with the TS_*_PORT variables."
  fi
  mkdir -p "$LOCAL/run" "$LOCAL/log"
  setsid "$@" >>"$log" 2>&1 < /dev/null &
  echo $! >"$LOCAL/run/$name.pid"
  wait_port "$name" "$port" 60 "$log"
  say "$name up on 127.0.0.1:$port (log $log)"
}

stop() { # name
  local f="$LOCAL/run/$1.pid" pid i
  if pid_alive "$1"; then
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    say "$1 stopped"
  fi
  rm -f "$f"
}

apt_install() { # packages...
  say "installing Debian packages: $* (needs root and the Debian mirror)"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq "$@" >/dev/null; }; then
    die "apt-get install $* failed. Install them by hand (as root: apt-get update && apt-get install -y $*) and run 'up' again."
  fi
}

tansu_bin() {
  if [[ -n ${TANSU_BIN:-} && -x $TANSU_BIN ]]; then echo "$TANSU_BIN"; return; fi
  command -v tansu 2>/dev/null && return
  [[ -x $HOME/.cargo/bin/tansu ]] && { echo "$HOME/.cargo/bin/tansu"; return; }
  return 1
}

ensure_installed() {
  local missing=()
  command -v clickhouse-server >/dev/null || missing+=(clickhouse-server clickhouse-client)
  command -v prometheus >/dev/null || missing+=(prometheus)
  command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
  # Not a service: tests/report_html.rs opens the HTML report in headless Chromium.
  command -v chromium >/dev/null || missing+=(chromium)
  ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
  if ! tansu_bin >/dev/null; then
    command -v cargo >/dev/null || die "cargo is needed to build the tansu broker"
    say "building the tansu Kafka broker once per machine (cargo install tansu --locked --features $TANSU_FEATURES; ~15 minutes on 2 cores)."
    say "it is kept in ~/.cargo/bin, so later runs start at once. Progress: $LOCAL/log/tansu-install.log"
    mkdir -p "$LOCAL/log"
    if ! cargo install tansu --locked --features "$TANSU_FEATURES" >"$LOCAL/log/tansu-install.log" 2>&1; then
      tail -n 30 "$LOCAL/log/tansu-install.log" >&2
      die "building tansu failed (log above). Fix the cause and run 'up' again, or point TANSU_BIN at a tansu binary."
    fi
  fi
}

clickhouse_config() {
  local dir="$LOCAL/clickhouse"
  mkdir -p "$dir/data/tmp" "$dir/data/user_files" "$dir/data/format_schemas"
  cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<!-- Generated by deploy/local/services.sh; edits are overwritten. -->
<yandex>
    <logger><level>warning</level><log>$LOCAL/log/clickhouse.log</log><errorlog>$LOCAL/log/clickhouse.err.log</errorlog><size>100M</size><count>2</count></logger>
    <http_port>$CH_HTTP_PORT</http_port>
    <tcp_port>$CH_TCP_PORT</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>512</max_connections>
    <keep_alive_timeout>30</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>$dir/data/</path>
    <tmp_path>$dir/data/tmp/</tmp_path>
    <user_files_path>$dir/data/user_files/</user_files_path>
    <format_schema_path>$dir/data/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
</yandex>
XML
  cat >"$dir/users.xml" <<'XML'
<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
  echo "$dir/config.xml"
}

start_kafka() {
  local bin storage
  bin=$(tansu_bin) || die "tansu not installed; run 'up'"
  if [[ $KAFKA_STORAGE == sqlite ]]; then
    # tansu resolves the sqlite path against its working directory.
    mkdir -p "$LOCAL/tansu"; cd "$LOCAL/tansu"; storage="sqlite://tansu.db"
  else
    storage="memory://tansu/"
  fi
  start kafka "$KAFKA_PORT" "$LOCAL/log/kafka.log" "$bin" broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine "$storage"
}

up() {
  ensure_installed
  mkdir -p "$LOCAL/run" "$LOCAL/log"
  start_kafka
  local chcfg; chcfg=$(clickhouse_config)
  start clickhouse "$CH_HTTP_PORT" "$LOCAL/log/clickhouse.out" clickhouse-server --config-file="$chcfg"
  # The HTTP port opens before the server answers queries; wait for a real answer.
  local i
  for ((i = 0; i < 300; i++)); do
    curl -sf "http://127.0.0.1:$CH_HTTP_PORT/?query=SELECT%201" >/dev/null 2>&1 && break
    sleep 0.1
  done
  mkdir -p "$LOCAL/prometheus" "$LOCAL/alertmanager"
  start alertmanager "$AM_PORT" "$LOCAL/log/alertmanager.log" prometheus-alertmanager \
    --config.file="${TS_ALERTMANAGER_CONFIG:-$ROOT/deploy/alertmanager/alertmanager.yml}" \
    --storage.path="$LOCAL/alertmanager" \
    --web.listen-address="127.0.0.1:$AM_PORT" --cluster.listen-address=
  start prometheus "$PROM_PORT" "$LOCAL/log/prometheus.log" prometheus \
    --config.file="${TS_PROMETHEUS_CONFIG:-$ROOT/deploy/prometheus/prometheus.yml}" \
    --storage.tsdb.path="$LOCAL/prometheus" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --web.enable-lifecycle
  status
}

# ---- the local ClickHouse cluster (`up --cluster`) ----------------------------------

ensure_cluster_installed() {
  [[ -f /usr/share/java/zookeeper.jar ]] || apt_install zookeeper
}

start_zookeeper() {
  local dir="$LOCAL/zookeeper"
  mkdir -p "$dir/data" "$dir/conf"
  cat >"$dir/conf/zoo.cfg" <<CFG
# Generated by deploy/local/services.sh; edits are overwritten.
tickTime=2000
dataDir=$dir/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
admin.enableServer=false
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
4lw.commands.whitelist=ruok,stat
CFG
  cat >"$dir/conf/log4j.properties" <<'CFG'
log4j.rootLogger=WARN, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p %c{1}: %m%n
CFG
  start zookeeper "$ZK_PORT" "$LOCAL/log/zookeeper.log" java -Xms64m -Xmx256m \
    -cp "$dir/conf:/usr/share/java/zookeeper.jar" \
    org.apache.zookeeper.server.ZooKeeperServerMain "$dir/conf/zoo.cfg"
  # An open port is not a serving ZooKeeper: a ClickHouse 18.16 server that starts while
  # the handshake still fails can crash later in its DDL worker. Wait for `stat` to
  # report a serving mode.
  local i reply
  for ((i = 0; i < 300; i++)); do
    reply=$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$ZK_PORT && printf stat >&3 && cat <&3" 2>/dev/null || true)
    [[ $reply == *"Mode:"* ]] && return 0
    sleep 0.2
  done
  die "zookeeper opened port $ZK_PORT but does not serve; log: $LOCAL/log/zookeeper.log"
}

# node number (1..3) -> shard
node_shard() { if (($1 <= 2)); then echo 01; else echo 02; fi; }

cluster_node_config() { # N
  local n=$1 name="ch$1" dir="$LOCAL/cluster/ch$1" r shard replicas=""
  mkdir -p "$dir/data/tmp" "$dir/data/user_files" "$dir/data/format_schemas"
  shard=$(node_shard "$n")
  cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<!-- Generated by deploy/local/services.sh (cluster node $name); edits are overwritten. -->
<yandex>
    <logger><level>warning</level><log>$LOCAL/log/$name.log</log><errorlog>$LOCAL/log/$name.err.log</errorlog><size>50M</size><count>2</count></logger>
    <http_port>$((CLUSTER_HTTP_BASE + n))</http_port>
    <tcp_port>$((CLUSTER_TCP_BASE + n))</tcp_port>
    <interserver_http_port>$((CLUSTER_IS_BASE + n))</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>256</max_connections>
    <keep_alive_timeout>30</keep_alive_timeout>
    <max_concurrent_queries>50</max_concurrent_queries>
    <!-- Small caches: three servers share a small box with everything else. -->
    <uncompressed_cache_size>33554432</uncompressed_cache_size>
    <mark_cache_size>67108864</mark_cache_size>
    <path>$dir/data/</path>
    <tmp_path>$dir/data/tmp/</tmp_path>
    <user_files_path>$dir/data/user_files/</user_files_path>
    <format_schema_path>$dir/data/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <remote_servers>
        <$CLUSTER_NAME>
            <shard>
                <internal_replication>true</internal_replication>
                <replica><host>127.0.0.1</host><port>$((CLUSTER_TCP_BASE + 1))</port></replica>
                <replica><host>127.0.0.1</host><port>$((CLUSTER_TCP_BASE + 2))</port></replica>
            </shard>
            <shard>
                <internal_replication>true</internal_replication>
                <replica><host>127.0.0.1</host><port>$((CLUSTER_TCP_BASE + 3))</port></replica>
            </shard>
        </$CLUSTER_NAME>
    </remote_servers>
    <zookeeper>
        <node><host>127.0.0.1</host><port>$ZK_PORT</port></node>
        <session_timeout_ms>30000</session_timeout_ms>
    </zookeeper>
    <macros><shard>$shard</shard><replica>$name</replica></macros>
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
</yandex>
XML
  # prefer_localhost_replica 0: ClickHouse 18.16 fails `SELECT a FROM <Distributed> FINAL`
  # (no WHERE, version column not selected) when it reads its own shard in-process
  # (README "Running on a cluster").
  cat >"$dir/users.xml" <<'XML'
<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>2000000000</max_memory_usage><background_pool_size>4</background_pool_size><connect_timeout_with_failover_ms>200</connect_timeout_with_failover_ms><prefer_localhost_replica>0</prefer_localhost_replica></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
  echo "$dir/config.xml"
}

start_cluster_node() { # chN
  local n=${1#ch} cfg port i
  [[ $n =~ ^[1-3]$ ]] || die "no cluster node $1 (ch1, ch2, ch3)"
  cfg=$(cluster_node_config "$n")
  port=$((CLUSTER_HTTP_BASE + n))
  start "$1" "$port" "$LOCAL/log/$1.out" clickhouse-server --config-file="$cfg"
  # Up to 60 s: a restarted replica loads every replicated table and reconnects each to
  # ZooKeeper before it answers.
  for ((i = 0; i < 600; i++)); do
    curl -sf "http://127.0.0.1:$port/?query=SELECT%201" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "$1 opened port $port but does not answer queries; log: $LOCAL/log/$1.err.log"
}

cluster_up() {
  ensure_cluster_installed
  mkdir -p "$LOCAL/run" "$LOCAL/log"
  start_zookeeper
  local node
  for node in "${CLUSTER_NODES[@]}"; do start_cluster_node "$node"; done
}

cluster_down() {
  local node
  for node in "${CLUSTER_NODES[@]}"; do stop "$node"; done
  stop zookeeper
}

cluster_status() {
  local node n
  pid_alive zookeeper || [[ -d $LOCAL/cluster ]] || return 0
  for node in zookeeper "${CLUSTER_NODES[@]}"; do
    if [[ $node == zookeeper ]]; then n=$ZK_PORT; else n=$((CLUSTER_HTTP_BASE + ${node#ch})); fi
    if pid_alive "$node" && port_open "$n"; then
      printf '  %-13s up    127.0.0.1:%-5s pid %s\n' "$node" "$n" "$(cat "$LOCAL/run/$node.pid")"
    else
      printf '  %-13s down\n' "$node"
    fi
  done
}

status() {
  local name port
  for pair in kafka:$KAFKA_PORT clickhouse:$CH_HTTP_PORT prometheus:$PROM_PORT alertmanager:$AM_PORT; do
    name=${pair%%:*}; port=${pair##*:}
    if pid_alive "$name" && port_open "$port"; then
      printf '  %-13s up    127.0.0.1:%-5s pid %s\n' "$name" "$port" "$(cat "$LOCAL/run/$name.pid")"
    elif port_open "$port"; then
      printf '  %-13s port %s answers, but not started by this script\n' "$name" "$port"
    else
      printf '  %-13s down\n' "$name"
    fi
  done
  cluster_status
}

down() {
  local s
  cluster_down
  for s in prometheus alertmanager clickhouse kafka; do stop "$s"; done
}

case "${1:-}" in
  up)
    case "${2:-}" in
      "") up ;;
      --cluster) up; cluster_up; cluster_status ;;
      *) die "unknown option to up: $2 (only --cluster)" ;;
    esac ;;
  cluster-up) cluster_up; cluster_status ;;
  cluster-down) cluster_down ;;
  stop-node) stop "${2:?stop-node needs ch1, ch2 or ch3}" ;;
  start-node) start_cluster_node "${2:?start-node needs ch1, ch2 or ch3}" ;;
  status) status ;;
  down) down ;;
  stop-kafka) stop kafka ;;
  start-kafka) start_kafka ;;
  restart-kafka) stop kafka; start_kafka ;;
  *) echo "usage: $0 up [--cluster]|status|down|cluster-up|cluster-down|stop-kafka|start-kafka|restart-kafka|stop-node chN|start-node chN" >&2; exit 2 ;;
esac
