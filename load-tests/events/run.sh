#!/usr/bin/env bash
# Events API benchmark (release build): load-tests/events/run.sh
#   MODES="embedded distributed" (default) · SECONDS_EACH=10 (each measure)
#   PERF=embedded|distributed profiles the server (peage up; billing and aggregator) during
#   that mode's POST measure (PEAGE_BENCH_PERF_GRAPH=dwarf for call graphs)
# POST /v1/events in batches of 100 over 8 connections, durable, beside the raw append rate of
# the same log measured in the same run (load-tests/events/main.rs), then waits until every
# accepted event is counted once (once the consumers' lag on /metrics is gone):
#   embedded     `peage up`: the usage log in its data directory (synced on every append)
#   distributed  `peage billing` spooling to its own tansu (fresh, durable SQLite engine) and
#                `peage aggregator` into ClickHouse, as deploy/dev/services.sh runs them
# Appends a table to load-tests/RESULTS.md and ends with a RESULT line per mode.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
MODES=${MODES:-embedded distributed}
SECONDS_EACH=${SECONDS_EACH:-10}
CTL_PORT=18284 BILLING_PORT=18286 KAFKA_PORT=18287 ROLE_PORT=18285 METRICS_PORT=18288 BILLING_METRICS_PORT=18289
TOKEN=bench-admin-token-0123456789

. load-tests/lib.sh
echo "== building peage and the load client (release)"
cargo build --release -q -p peage --bin peage --example events_load
PEAGE=$ROOT/target/release/peage
CLIENT=$ROOT/target/release/examples/events_load

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The gateway's bench catalog (unused here) and a count meter over the bench's event type.
bench_catalog "$WORK/catalog.toml" 1 bench
cat >> "$WORK/catalog.toml" <<CONF

[[meter]]
name = "bench_events"
event_type = "com.example.bench.tokens"
aggregation = "count"
CONF

declare -A LINE
run_client() { # mode url partner processes pids-perf-records-when-PERF=mode [more-metrics-urls]
  mkdir -p "$WORK/raw-$1"
  if [ "${PERF:-}" = "$1" ]; then export PEAGE_BENCH_PERF=$5 PEAGE_BENCH_PERF_OUT="$WORK/perf-$1.data"; fi
  PEAGE_BENCH_METRICS="http://127.0.0.1:$METRICS_PORT/metrics${6:+ $6}" PEAGE_BENCH_PROCS=$4 PEAGE_BENCH_MODE=$1 PEAGE_BENCH_URL=$2 PEAGE_BENCH_TOKEN=$TOKEN PEAGE_BENCH_PARTNER=$3 \
    PEAGE_BENCH_SECONDS=$SECONDS_EACH PEAGE_BENCH_RAW_DIR="$WORK/raw-$1" \
    PEAGE_BENCH_KAFKA="127.0.0.1:$KAFKA_PORT" PEAGE_BENCH_TOPIC="raw_$(date +%s)_$$.usage" \
    "$CLIENT" | tee "$WORK/result-$1"
  LINE[$1]=$(grep '^RESULT' "$WORK/result-$1")
  if [ "${PERF:-}" = "$1" ]; then
    unset PEAGE_BENCH_PERF PEAGE_BENCH_PERF_OUT
    cp "$WORK/perf-$1.data" "/tmp/perf-$1.data"
    echo "== where $1's time goes during the POST measure (perf, self, by thread and symbol; /tmp/perf-$1.data)"
    { perf report -i "/tmp/perf-$1.data" --no-children --sort comm,dso,symbol --stdio -g none 2>/dev/null |
      grep -v '^#' | grep -v '^$' | sed 's/ *-  *- *$//' | cut -c1-160 | head -40; } || true
  fi
}

