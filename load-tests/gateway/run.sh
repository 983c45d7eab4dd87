#!/usr/bin/env bash
# Gateway benchmark: the same upstream called directly, through nginx (Debian package, a plain
# proxy_pass with upstream keep-alive) and through the Péage gateway with auth + rate limit +
# quota + metering on (`peage up`, embedded: its event log, aggregator and billing run in the
# same process). Load from oha. Prints a table and appends it to load-tests/RESULTS.md.
#
#   load-tests/gateway/run.sh            # DURATION=10s RATE=5000 CONNECTIONS=64; PERF=1 profiles
#
# Measures, per target: throughput at saturation (CONNECTIONS connections, as fast as they go),
# then latency at a fixed RATE (p50/p99/p99.9, with coordinated-omission correction). "Added"
# latency is the target's percentile minus the direct call's percentile from the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

DURATION=${DURATION:-10s}
RATE=${RATE:-5000}
CONNECTIONS=${CONNECTIONS:-64}
RATE_CONNECTIONS=${RATE_CONNECTIONS:-50}
UP_PORT=18181 NGINX_PORT=18182 GW_PORT=18183 CTL_PORT=18184

need() { command -v "$1" >/dev/null 2>&1; }
sudo_if() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need oha || { echo "== installing oha (cargo install oha --locked)"; cargo install oha --locked; }
[ -x /usr/sbin/nginx ] || { echo "== installing nginx (apt)"; sudo_if apt-get install -y nginx-light || sudo_if apt-get install -y nginx; }

echo "== building peage (release)"
cargo build --release -q -p peage
PEAGE=target/release/peage

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_http() { # url [header]
  for _ in $(seq 1 200); do
    if curl -fsS -o /dev/null ${2:+-H "$2"} "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "not answering: $1" >&2; exit 1
}

echo "== upstream: peage demo-upstream on :$UP_PORT"
PEAGE_LOG=warn "$PEAGE" demo-upstream --listen "127.0.0.1:$UP_PORT" &
PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/hello"

