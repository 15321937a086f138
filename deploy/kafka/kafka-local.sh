#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft, combined broker+controller) on 127.0.0.1, for development,
# tests and CI. The broker jars come from Maven Central through mvn; nothing else is downloaded.
#
#   kafka-local.sh fetch    resolve the jars into the cache (idempotent)
#   kafka-local.sh start    fetch if needed, format storage once, start, wait, print 127.0.0.1:<port>
#   kafka-local.sh stop     SIGTERM, wait, then SIGKILL; nothing is left running
#   kafka-local.sh status   print the address and exit 0 if running, else exit 1
#
# Environment:
#   KAFKA_PORT             client port (default 9092)
#   KAFKA_CONTROLLER_PORT  controller port (default KAFKA_PORT+1)
#   KAFKA_DATA_DIR         storage, config, pid file and logs (default $STREAMEM_CACHE/kafka-data-<port>)
#   KAFKA_VERSION          org.apache.kafka:kafka_2.13 version (default below)
#   KAFKA_START_TIMEOUT_S  longest wait for the broker to accept clients (default 90)
#   STREAMEM_CACHE         cache root (default ~/.cache/streamem)
#   PYTHON                 interpreter used for the readiness check (default python3)
#   KAFKA_OWNER_PID        if set, the broker is stopped when this process dies (test sessions)
# A restart with the same KAFKA_DATA_DIR keeps topics and committed offsets.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
LOG4J_VERSION="${LOG4J_VERSION:-2.25.3}"
STREAMEM_CACHE="${STREAMEM_CACHE:-$HOME/.cache/streamem}"
KAFKA_HOME="$STREAMEM_CACHE/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_HOME/libs"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
KAFKA_DATA_DIR="${KAFKA_DATA_DIR:-$STREAMEM_CACHE/kafka-data-$KAFKA_PORT}"
KAFKA_START_TIMEOUT_S="${KAFKA_START_TIMEOUT_S:-90}"
PYTHON="${PYTHON:-python3}"
ADDRESS="127.0.0.1:$KAFKA_PORT"
PID_FILE="$KAFKA_DATA_DIR/kafka.pid"
PROPS="$KAFKA_DATA_DIR/server.properties"
LOG_DIRS="$KAFKA_DATA_DIR/kraft-logs"
OUT_LOG="$KAFKA_DATA_DIR/kafka.out"

die() {
    echo "kafka-local: $*" >&2
    exit 1
}

log() {
    echo "kafka-local: $*" >&2
}