for mode in $MODES; do
  case $mode in
  embedded)
    echo "== peage up (embedded) on :$CTL_PORT"
    PEAGE_LOG=warn env -u PEAGE_CONFIG "$PEAGE" up --data-dir "$WORK/data" --catalog "$WORK/catalog.toml" \
      --gateway-listen "127.0.0.1:0" --control-listen "127.0.0.1:$CTL_PORT" \
      --admin-token "$TOKEN" --metrics-listen "127.0.0.1:$METRICS_PORT" >/dev/null &
    UP_PID=$!
    PIDS+=($UP_PID)
    wait_http "http://127.0.0.1:$CTL_PORT/healthz"
    read -r PARTNER _ < <(new_partner "http://127.0.0.1:$CTL_PORT" bench)
    run_client embedded "http://127.0.0.1:$CTL_PORT" "$PARTNER" "up=$UP_PID" "$UP_PID"
    kill "$UP_PID"; wait "$UP_PID" 2>/dev/null || true
    ;;
  distributed)
    deploy/dev/services.sh start
    echo "== tansu for the roles on :$KAFKA_PORT (fresh, $WORK/kafka)"
    start_tansu "$WORK/kafka" "$KAFKA_PORT" "sqlite://tansu.db"
    PIDS+=($TANSU_PID)
    NAME="evbench_$(date +%s)_$$"
    role_config "$NAME" gw-bench "" "[events]
topic = \"$NAME.usage\"
spool_dir = \"$WORK/events-spool\""
    export PEAGE_CONFIG="$WORK/peage.toml"
    PEAGE_LOG=warn "$PEAGE" migrate >/dev/null
    echo "== peage billing on :$BILLING_PORT (spool → tansu) and peage aggregator (→ ClickHouse)"
    PEAGE_LOG=warn PEAGE_METRICS__LISTEN=127.0.0.1:$BILLING_METRICS_PORT "$PEAGE" billing >/dev/null &
    BILLING_PID=$!
    PIDS+=($BILLING_PID)
    PEAGE_LOG=warn PEAGE_METRICS__LISTEN=127.0.0.1:$METRICS_PORT "$PEAGE" aggregator >/dev/null &
    AGG_PID=$!
    PIDS+=($AGG_PID)
    wait_http "http://127.0.0.1:$BILLING_PORT/healthz"
    read -r PARTNER _ < <(new_partner "http://127.0.0.1:$BILLING_PORT" bench)
    run_client distributed "http://127.0.0.1:$BILLING_PORT" "$PARTNER" \
      "billing=$BILLING_PID aggregator=$AGG_PID broker=$TANSU_PID clickhouse=$(cat /tmp/peage-services/clickhouse.pid) postgres=comm:postgres" \
      "$BILLING_PID,$AGG_PID" "http://127.0.0.1:$BILLING_METRICS_PORT/metrics"
    ;;
  *) echo "unknown mode $mode (embedded, distributed)" >&2; exit 2 ;;
  esac
done

field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"${LINE[$1]}"; }
{
  echo
  echo "## Events API — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1 | cut -c1-40). Load: load-tests/events/main.rs, \`POST /v1/events\` with batches of 100 CloudEvents (~230 bytes each, unique ids) from 8 keep-alive connections, ${SECONDS_EACH}s per measure; the raw rate appends the same batches (parsed once beforehand) to the route's own sink from 8 tasks. Client, server, broker and ClickHouse share the machine. Every event is durable before its answer: the usage log synced per append (embedded), the spool synced per append before tansu (distributed)."
  echo
  echo "| mode | POST events/s | raw append events/s | POST / raw | accepted | counted once | p50 ms | p99 ms | counted all after |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  for mode in $MODES; do
    echo "| $mode | $(field "$mode" api_events_per_s) | $(field "$mode" raw_events_per_s) | $(field "$mode" api_vs_raw) | $(field "$mode" accepted) | $(field "$mode" counted) | $(field "$mode" p50_ms) | $(field "$mode" p99_ms) | $(field "$mode" caught_up_s) s |"
  done
  echo
  for mode in $MODES; do
    echo "CPU per accepted event during the POST measure ($mode, µs): $(grep -o ' cpu_us_[a-z]*=[0-9.]*' <<<"${LINE[$mode]}" | sed 's/ cpu_us_//; s/=/ /' | paste -sd, - | sed 's/,/, /g'); per event still to store when the load stopped, until the consumers' lag was gone: $(grep -o 'catch_up_cpu_us_[a-z]*=[0-9.]*' <<<"${LINE[$mode]}" | sed 's/catch_up_cpu_us_//; s/=/ /' | paste -sd, - | sed 's/,/, /g')."
  done
  echo
  echo "Aims: ≥ 100,000 events/s in distributed mode, and POST / raw ≥ 50 %."
} >> load-tests/RESULTS.md
for mode in $MODES; do echo "${LINE[$mode]}"; done