echo "== nginx proxy_pass on :$NGINX_PORT"
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx.conf" <<CONF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx;
  scgi_temp_path $WORK/nginx;
  upstream demo { server 127.0.0.1:$UP_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location /demo/v1/ {
      proxy_pass http://demo/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
/usr/sbin/nginx -c "$WORK/nginx.conf"
wait_http "http://127.0.0.1:$NGINX_PORT/demo/v1/hello"

echo "== Péage: peage up on :$GW_PORT (auth, rate limit, hard quota, metering)"
cat > "$WORK/catalog.toml" <<CONF
[[api]]
name = "demo"
[[api.versions]]
id = "v1"
live = "http://127.0.0.1:$UP_PORT"
operations = { "GET /hello" = { units = 1 } }

[[meter]]
name = "calls"
aggregation = "count"

[[plan]]
id = "bench"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "0"
charges = [{ meter = "calls", model = "per_unit", unit_price = "0.001" }]
quotas = [{ meter = "calls", limit = 1000000000000, kind = "hard" }]
rate_limit = { per_second = 1000000, burst = 1000000 }
CONF
TOKEN=bench-admin-token-0123456789
PEAGE_LOG=warn "$PEAGE" up --data-dir "$WORK/data" --catalog "$WORK/catalog.toml" \
  --gateway-listen "127.0.0.1:$GW_PORT" --control-listen "127.0.0.1:$CTL_PORT" \
  --admin-token "$TOKEN" &
PEAGE_PID=$!
PIDS+=($PEAGE_PID)
wait_http "http://127.0.0.1:$CTL_PORT/healthz"
CTL="http://127.0.0.1:$CTL_PORT"
PARTNER=$(curl -fsS -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"name":"Bench","plan":"bench"}' "$CTL/v1/partners" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
KEY=$(curl -fsS -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"env":"live"}' "$CTL/v1/partners/$PARTNER/keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
wait_http "http://127.0.0.1:$GW_PORT/demo/v1/hello" "Authorization: Bearer $KEY"

declare -A URL=(
  [direct]="http://127.0.0.1:$UP_PORT/hello"
  [nginx]="http://127.0.0.1:$NGINX_PORT/demo/v1/hello"
  [peage]="http://127.0.0.1:$GW_PORT/demo/v1/hello"
)
auth_for() { [ "$1" = peage ] && echo "Authorization: Bearer $KEY" || echo "X-Bench: 1"; }
run() { # name mode -> $WORK/name-mode.json
  local name=$1 mode=$2 out="$WORK/$1-$2.json"
  if [ "$mode" = max ]; then
    oha --no-tui --wait-ongoing-requests-after-deadline --output-format json -z "$DURATION" -c "$CONNECTIONS" -H "$(auth_for "$name")" "${URL[$name]}" > "$out"
  else
    oha --no-tui --wait-ongoing-requests-after-deadline --output-format json -z "$DURATION" -c "$RATE_CONNECTIONS" -q "$RATE" --latency-correction \
      -H "$(auth_for "$name")" "${URL[$name]}" > "$out"
  fi
}
for name in direct nginx peage; do
  echo "== $name: warm-up, saturation, fixed $RATE req/s"
  oha --no-tui --wait-ongoing-requests-after-deadline --output-format json -z 2s -c "$CONNECTIONS" -H "$(auth_for "$name")" "${URL[$name]}" > "$WORK/$name-warmup.json"
  if [ "$name" = peage ] && [ "${PERF:-0}" = 1 ]; then
    # Where the gateway's time goes at saturation (PERF=1): a call-graph profile of peage.
    perf record -q -F 499 -g -p "$PEAGE_PID" -o "$WORK/perf.data" -- sleep 5 2>/dev/null &
    PERF_PID=$!
  fi
  run "$name" max
  run "$name" rate
done
if [ -n "${PERF_PID:-}" ]; then
  wait "$PERF_PID" || true
  echo "== where peage's time goes at saturation (perf, inclusive, user-space frames)"
  perf report -i "$WORK/perf.data" --children --sort symbol --stdio -g none 2>/dev/null |
    grep -v '^#' | grep '%' | grep -v '\[k\]' | head -40 | cut -c1-140 || true
fi

# Every call Péage answered must be metered, once: wait until usage stops moving.
metered() {
  curl -fsS -H "Authorization: Bearer $TOKEN" "$CTL/v1/partners/$PARTNER/usage" |
    python3 -c 'import json,sys; m=json.load(sys.stdin)["meters"]; print(next(x["quantity"] for x in m if x["meter"]=="calls"))'
}
METERED=$(metered); PREV=""
while [ "$METERED" != "$PREV" ]; do sleep 2; PREV=$METERED; METERED=$(metered); done

python3 - "$WORK" "$RATE" "$DURATION" "$CONNECTIONS" "$METERED" <<'PY'
import json, sys, datetime, os, platform, subprocess
work, rate, duration, conns, metered = sys.argv[1:6]
def load(name, mode):
    with open(f"{work}/{name}-{mode}.json") as f:
        return json.load(f)
def pct(d, p):
    return d["latencyPercentiles"][p] * 1e3  # ms
def ok(d):
    codes = d.get("statusCodeDistribution", {})
    return sum(v for k, v in codes.items() if k.startswith("2")), sum(codes.values())
rows, answered = [], 0
direct_rate = load("direct", "rate")
for name, label in [("direct", "direct to upstream"), ("nginx", "nginx proxy_pass"), ("peage", "**Péage gateway** (auth + rate limit + quota + metering)")]:
    mx, rt = load(name, "max"), load(name, "rate")
    good, total = ok(mx)
    good_r, total_r = ok(rt)
    if name == "peage":
        # The readiness probe, the warm-up, saturation and fixed-rate runs.
        answered = 1 + ok(load(name, "warmup"))[0] + good + good_r
    added = lambda p: "—" if name == "direct" else f"{pct(rt, p) - pct(direct_rate, p):+.3f}"
    rows.append((label, mx["summary"]["requestsPerSec"], good, total, rt["summary"]["requestsPerSec"],
                 pct(rt, "p50"), pct(rt, "p99"), pct(rt, "p99.9"), added("p50"), added("p99"), added("p99.9"), good_r, total_r))
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
nginx_v = subprocess.run(["/usr/sbin/nginx", "-v"], capture_output=True, text=True).stderr.strip()
oha_v = subprocess.run(["oha", "--version"], capture_output=True, text=True).stdout.strip()
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
out = [f"## Gateway — {now}", "",
       f"Machine: {os.cpu_count()} cores, {cpu}. Upstream: `peage demo-upstream` (`GET /hello`, small JSON). {nginx_v}, `proxy_pass` with upstream keep-alive. Load: {oha_v}, {duration} per measure; saturation with {conns} connections; fixed rate {rate} req/s with latency correction. Everything (load generator, upstream, proxy) shares the machine. Péage runs as `peage up` (embedded), so its event log, aggregator and usage store work in the same process during the test.", "",
       "| target | saturation req/s | 2xx / sent | req/s at fixed rate | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | added p99.9 ms |",
       "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    out.append(f"| {r[0]} | {r[1]:.0f} | {r[2]}/{r[3]} | {r[4]:.0f} | {r[5]:.3f} | {r[6]:.3f} | {r[7]:.3f} | {r[8]} | {r[9]} | {r[10]} |")
nginx_max, peage_max = rows[1][1], rows[2][1]
out += ["", f"Péage / nginx throughput = **{peage_max / nginx_max * 100:.0f} %** (aim ≥ 100 %). Added p99 at {rate} req/s: nginx **{rows[1][9]} ms**, Péage **{rows[2][9]} ms** (aim ≤ 1 ms).",
        f"Metered: usage shows **{metered}** calls for the **{answered}** Péage answered with 2xx (readiness probe and warm-up included){'' if int(metered) == answered else ' — MISMATCH'}.", ""]
text = "\n".join(out)
print(text)
with open("load-tests/RESULTS.md", "a") as f:
    f.write("\n" + text)
PY
