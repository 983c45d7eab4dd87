#!/usr/bin/env bash
# Invoice-run benchmark (release build): load-tests/invoice-run/run.sh [PARTNERS] [EVENTS_PER_PARTNER]
# (defaults 10000 and 60: 10,000 partners × 5 meters over October 2026), embedded and against
# PostgreSQL + ClickHouse (started through deploy/dev/services.sh). Target: ≤ 10 s per run.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/dev/services.sh start
cargo build --release --locked -p peage --example invoice_run
target/release/examples/invoice_run "${1:-10000}" "${2:-60}" both
