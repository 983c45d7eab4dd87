#!/usr/bin/env bash
# Ingest benchmark (release build): load-tests/ingest/run.sh [EVENTS]   (default 2000000)
#   BROKERS="sqlite memory" (default): the shared tansu of deploy/dev/services.sh (SQLite
#   engine, what CI runs), then a fresh tansu on its in-memory engine.
# Starts the servers through deploy/dev/services.sh if needed; appends to load-tests/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/dev/services.sh start
cargo build --release --locked -p peage --example ingest
BROKERS=${BROKERS:-sqlite memory}
if [[ " $BROKERS " == *" sqlite "* ]]; then
    target/release/examples/ingest "${1:-2000000}"
fi
# The same run against tansu's in-memory engine (~10x faster than its SQLite engine), to see
# the aggregator's own ceiling when the broker is not the bottleneck.
if [[ " $BROKERS " == *" memory "* ]]; then
    . load-tests/lib.sh
    dir=$(mktemp -d)
    start_tansu "$dir" 19092 memory://tansu/
    broker=$TANSU_PID
    trap 'kill $broker 2>/dev/null; rm -rf "$dir"' EXIT
    PEAGE_BENCH_KAFKA=127.0.0.1:19092 PEAGE_BENCH_BROKER_PID=$broker PEAGE_BENCH_BROKER_NAME="tansu 0.6, in-memory engine" \
        target/release/examples/ingest "${1:-2000000}"
fi
