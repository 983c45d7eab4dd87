#!/usr/bin/env bash
# The real servers Péage's distributed mode needs, on 127.0.0.1, for people, tests and CI alike.
#
#   deploy/dev/services.sh install   # apt + cargo install (once per machine; a no-op after)
#   deploy/dev/services.sh start     # install if needed, start whatever is not running, wait
#   deploy/dev/services.sh stop      # stop what `start` started (by PID)
#   deploy/dev/services.sh status    # what runs, where
#   deploy/dev/services.sh stop-kafka | start-kafka   # the broker alone (outage tests)
#
# Kafka wire: tansu (crates.io; no Apache Kafka download is reachable here), durable SQLite
# engine, :9092. ClickHouse: Debian's clickhouse-server, HTTP :8123. PostgreSQL 15: a throwaway
# cluster, :5432, user/database `peage`. Data and logs under $PEAGE_SERVICES_DIR
# (default /tmp/peage-services). Ports: PEAGE_KAFKA_PORT, PEAGE_CLICKHOUSE_PORT,
# PEAGE_CLICKHOUSE_TCP_PORT, PEAGE_POSTGRES_PORT.
set -euo pipefail
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

DIR=${PEAGE_SERVICES_DIR:-/tmp/peage-services}
KAFKA_PORT=${PEAGE_KAFKA_PORT:-9092}
CH_PORT=${PEAGE_CLICKHOUSE_PORT:-8123}
CH_TCP_PORT=${PEAGE_CLICKHOUSE_TCP_PORT:-9000}
PG_PORT=${PEAGE_POSTGRES_PORT:-5432}
TANSU_VERSION=0.6.0
CHDB_VERSION=4.4.0
SCHEMATHESIS_VERSION=4.32.5
OPENAPI_CLIENT_VERSION=0.29.1
KUBERNETES_VALIDATE_VERSION=1.37.0
TOOLS=${PEAGE_TOOLS_DIR:-$HOME/.cache/peage}
PG_BIN=/usr/lib/postgresql/15/bin
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

