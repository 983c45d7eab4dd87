# Sourced by the scripts that test against a running `peage up --demo` (schemathesis.sh,
# openapi-client.sh). `start_demo LOG` builds peage, starts it on loopback ports in a fresh data
# directory ($data), waits for its demo.json, and stops it and removes $data when the sourcing
# script exits. Settings go in PEAGE_* variables exported before the call.
start_demo() {
    local log=$1
    cargo build -p peage --locked --quiet
    data=$(mktemp -d)
    "${CARGO_TARGET_DIR:-target}/debug/peage" up --demo --data-dir "$data" \
        --gateway-listen 127.0.0.1:0 --control-listen 127.0.0.1:0 >"$log" 2>&1 &
    demo_pid=$!
    trap 'kill "$demo_pid" 2>/dev/null; wait "$demo_pid" 2>/dev/null; rm -rf "$data"' EXIT
    for _ in $(seq 1 300); do
        if [ -f "$data/demo.json" ] && grep -q "\"pid\": $demo_pid" "$data/demo.json"; then
            return 0
        fi
        kill -0 "$demo_pid" 2>/dev/null || { cat "$log"; exit 1; }
        sleep 0.1
    done
    echo "peage up --demo did not write its demo.json within 30 s"
    cat "$log"
    exit 1
}