fetch() {
    if [[ -f "$LIBS/.complete" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install -y maven)"
    mkdir -p "$KAFKA_HOME"
    exec 9>"$KAFKA_HOME/.fetch.lock"
    flock 9
    if [[ -f "$LIBS/.complete" ]]; then
        return 0
    fi
    log "fetching kafka_2.13:$KAFKA_VERSION (+ log4j $LOG4J_VERSION) from Maven Central into $LIBS"
    local tmp="$KAFKA_HOME/libs.tmp.$$"
    rm -rf "$tmp"
    mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" \
        -Dkafka.version="$KAFKA_VERSION" -Dlog4j.version="$LOG4J_VERSION" \
        -DoutputDirectory="$tmp" dependency:copy-dependencies 2>&1 \
        | sed 's/\x1b\[[0-9;]*m//g' >&2 \
        || { rm -rf "$tmp"; die "mvn could not fetch kafka_2.13:$KAFKA_VERSION (see the error above)"; }
    compgen -G "$tmp/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null \
        || { rm -rf "$tmp"; die "mvn ran but $tmp has no kafka_2.13-$KAFKA_VERSION.jar"; }
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    touch "$LIBS/.complete"
    flock -u 9
}

# True while $1 is a live (not zombie) kafka.Kafka process; guards against a recycled pid.
is_broker() {
    [[ "$1" =~ ^[0-9]+$ ]] || return 1
    tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" | grep -q 'kafka\.Kafka'
}

# True while process $1 exists and is not a zombie (a broker that died as our child).
alive() {
    local state
    state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" || return 1
    [[ -n "$state" && "$state" != Z ]]
}

# Prints the broker's pid if the pid file names a live broker.
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    is_broker "$pid" || return 1
    echo "$pid"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

write_properties() {
    cat >"$PROPS" <<EOF
# Written by kafka-local.sh: single-node KRaft, combined broker+controller, loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$LOG_DIRS
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
log.segment.bytes=67108864
EOF
}

# KRaft storage is formatted once; meta.properties marks a formatted log dir.
format_storage() {
    [[ -f "$LOG_DIRS/meta.properties" ]] && return 0
    local cluster_id
    cluster_id="$(java -cp "$LIBS/*" kafka.tools.StorageTool random-uuid 2>>"$OUT_LOG" | tail -n 1)"
    [[ -n "$cluster_id" ]] || die "StorageTool random-uuid printed nothing; see $OUT_LOG"
    java -cp "$LIBS/*" kafka.tools.StorageTool format --standalone \
        -t "$cluster_id" -c "$PROPS" >>"$OUT_LOG" 2>&1 \
        || die "StorageTool format failed; see $OUT_LOG"
}

# True once server.log, past LOG_OFFSET (its size before this start), says the server started.
started_logged() {
    local size
    size="$(stat -c %s "$KAFKA_DATA_DIR/server.log" 2>/dev/null)" || return 1
    ((size >= LOG_OFFSET)) || LOG_OFFSET=0
    tail -c +$((LOG_OFFSET + 1)) "$KAFKA_DATA_DIR/server.log" | grep 'Kafka Server started' >/dev/null
}

# True once the broker logged its start and, when kafka-python is importable, answers a metadata
# request.
accepts_clients() {
    port_open "$KAFKA_PORT" || return 1
    started_logged || return 1
    "$HAVE_KAFKA_PYTHON" || return 0
    "$PYTHON" - "$ADDRESS" <<'EOF' 2>/dev/null
import sys
from kafka import KafkaAdminClient
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=5000)
try:
    admin.list_topics()
finally:
    admin.close()
EOF
}

log_tail() {
    local f
    for f in "$OUT_LOG" "$KAFKA_DATA_DIR/server.log"; do
        [[ -f "$f" ]] && { echo "--- tail of $f" >&2; tail -n 40 "$f" >&2; }
    done
    return 0
}

start() {
    if running_pid >/dev/null; then
        echo "$ADDRESS"
        return 0
    fi
    command -v java >/dev/null || die "java not found: install a JRE 17+ (apt-get install -y openjdk-17-jre-headless)"
    fetch
    if port_open "$KAFKA_PORT" || port_open "$KAFKA_CONTROLLER_PORT"; then
        die "port $KAFKA_PORT or $KAFKA_CONTROLLER_PORT on 127.0.0.1 is already in use by another process"
    fi
    mkdir -p "$KAFKA_DATA_DIR"
    write_properties
    format_storage
    log "starting Kafka $KAFKA_VERSION on $ADDRESS (data: $KAFKA_DATA_DIR)"
    LOG_OFFSET="$(stat -c %s "$KAFKA_DATA_DIR/server.log" 2>/dev/null || echo 0)"
    setsid java -Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Djava.awt.headless=true \
        -Dkafka.logs.dir="$KAFKA_DATA_DIR" \
        -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
        -cp "$LIBS/*" kafka.Kafka "$PROPS" \
        </dev/null >>"$OUT_LOG" 2>&1 &
    local pid=$!
    echo "$pid" >"$PID_FILE"
    if [[ -n "${KAFKA_OWNER_PID:-}" ]]; then
        setsid bash -c 'while kill -0 "$1" && kill -0 "$2"; do sleep 2; done 2>/dev/null
                        kill -TERM "$2" 2>/dev/null' _ "$KAFKA_OWNER_PID" "$pid" \
            </dev/null >/dev/null 2>&1 &
    fi
    HAVE_KAFKA_PYTHON=false
    "$PYTHON" -c 'import kafka' 2>/dev/null && HAVE_KAFKA_PYTHON=true
    local deadline=$((SECONDS + KAFKA_START_TIMEOUT_S))
    until accepts_clients; do
        if ! alive "$pid"; then
            log_tail
            rm -f "$PID_FILE"
            die "the broker exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            log_tail
            stop
            die "the broker did not accept clients within ${KAFKA_START_TIMEOUT_S}s"
        fi
        sleep 0.2
    done
    echo "$ADDRESS"
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while is_broker "$pid" && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if is_broker "$pid"; then
        log "broker $pid ignored SIGTERM for 30s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        while is_broker "$pid"; do
            sleep 0.1
        done
    fi
    rm -f "$PID_FILE"
}

status() {
    running_pid >/dev/null || return 1
    echo "$ADDRESS"
}

case "${1:-}" in
    fetch)
        fetch
        log "kafka_2.13 $KAFKA_VERSION is in $LIBS"
        ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *)
        echo "usage: $0 start|stop|status|fetch" >&2
        exit 2
        ;;
esac
