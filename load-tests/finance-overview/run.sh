#!/usr/bin/env bash
# Finance overview benchmark (release build): load-tests/finance-overview/run.sh [PARTNERS]
# [CALLS_PER_PARTNER] (defaults 10000 and 20), embedded and against PostgreSQL + ClickHouse
# (started through deploy/dev/services.sh). Aim: the overview at 10,000 partners in under 1 s.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/dev/services.sh start
cargo build --release --locked -p peage --example finance_overview
target/release/examples/finance_overview "${1:-10000}" "${2:-20}" both
