# Shared by the load tests (load-tests/gateway/run.sh, load-tests/soak/run.sh): small helpers,
# the benchmark catalog, a broker of their own, and the distributed roles' configuration.
# Source it from the repository root, after setting WORK (a scratch directory), PEAGE (the
# binary), TOKEN (the admin token) and the ports the functions name.

need() { command -v "$1" >/dev/null 2>&1; }

wait_http() { # url [header]
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null ${2:+-H "$2"} "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "not answering: $1" >&2; exit 1
}

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }

# bench_catalog FILE UPSTREAM_PORT PLAN: one API on the demo upstream, a call meter, and a plan
# whose quota and rate limit never bind, so the load measures the gateway, not a refusal.
bench_catalog() {
  cat > "$1" <<CONF
[[api]]
name = "demo"
[[api.versions]]
id = "v1"
live = "http://127.0.0.1:$2"
operations = { "GET /hello" = { units = 1 } }

[[meter]]
name = "calls"
aggregation = "count"

[[plan]]
id = "$3"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "0"
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.001" }]
quotas = [{ meter = "calls", limit = 1000000000000, kind = "hard" }]
rate_limit = { per_second = 1000000, burst = 1000000 }
CONF
}

# start_tansu DIR PORT STORAGE_URL: a broker of the test's own on a fresh data directory (the
# shared dev broker's file grows with every test run); sets TANSU_PID once it listens.
start_tansu() {
  mkdir -p "$1"
  (cd "$1" && exec tansu broker --listener-url "tcp://127.0.0.1:$2" \
    --advertised-listener-url "tcp://127.0.0.1:$2" --storage-engine "$3" \
    </dev/null >"$1/broker.log" 2>&1) &
  TANSU_PID=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && break; sleep 0.1; done
}

# new_partner CONTROL_URL PLAN [NAME] -> "partner key" (a live key)
new_partner() {
  local partner key
  partner=$(curl -fsS -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d "{\"name\":\"${3:-Bench}\",\"plan\":\"$2\"}" "$1/v1/partners" | json_field id)
  key=$(curl -fsS -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d '{"env":"live"}' "$1/v1/partners/$partner/keys" | json_field secret)
  echo "$partner $key"
}

# role_config NAME GATEWAY_ID [EXTRA_GATEWAY_LINES] [EXTRA_SECTIONS]: creates PostgreSQL
# database NAME and writes $WORK/peage.toml for billing on :$BILLING_PORT, a gateway on
# :$ROLE_PORT spooling to the broker on :$KAFKA_PORT, and an aggregator, all on databases and
# topics named NAME; sets PGURL.
role_config() {
  PGURL="postgres://peage:peage@127.0.0.1:${PEAGE_POSTGRES_PORT:-5432}"
  psql "$PGURL/peage" -qc "CREATE DATABASE $1" >/dev/null
  cat > "$WORK/peage.toml" <<CONF
[catalog]
path = "$WORK/catalog.toml"
[gateway]
listen = "127.0.0.1:$ROLE_PORT"
id = "$2"
billing_url = "http://127.0.0.1:$BILLING_PORT"
${3:-}
${4:-}
[control]
listen = "127.0.0.1:$BILLING_PORT"
admin_token = "$TOKEN"
[kafka]
brokers = "127.0.0.1:$KAFKA_PORT"
topic = "$1.calls"
dead_letter_topic = "$1.dead"
partitions = 4
[spool]
dir = "$WORK/spool"
[clickhouse]
url = "http://127.0.0.1:${PEAGE_CLICKHOUSE_PORT:-8123}"
database = "$1"
validation = false
[postgres]
url = "$PGURL/$1"
[aggregator]
group = "$1-agg"
max_wait_ms = 200
[secrets]
key = "$("$PEAGE" secrets new-key)"
CONF
}

# utime+stime in clock ticks of these processes (all their threads).
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
