#!/usr/bin/env bash
# Runs every test of the workspace, installing and starting what the tests need first:
# a C toolchain, and the real servers of the distributed mode (Kafka-wire broker, ClickHouse,
# PostgreSQL) through deploy/dev/services.sh. Used by people (README) and by CI (.ci/run).
# Servers this script started are stopped again at the end; ones already running are left be.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

deploy/dev/services.sh install
already_running=false
if deploy/dev/services.sh status >/dev/null 2>&1; then already_running=true; fi
deploy/dev/services.sh start
if [ "$already_running" = false ]; then
    trap 'deploy/dev/services.sh stop' EXIT
fi

# `real-servers` turns on the tests that need the servers started above (and Chromium); with
# it, a server that is missing fails them. Without it (a plain `cargo test`) they are listed as
# ignored, never passed. --show-output keeps what passing tests print: the fault suite's counts
# (sent, answered, stored, lost, duplicated) and the measured figures belong in the CI log.
cargo test --workspace --all-targets --locked --features real-servers -- --show-output

# The control API against its OpenAPI document: no generated request may cause a server error.
deploy/dev/schemathesis.sh

# A client generated from the committed OpenAPI document, used end to end against `peage up`.
deploy/dev/openapi-client.sh

# The deployment files: the Helm chart rendered and checked against the Kubernetes schemas,
# deploy/compose.yaml checked by docker-compose, peage.toml files by `peage config check`.
deploy/validate.sh
