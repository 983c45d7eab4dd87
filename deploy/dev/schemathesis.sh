#!/usr/bin/env bash
# Fuzzes the control API from its committed OpenAPI document with schemathesis (PyPI): starts a
# fresh `peage up --demo`, runs every operation of schemas/openapi/control-api.yaml with
# generated valid and invalid input (admin token), and fails on any server error (5xx) or a
# response the server could not complete. Run by deploy/dev/test-all.sh (and so by CI).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
TOOLS=${PEAGE_TOOLS_DIR:-$HOME/.cache/peage}
SCHEMATHESIS="$TOOLS/schemathesis-venv/bin/schemathesis"
[ -x "$SCHEMATHESIS" ] || deploy/dev/services.sh install

cargo build -p peage --locked --quiet
data=$(mktemp -d)
target/debug/peage up --demo --data-dir "$data" \
    --gateway-listen 127.0.0.1:0 --control-listen 127.0.0.1:0 >"$data/peage.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 300); do
    if [ -f "$data/demo.json" ] && grep -q "\"pid\": $pid" "$data/demo.json"; then break; fi
    kill -0 "$pid" 2>/dev/null || { cat "$data/peage.log"; exit 1; }
    sleep 0.1
done
url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["control_url"])' "$data/demo.json")
token=$(cat "$data/admin-token")
mkdir -p target/schemathesis
echo "schemathesis: fuzzing $url from schemas/openapi/control-api.yaml"
"$SCHEMATHESIS" run schemas/openapi/control-api.yaml \
    --url "$url" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error \
    --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-30}" \
    --seed "${SCHEMATHESIS_SEED:-20261128}" \
    --workers 2 \
    --request-timeout 20 \
    --report junit --report-dir target/schemathesis
# The server must still be up and answering after the run.
curl -fsS "$url/healthz" >/dev/null
