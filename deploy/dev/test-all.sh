#!/usr/bin/env bash
# Runs every test of the workspace, installing what the tests need first.
# Used by people (README) and by CI (.ci/run) alike.
set -euo pipefail
cd "$(dirname "$0")/../.."

# A C compiler builds the bundled SQLite and ring (TLS). Install it on a bare machine.
if ! command -v cc >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq build-essential
    else
        echo "test-all: a C compiler is needed: sudo apt-get install build-essential" >&2
        exit 1
    fi
fi

# Embedded mode needs no servers. (Kafka, ClickHouse and PostgreSQL arrive with distributed
# mode and are started here through deploy/dev/services.sh.)
cargo test --workspace --all-targets --locked
