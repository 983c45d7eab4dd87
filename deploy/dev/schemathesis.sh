#!/usr/bin/env bash
# Fuzzes the control API from its committed OpenAPI document with schemathesis (PyPI): starts a
# fresh `peage up --demo` and runs every operation of schemas/openapi/control-api.yaml with
# generated valid and invalid input (admin token) twice, once with generated ids and once with
# real ones (so requests get past the lookups), failing on any server error (5xx) or a response
# the server could not complete. A request that fails at the network level (a kept-alive
# connection closed as it was reused) is retried twice, as HTTP clients do; a server error is
# never retried. Run by deploy/dev/test-all.sh (and so by CI). One worker: with two threads,
# hypothesis under Debian's Python 3.11 now and then dies of CPython's AST recursion-depth race
# (gh-106905, "SystemError: AST constructor recursion depth mismatch"), failing a run the same
# seed then passes.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
TOOLS=${PEAGE_TOOLS_DIR:-$HOME/.cache/peage}
SCHEMATHESIS="$TOOLS/schemathesis-venv/bin/schemathesis"
[ -x "$SCHEMATHESIS" ] || deploy/dev/services.sh install

# shellcheck source=deploy/dev/demo-server.sh
. deploy/dev/demo-server.sh
mkdir -p target/schemathesis
# The fuzzer sends many wrong sign-in links and client secrets from one address: without a
# higher allowance the limit on guessing (docs/security.md) would refuse its own admin token.
export PEAGE_CONTROL__CREDENTIAL_FAILURES_PER_MINUTE=1000000
start_demo target/schemathesis/peage.log
url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["control_url"])' "$data/demo.json")
token=$(cat "$data/admin-token")
auth="Authorization: Bearer $token"
run() { # label, extra arguments…
    local label=$1; shift
    echo "schemathesis ($label): fuzzing $url from schemas/openapi/control-api.yaml"
    local out="target/schemathesis/$label.log" status=0
    "$SCHEMATHESIS" "$@" run schemas/openapi/control-api.yaml \
        --url "$url" \
        --header "$auth" \
        --checks not_a_server_error,response_schema_conformance,content_type_conformance \
        --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-30}" \
        --seed "${SCHEMATHESIS_SEED:-20261128}" \
        --workers 1 \
        --request-timeout 20 \
        --request-retries 2 \
        --report junit --report-junit-path "target/schemathesis/$label.xml" 2>&1 | tee "$out" ||
        status=$?
    if [ "$status" -ne 0 ]; then
        # CI shows the end of a long log: repeat what went wrong there, and the server's last
        # words, so a failure can be understood from the log alone.
        echo "schemathesis ($label) failed ($status); its findings again:"
        sed -n '/^=* ERRORS =*$/,/^=* SUMMARY =*$/p; /^=* FAILURES =*$/,/^=* SUMMARY =*$/p' "$out" | head -150
        echo "--- last lines of the server's log:"
        tail -n 30 target/schemathesis/peage.log
        return "$status"
    fi
}

# The revocation feed is a long poll (up to 15 s a request): fuzz it with short waits so the
# runs stay inside CI's time budget; its waiting is tested in tests/e2e_distributed.rs.
long_poll='[[operations]]
include-path-regex = "^/v1/gateway/revocations"
parameters = { "query.wait_ms" = 100 }'
echo "$long_poll" >"$data/schemathesis-base.toml"

# 1. Generated ids everywhere: unknown partners, keys and invoices must be clean 4xx.
run random-ids --config-file "$data/schemathesis-base.toml"

# 2. Real ids: the demo partner, one of its keys, an invoice of this month and the demo API, so
#    generated bodies and queries reach the handlers behind the lookups.
curl -fsS -H "$auth" -H 'content-type: application/json' \
    -d "{\"period\": \"$(date -u +%Y-%m)\"}" "$url/v1/invoices/run" >/dev/null
ids=$(python3 - "$data/demo.json" "$url" "$token" <<'PY'
import json, sys, urllib.request
demo, url, token = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
def get(path):
    req = urllib.request.Request(url + path, headers={"Authorization": "Bearer " + token})
    return json.load(urllib.request.urlopen(req))
partner = demo["partner_id"]
key = get(f"/v1/partners/{partner}/keys")["keys"][0]["key_id"]
invoice = get(f"/v1/invoices?partner_id={partner}")["invoices"][0]["id"]
print(partner, key, invoice)
PY
)
read -r partner key invoice <<<"$ids"
cat >"$data/schemathesis.toml" <<TOML
[parameters]
"path.id" = "$partner"
"path.key_id" = "$key"
"path.api" = "demo"
"path.version" = "v1"

[[operations]]
include-path-regex = "^/v1/invoices/"
parameters = { "path.id" = "$invoice" }

$long_poll
TOML
run real-ids --config-file "$data/schemathesis.toml"

# The server must still be up and answering after both runs.
curl -fsS "$url/healthz" >/dev/null