log() { echo "services: $*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

install() {
    local missing=()
    command -v clickhouse-server >/dev/null || missing+=(clickhouse-server clickhouse-client)
    [ -x "$PG_BIN/initdb" ] || missing+=(postgresql)
    command -v cmake >/dev/null || missing+=(cmake) # rdkafka builds its bundled librdkafka
    command -v cc >/dev/null || missing+=(build-essential)
    command -v curl >/dev/null || missing+=(curl)
    # deploy/validate.sh: docker-compose 1.29 checks deploy/compose.yaml without a daemon.
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    # The dashboard's browser tests: Debian's Chromium driven by playwright-core from npm.
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        as_root apt-get update -qq
        # clickhouse-server's post-install complains about invoke-rc.d (no init system): harmless.
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # chDB (ClickHouse 26.9 in process, PyPI) checks the schema and queries on a current
    # ClickHouse; ~900 MB, downloaded while tansu compiles.
    local chdb_pid=""
    if ! "$TOOLS/chdb-venv/bin/python" -c "import chdb" 2>/dev/null; then
        log "pip install chdb $CHDB_VERSION into $TOOLS/chdb-venv (once per machine)"
        mkdir -p "$TOOLS"
        (python3 -m venv "$TOOLS/chdb-venv" &&
            "$TOOLS/chdb-venv/bin/pip" install -q "chdb==$CHDB_VERSION") >"$TOOLS/chdb-install.log" 2>&1 &
        chdb_pid=$!
    fi
    # schemathesis (PyPI) fuzzes the control API from its OpenAPI document.
    if ! "$TOOLS/schemathesis-venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
        log "pip install schemathesis $SCHEMATHESIS_VERSION into $TOOLS/schemathesis-venv"
        mkdir -p "$TOOLS"
        python3 -m venv "$TOOLS/schemathesis-venv"
        "$TOOLS/schemathesis-venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
    fi
    # openapi-python-client (PyPI) generates a client from the committed OpenAPI document for
    # tests/openapi-client (deploy/dev/openapi-client.sh); httpx and attrs come with it.
    if ! "$TOOLS/openapi-client-venv/bin/openapi-python-client" --version 2>/dev/null | grep -q "$OPENAPI_CLIENT_VERSION"; then
        log "pip install openapi-python-client $OPENAPI_CLIENT_VERSION into $TOOLS/openapi-client-venv"
        mkdir -p "$TOOLS"
        python3 -m venv "$TOOLS/openapi-client-venv"
        "$TOOLS/openapi-client-venv/bin/pip" install -q "openapi-python-client==$OPENAPI_CLIENT_VERSION"
    fi
    # kubernetes-validate (PyPI) checks the Helm chart's rendered manifests against the
    # Kubernetes schemas it bundles (deploy/validate.sh).
    if ! "$TOOLS/k8s-venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
        log "pip install kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $TOOLS/k8s-venv"
        mkdir -p "$TOOLS"
        python3 -m venv "$TOOLS/k8s-venv"
        "$TOOLS/k8s-venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" pyyaml
    fi
    # playwright-core, pinned by tests/browser/package-lock.json (no browser download).
    local browser="$ROOT/tests/browser"
    if ! cmp -s "$browser/package-lock.json" "$browser/node_modules/.peage-installed-lock" 2>/dev/null; then
        log "npm ci in tests/browser"
        (cd "$browser" && npm ci --no-audit --no-fund --silent &&
            cp package-lock.json node_modules/.peage-installed-lock)
    fi
    if ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
        log "cargo install tansu $TANSU_VERSION (about 10 minutes on 2 cores, once per machine)"
        cargo install tansu --version "$TANSU_VERSION" --locked --features libsql,dynostore --quiet
    fi
    if [ -n "$chdb_pid" ] && ! wait "$chdb_pid"; then
        log "chdb install failed: $TOOLS/chdb-install.log"
        return 1
    fi
}

running() { # pidfile
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() { # description, command...
    local what=$1; shift
    for _ in $(seq 1 300); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    log "$what did not come up; see logs under $DIR"
    return 1
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_kafka() {
    mkdir -p "$DIR/kafka"
    if running "$DIR/kafka.pid"; then return 0; fi
    # The child writes its own PID before it execs the server, so `stop` kills the server
    # itself, not a wrapper.
    (cd "$DIR/kafka" && nohup sh -c 'echo $$ >"$0"; exec "$@"' "$DIR/kafka.pid" \
        tansu broker \
        --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --storage-engine "sqlite://tansu.db" </dev/null >"$DIR/kafka/broker.log" 2>&1 &)
    wait_for "tansu on :$KAFKA_PORT" tcp_open "$KAFKA_PORT"
    log "kafka (tansu) on 127.0.0.1:$KAFKA_PORT"
}

start_clickhouse() {
    local d="$DIR/clickhouse"
    mkdir -p "$d/data" "$d/tmp" "$d/user_files" "$d/format_schemas" "$d/log"
    if running "$DIR/clickhouse.pid"; then return 0; fi
    cp /etc/clickhouse-server/users.xml "$d/users.xml"
    cat >"$d/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>$d/log/server.log</log><errorlog>$d/log/error.log</errorlog><size>100M</size><count>2</count></logger>
    <http_port>$CH_PORT</http_port>
    <tcp_port>$CH_TCP_PORT</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>$d/data/</path>
    <tmp_path>$d/tmp/</tmp_path>
    <user_files_path>$d/user_files/</user_files_path>
    <format_schema_path>$d/format_schemas/</format_schema_path>
    <users_config>$d/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>536870912</mark_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
EOF
    (cd "$d" && nohup sh -c 'echo $$ >"$0"; exec "$@"' "$DIR/clickhouse.pid" \
        clickhouse-server --config-file="$d/config.xml" </dev/null >"$d/log/stdout.log" 2>&1 &)
    wait_for "clickhouse on :$CH_PORT" sh -c "curl -fsS http://127.0.0.1:$CH_PORT/ping | grep -q Ok"
    log "clickhouse on http://127.0.0.1:$CH_PORT"
}

pg() { # run a PostgreSQL binary as the postgres user when we are root
    if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; else "$@"; fi
}

start_postgres() {
    local d="$DIR/postgres"
    mkdir -p "$d"
    [ "$(id -u)" = 0 ] && chown postgres "$d"
    if [ ! -f "$d/data/PG_VERSION" ]; then
        pg "$PG_BIN/initdb" -D "$d/data" -U postgres -A trust >/dev/null
    fi
    if ! pg "$PG_BIN/pg_ctl" -D "$d/data" status >/dev/null 2>&1; then
        pg "$PG_BIN/pg_ctl" -D "$d/data" -l "$d/log" -w \
            -o "-k $d -h 127.0.0.1 -p $PG_PORT -c fsync=on -c max_connections=200" start >/dev/null
    fi
    pg "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc \
        "SELECT 1 FROM pg_roles WHERE rolname='peage'" | grep -q 1 ||
        pg "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc \
            "CREATE ROLE peage LOGIN PASSWORD 'peage' CREATEDB"
    pg "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname='peage'" | grep -q 1 ||
        pg "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE peage OWNER peage"
    log "postgres on 127.0.0.1:$PG_PORT (postgres://peage:peage@127.0.0.1:$PG_PORT/peage)"
}

stop_pid() { # name
    local f="$DIR/$1.pid"
    if running "$f"; then
        kill "$(cat "$f")"
        for _ in $(seq 1 100); do running "$f" || break; sleep 0.1; done
        running "$f" && kill -9 "$(cat "$f")"
        log "$1 stopped"
    fi
    rm -f "$f"
}

stop_postgres() {
    local d="$DIR/postgres"
    if [ -f "$d/data/PG_VERSION" ] && pg "$PG_BIN/pg_ctl" -D "$d/data" status >/dev/null 2>&1; then
        pg "$PG_BIN/pg_ctl" -D "$d/data" -m fast -w stop >/dev/null && log "postgres stopped"
    fi
}

status() {
    local rc=0
    if running "$DIR/kafka.pid"; then echo "kafka       up   127.0.0.1:$KAFKA_PORT"; else echo "kafka       down"; rc=1; fi
    if running "$DIR/clickhouse.pid"; then echo "clickhouse  up   http://127.0.0.1:$CH_PORT"; else echo "clickhouse  down"; rc=1; fi
    if [ -f "$DIR/postgres/data/PG_VERSION" ] && pg "$PG_BIN/pg_ctl" -D "$DIR/postgres/data" status >/dev/null 2>&1; then
        echo "postgres    up   127.0.0.1:$PG_PORT"
    else
        echo "postgres    down"; rc=1
    fi
    return $rc
}

case "${1:-}" in
install) install ;;
start)
    install
    mkdir -p "$DIR"
    start_kafka
    start_clickhouse
    start_postgres
    ;;
stop)
    stop_pid kafka
    stop_pid clickhouse
    stop_postgres
    ;;
start-kafka) start_kafka ;;
stop-kafka) stop_pid kafka ;;
status) status ;;
*)
    echo "usage: $0 install|start|stop|status|start-kafka|stop-kafka" >&2
    exit 2
    ;;
esac
