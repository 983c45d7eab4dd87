#!/usr/bin/env bash
# Gateway benchmark, one run, four targets on the same upstream:
#   direct   the upstream itself (`peage demo-upstream`, GET /hello, small JSON)
#   nginx    Debian's nginx, `proxy_pass` with upstream keep-alive, as many workers as Péage
#            has serving threads
#   role     the distributed `peage gateway` role (auth, rate limit, hard quota, metering),
#            spooling every call event to the real Kafka-wire broker (tansu), with `peage
#            billing` for keys and quota leases (PostgreSQL + ClickHouse)
#   up       `peage up` (embedded: its event log, aggregator and billing in the same process)
#   nginx-tls, role-tls   the same nginx and the same role terminating TLS (one certificate of
#            a private CA, ECDSA P-256; HTTP/1.1 keep-alive, so the rows compare record
#            encryption and the proxies, not handshakes)
# Load from oha. Prints a table, appends it to load-tests/RESULTS.md, ends with a RESULT line.
#
#   load-tests/gateway/run.sh     # DURATION=10s RATE=5000 CONNECTIONS=64 THREADS=$(nproc)
#                                 # PERF=role|up profiles that target at saturation
#                                 # PEAGE_BIN=path runs that binary instead of building
#
# Per target: throughput at saturation (CONNECTIONS connections, as fast as they go); CPU µs per
# call of the proxy's processes (utime+stime over the saturation run ÷ calls answered; nginx:
# master and workers); latency at a fixed RATE (p50/p99/p99.9, coordinated-omission corrected),
# "added" = the target's percentile minus the direct call's in the same run; and for Péage,
# metered = answered (the role's events counted in ClickHouse after `peage aggregator` ingests
# them, `peage up`'s from its usage API).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

DURATION=${DURATION:-10s}
RATE=${RATE:-5000}
CONNECTIONS=${CONNECTIONS:-64}
RATE_CONNECTIONS=${RATE_CONNECTIONS:-50}
THREADS=${THREADS:-$(nproc)}
UP_PORT=18181 NGINX_PORT=18182 GW_PORT=18183 CTL_PORT=18184 ROLE_PORT=18185 BILLING_PORT=18186
KAFKA_PORT=18187 ROLE_METRICS_PORT=18188 NGINX_TLS_PORT=18189 ROLE_TLS_PORT=18190
ROLE_TLS_METRICS_PORT=18191
TOKEN=bench-admin-token-0123456789

. load-tests/lib.sh
sudo_if() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need oha || { echo "== installing oha (cargo install oha --locked)"; cargo install oha --locked; }
[ -x /usr/sbin/nginx ] || { echo "== installing nginx (apt)"; sudo_if apt-get install -y nginx-light || sudo_if apt-get install -y nginx; }

if [ -n "${PEAGE_BIN:-}" ]; then
  PEAGE=$PEAGE_BIN   # another build, to compare two versions on the same machine state
else
  echo "== building peage (release)"
  cargo build --release -q -p peage
  PEAGE=$ROOT/target/release/peage
fi

echo "== servers for the role (deploy/dev/services.sh start)"
deploy/dev/services.sh start

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT


echo "== upstream: peage demo-upstream on :$UP_PORT"
PEAGE_LOG=warn "$PEAGE" demo-upstream --listen "127.0.0.1:$UP_PORT" &
PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/hello"

echo "== a private CA and the proxies' certificate (localhost, 127.0.0.1)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=Peage bench CA" -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
  -keyout "$WORK/tls.key" -out "$WORK/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$WORK/tls.ext"
openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial \
  -days 2 -extfile "$WORK/tls.ext" -out "$WORK/tls.crt" 2>/dev/null

