#!/usr/bin/env bash
# Ingest benchmark (release build): load-tests/ingest/run.sh [EVENTS]   (default 500000)
# Starts the servers through deploy/dev/services.sh if needed; appends to load-tests/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/dev/services.sh start
cargo run --release --locked -p peage --example ingest -- "${1:-500000}"