echo "== nginx proxy_pass on :$NGINX_PORT and over TLS on :$NGINX_TLS_PORT ($THREADS workers)"
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx.conf" <<CONF
worker_processes $THREADS;
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
  server {
    listen 127.0.0.1:$NGINX_TLS_PORT ssl;
    ssl_certificate $WORK/tls.crt;
    ssl_certificate_key $WORK/tls.key;
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
NGINX_PIDS=("$(cat "$WORK/nginx.pid")")
for p in $(pgrep -P "${NGINX_PIDS[0]}"); do NGINX_PIDS+=("$p"); done

bench_catalog "$WORK/catalog.toml" "$UP_PORT" bench

# The role's own broker on a fresh data directory: the shared dev broker's SQLite file grows
# with every test run and would make the numbers depend on the machine's history.
echo "== tansu for the role on :$KAFKA_PORT (fresh, $WORK/kafka)"
start_tansu "$WORK/kafka" "$KAFKA_PORT" "sqlite://tansu.db"
KAFKA_PID=$TANSU_PID
PIDS+=($KAFKA_PID)

echo "== Péage role: peage billing on :$BILLING_PORT, peage gateway on :$ROLE_PORT ($THREADS threads, spool → tansu)"
NAME="bench_$(date +%s)_$$"
role_config "$NAME" gw-bench "threads = $THREADS" "[metrics]
listen = \"127.0.0.1:$ROLE_METRICS_PORT\""
export PEAGE_CONFIG="$WORK/peage.toml"
PEAGE_LOG=warn "$PEAGE" migrate >/dev/null
PEAGE_LOG=warn PEAGE_METRICS__LISTEN=127.0.0.1:0 "$PEAGE" billing >/dev/null &
PIDS+=($!)
OTHERS=("$KAFKA_PID" "$!")
wait_http "http://127.0.0.1:$BILLING_PORT/healthz"
read -r ROLE_PARTNER ROLE_KEY < <(new_partner "http://127.0.0.1:$BILLING_PORT" bench)
# The gateway calls billing with its own scoped token, as in production.
GATEWAY_TOKEN=$(PEAGE_LOG=warn "$PEAGE" service-token create --scope gateway --name gw-bench --config "$WORK/peage.toml" 2>/dev/null)
PEAGE_LOG=warn PEAGE_GATEWAY__BILLING_TOKEN="$GATEWAY_TOKEN" "$PEAGE" gateway >/dev/null &
ROLE_PID=$!
PIDS+=($ROLE_PID)
wait_http "http://127.0.0.1:$ROLE_PORT/demo/v1/hello" "Authorization: Bearer $ROLE_KEY"

echo "== the same role over TLS on :$ROLE_TLS_PORT (its own spool, same billing and broker)"
PEAGE_LOG=warn PEAGE_GATEWAY__BILLING_TOKEN="$GATEWAY_TOKEN" PEAGE_GATEWAY__LISTEN="127.0.0.1:$ROLE_TLS_PORT" \
  PEAGE_GATEWAY__ID=gw-bench-tls PEAGE_SPOOL__DIR="$WORK/spool-tls" PEAGE_METRICS__LISTEN="127.0.0.1:$ROLE_TLS_METRICS_PORT" \
  PEAGE_GATEWAY__TLS_CERT_FILE="$WORK/tls.crt" PEAGE_GATEWAY__TLS_KEY_FILE="$WORK/tls.key" "$PEAGE" gateway >/dev/null &
ROLE_TLS_PID=$!
PIDS+=($ROLE_TLS_PID)
for _ in $(seq 1 100); do
  curl -fsS --cacert "$WORK/ca.crt" -o /dev/null -H "Authorization: Bearer $ROLE_KEY" "https://127.0.0.1:$ROLE_TLS_PORT/demo/v1/hello" && break
  sleep 0.2
done

echo "== Péage up on :$GW_PORT ($THREADS threads)"
# peage up would read the roles' configuration (PEAGE_CONFIG) too: it runs on its own flags.
PEAGE_LOG=warn PEAGE_GATEWAY__THREADS=$THREADS env -u PEAGE_CONFIG "$PEAGE" up --data-dir "$WORK/data" --catalog "$WORK/catalog.toml" \
  --gateway-listen "127.0.0.1:$GW_PORT" --control-listen "127.0.0.1:$CTL_PORT" \
  --admin-token "$TOKEN" >/dev/null &
UP_PID=$!
PIDS+=($UP_PID)
wait_http "http://127.0.0.1:$CTL_PORT/healthz"
read -r UP_PARTNER UP_KEY < <(new_partner "http://127.0.0.1:$CTL_PORT" bench)
wait_http "http://127.0.0.1:$GW_PORT/demo/v1/hello" "Authorization: Bearer $UP_KEY"

declare -A URL=(
  [direct]="http://127.0.0.1:$UP_PORT/hello"
  [nginx]="http://127.0.0.1:$NGINX_PORT/demo/v1/hello"
  [role]="http://127.0.0.1:$ROLE_PORT/demo/v1/hello"
  [up]="http://127.0.0.1:$GW_PORT/demo/v1/hello"
  [nginx-tls]="https://127.0.0.1:$NGINX_TLS_PORT/demo/v1/hello"
  [role-tls]="https://127.0.0.1:$ROLE_TLS_PORT/demo/v1/hello"
)
auth_for() {
  case "$1" in
    role|role-tls) echo "Authorization: Bearer $ROLE_KEY" ;;
    up) echo "Authorization: Bearer $UP_KEY" ;;
    *) echo "X-Bench: 1" ;;
  esac
}
pids_of() {
  case "$1" in
    nginx|nginx-tls) echo "${NGINX_PIDS[@]}" ;;
    role) echo "$ROLE_PID" ;;
    role-tls) echo "$ROLE_TLS_PID" ;;
    up) echo "$UP_PID" ;;
    *) echo "" ;;
  esac
}
spool_pending() { # metrics port
  curl -fsS "http://127.0.0.1:$1/metrics" | awk '$1 == "peage_spool_pending_events" { print $2 }'
}
TARGETS=(direct nginx role up nginx-tls role-tls)
# oha verifies the proxies' certificate against the bench CA (for the https targets).
oha() { command oha --cacert "$WORK/ca.crt" "$@"; }
for name in "${TARGETS[@]}"; do
  echo "== $name: warm-up, saturation, fixed $RATE req/s"
  oha --no-tui --wait-ongoing-requests-after-deadline --output-format json -z 2s -c "$CONNECTIONS" -H "$(auth_for "$name")" "${URL[$name]}" > "$WORK/$name-warmup.json"
  read -ra procs <<< "$(pids_of "$name")"
  if [ "${PERF:-}" = "$name" ] && [ ${#procs[@]} -gt 0 ]; then
    perf record -q -F 999 -g -p "$(IFS=,; echo "${procs[*]}")" -o "$WORK/perf.data" -- sleep 5 2>/dev/null &
    PERF_PID=$!
  fi
  before=0; [ ${#procs[@]} -gt 0 ] && before=$(cpu_ticks "${procs[@]}")
  others_before=$(cpu_ticks "${OTHERS[@]}")
  oha --no-tui --wait-ongoing-requests-after-deadline --output-format json -z "$DURATION" -c "$CONNECTIONS" -H "$(auth_for "$name")" "${URL[$name]}" > "$WORK/$name-max.json"
  after=0; [ ${#procs[@]} -gt 0 ] && after=$(cpu_ticks "${procs[@]}")
  echo $((after - before)) > "$WORK/$name-cpu-ticks"
  # What the role's neighbours on this machine (broker, billing) spent meanwhile: not the
  # gateway's CPU, but taken from the same cores.
  echo $(( $(cpu_ticks "${OTHERS[@]}") - others_before )) > "$WORK/$name-others-ticks"
  oha --no-tui --wait-ongoing-requests-after-deadline --output-format json -z "$DURATION" -c "$RATE_CONNECTIONS" -q "$RATE" --latency-correction \
    -H "$(auth_for "$name")" "${URL[$name]}" > "$WORK/$name-rate.json"
  if [ "$name" = role ] || [ "$name" = role-tls ]; then
    # The next target is measured on a quiet machine: let the spool catch up with the broker.
    port=$ROLE_METRICS_PORT; [ "$name" = role-tls ] && port=$ROLE_TLS_METRICS_PORT
    t0=$(date +%s)
    while [ "$(spool_pending "$port")" != 0 ] && [ $(( $(date +%s) - t0 )) -lt 300 ]; do sleep 1; done
    echo "   the role's spool drained $(( $(date +%s) - t0 )) s after its last call"
  fi
done
if [ -n "${PERF_PID:-}" ]; then
  wait "$PERF_PID" || true
  echo "== where $PERF's time goes at saturation (perf, self, by symbol)"
  perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null |
    grep -v '^#' | grep '%' | head -50 | cut -c1-150 || true
fi

# Every call answered must be metered, once: wait until the count reaches what was answered,
# or has not moved for 60 s (a consumer joining its group can take a while to start).
answered_by() { # target -> 2xx answers over its runs (and the readiness probe)
  python3 - "$WORK" "$1" <<'PY'
import json, sys
work, name = sys.argv[1], sys.argv[2]
print(1 + sum(json.load(open(f"{work}/{name}-{run}.json"))["statusCodeDistribution"].get("200", 0)
              for run in ["warmup", "max", "rate"]))
PY
}
settle() { # expected command… -> the count it settled at
  local expected=$1 now still=0
  shift
  now=$("$@" || echo 0)
  while [ "${now%.*}" -lt "$expected" ] && [ "$still" -lt 20 ]; do
    sleep 3
    local prev=$now
    now=$("$@" || echo 0)
    if [ "$now" = "$prev" ]; then still=$((still + 1)); else still=0; fi
  done
  echo "$now"
}
up_metered() {
  curl -fsS -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$CTL_PORT/v1/partners/$UP_PARTNER/usage" |
    python3 -c 'import json,sys; m=json.load(sys.stdin)["meters"]; print(next(x["quantity"] for x in m if x["meter"]=="calls"))'
}
role_metered() {
  curl -fsS "http://127.0.0.1:${PEAGE_CLICKHOUSE_PORT:-8123}/" \
    --data-binary "SELECT count() FROM $NAME.call_events WHERE partner_id = '$ROLE_PARTNER' AND status BETWEEN 200 AND 299"
}
echo "== metering: peage aggregator ingests the role's events into ClickHouse"
PEAGE_LOG=info PEAGE_METRICS__LISTEN=127.0.0.1:0 "$PEAGE" aggregator >"$WORK/aggregator.log" 2>&1 &
PIDS+=($!)
# Both role instances call as the same partner: their events add up in ClickHouse.
ROLE_METERED=$(settle "$(( $(answered_by role) + $(answered_by role-tls) ))" role_metered)
UP_METERED=$(settle "$(answered_by up)" up_metered)
if [ "${ROLE_METERED%.*}" -ne "$(( $(answered_by role) + $(answered_by role-tls) ))" ]; then
  echo "== the role's events did not all reach ClickHouse; the aggregator's log ends:"
  tail -20 "$WORK/aggregator.log" | cut -c1-300
fi

python3 - "$WORK" "$RATE" "$DURATION" "$CONNECTIONS" "$THREADS" "$ROLE_METERED" "$UP_METERED" "$(getconf CLK_TCK)" <<'PY'
import json, sys, datetime, os, subprocess
work, rate, duration, conns, threads, role_metered, up_metered, hz = sys.argv[1:9]
hz = int(hz)
def load(name, mode):
    with open(f"{work}/{name}-{mode}.json") as f:
        return json.load(f)
def pct(d, p):
    return d["latencyPercentiles"][p] * 1e3  # ms
def ok(d):
    codes = d.get("statusCodeDistribution", {})
    return sum(v for k, v in codes.items() if k.startswith("2")), sum(codes.values())
labels = {
    "direct": "direct to upstream",
    "nginx": f"nginx proxy_pass ({threads} workers)",
    "role": f"**`peage gateway` role** ({threads} threads; spool → Kafka wire)",
    "up": f"**`peage up`** ({threads} threads; embedded)",
    "nginx-tls": f"nginx proxy_pass over TLS ({threads} workers)",
    "role-tls": f"**`peage gateway` role over TLS** ({threads} threads; spool → Kafka wire)",
}
direct_rate = load("direct", "rate")
rows, res = [], {}
for name in ["direct", "nginx", "role", "up", "nginx-tls", "role-tls"]:
    mx, rt = load(name, "max"), load(name, "rate")
    good, total = ok(mx)
    good_r, total_r = ok(rt)
    ticks = int(open(f"{work}/{name}-cpu-ticks").read())
    cpu_us = ticks / hz * 1e6 / good if (name != "direct" and good) else None
    answered = 1 + ok(load(name, "warmup"))[0] + good + good_r  # the readiness probe too
    added = {p: (pct(rt, p) - pct(direct_rate, p)) for p in ["p50", "p99", "p99.9"]}
    res[name] = dict(rps=mx["summary"]["requestsPerSec"], cpu=cpu_us, added=added, answered=answered)
    fmt_added = lambda p: "—" if name == "direct" else f"{added[p]:+.3f}"
    rows.append(f"| {labels[name]} | {mx['summary']['requestsPerSec']:.0f} | {good}/{total} | "
                + ("—" if cpu_us is None else f"{cpu_us:.1f}") + f" | {rt['summary']['requestsPerSec']:.0f} | "
                f"{pct(rt, 'p50'):.3f} | {pct(rt, 'p99'):.3f} | {pct(rt, 'p99.9'):.3f} | "
                f"{fmt_added('p50')} | {fmt_added('p99')} | {fmt_added('p99.9')} |")
others_us = int(open(f"{work}/role-others-ticks").read()) / hz * 1e6 / max(ok(load("role", "max"))[0], 1)
metered = {"role": int(float(role_metered)), "up": int(float(up_metered))}
res["role"]["answered"] += res["role-tls"]["answered"]  # one partner for both role instances
eq = all(metered[n] == res[n]["answered"] for n in ["role", "up"])
n = res["nginx"]
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
nginx_v = subprocess.run(["/usr/sbin/nginx", "-v"], capture_output=True, text=True).stderr.strip()
oha_v = subprocess.run(["oha", "--version"], capture_output=True, text=True).stdout.strip()
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
binary = os.environ.get("PEAGE_BIN")
out = [f"## Gateway — {now}" + (f" (binary {binary})" if binary else ""), "",
       f"Machine: {os.cpu_count()} cores, {cpu}. Upstream: `peage demo-upstream` (`GET /hello`, small JSON). {nginx_v}, `proxy_pass` with upstream keep-alive. Load: {oha_v}, {duration} per measure; saturation with {conns} connections; fixed rate {rate} req/s with latency correction. Load generator, upstream, proxies, broker and databases share the machine. Both Péage targets run auth (API key), rate limit, a hard quota and metering; the role spools every event to tansu (durable SQLite engine) with `peage billing` beside it; `peage up` runs its event log, aggregator and billing in the same process.", "",
       "| target | saturation req/s | 2xx / sent | CPU µs per call | req/s at fixed rate | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | added p99.9 ms |",
       "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"] + rows
ratio = lambda a, b: a / b if b else 0.0
role_vs = ratio(res["role"]["rps"], n["rps"])
up_vs = ratio(res["up"]["rps"], n["rps"])
cpu_vs = ratio(res["role"]["cpu"] or 0, n["cpu"] or 0)
nt = res["nginx-tls"]
tls_vs = ratio(res["role-tls"]["rps"], nt["rps"])
tls_cpu_vs = ratio(res["role-tls"]["cpu"] or 0, nt["cpu"] or 0)
out += ["",
        f"Role / nginx throughput = **{role_vs * 100:.0f} %** (aim ≥ 100 %), CPU per call **{cpu_vs:.2f}×** nginx's (aim ≤ 1.5×); `peage up` / nginx = **{up_vs * 100:.0f} %** (aim ≥ 75 %). Added p99 at {rate} req/s: nginx **{n['added']['p99']:+.3f} ms**, role **{res['role']['added']['p99']:+.3f} ms**, `peage up` **{res['up']['added']['p99']:+.3f} ms** (aim: no worse than nginx's).",
        f"Over TLS (same certificate, HTTP/1.1 keep-alive): role / nginx throughput = **{tls_vs * 100:.0f} %** (aim ≥ 100 %), CPU per call **{tls_cpu_vs:.2f}×** nginx's (aim ≤ 1.5×); added p99 at {rate} req/s: nginx **{nt['added']['p99']:+.3f} ms**, role **{res['role-tls']['added']['p99']:+.3f} ms**.",
        f"While the role ran at saturation, its broker and `peage billing` on the same cores used **{others_us:.1f} µs** of CPU per call besides (not counted above).",
        f"Metered = answered: role (both instances) **{metered['role']}** of **{res['role']['answered']}**, `peage up` **{metered['up']}** of **{res['up']['answered']}** (readiness probe, warm-up, saturation and fixed-rate runs){'' if eq else ' — MISMATCH'}.", ""]
text = "\n".join(out)
print(text)
with open("load-tests/RESULTS.md", "a") as f:
    f.write("\n" + text)
print(f"RESULT role_vs_nginx={role_vs:.2f} up_vs_nginx={up_vs:.2f} role_cpu_per_call_vs_nginx={cpu_vs:.2f} "
      f"role_added_p99_ms={res['role']['added']['p99']:.3f} nginx_added_p99_ms={n['added']['p99']:.3f} "
      f"tls_role_vs_nginx={tls_vs:.2f} tls_role_cpu_per_call_vs_nginx={tls_cpu_vs:.2f} "
      f"metered_equals_answered={'true' if eq else 'false'}")
PY
