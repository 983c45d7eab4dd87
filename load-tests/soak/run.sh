#!/usr/bin/env bash
# Soak of the distributed pipeline (issue 16, item 5), release build:
#   peage gateway → spool → tansu → peage aggregator → ClickHouse, keys and quotas from
#   peage billing (PostgreSQL + ClickHouse).
#
#   load-tests/soak/run.sh     # DURATION_MIN=20 RATE=2000 SEGMENT_S=60 BROKER=memory|sqlite
#
# Load from oha at a fixed RATE, in segments of SEGMENT_S seconds (latency corrected for
# coordinated omission), for DURATION_MIN minutes. After every segment: resident memory and
# open files of every Péage role (and of the broker, for the record). Meanwhile a probe partner
# makes one call every 500 ms and times how long after its response the call shows in its usage
# and in its quota state (freshness, issue 16 item 6), through billing's API.
# At the end: metered (rows in ClickHouse) = answered (oha's 200s), growth per hour of memory
# and open files (least squares over the samples after the first two segments), p99 per segment.
# Prints a table, appends it to load-tests/RESULTS.md.
#
# BROKER=memory (default) runs tansu on its in-memory engine: the soak watches Péage's roles,
# and tansu 0.6's SQLite engine slows down as its file grows past a few hundred MB.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

DURATION_MIN=${DURATION_MIN:-20}
RATE=${RATE:-2000}
SEGMENT_S=${SEGMENT_S:-60}
BROKER=${BROKER:-memory}
CONNECTIONS=${CONNECTIONS:-50}
ROLE_LOG=${ROLE_LOG:-warn}  # the roles' PEAGE_LOG; their logs are kept in $KEEP
UP_PORT=18281 ROLE_PORT=18285 BILLING_PORT=18286 KAFKA_PORT=18287
GW_METRICS=18288 AGG_METRICS=18289 BILLING_METRICS=18290
TOKEN=soak-admin-token-0123456789

. load-tests/lib.sh
need oha || { echo "== installing oha (cargo install oha --locked)"; cargo install oha --locked; }

echo "== building peage (release)"
cargo build --release -q -p peage
PEAGE=$ROOT/target/release/peage
deploy/dev/services.sh start >/dev/null

WORK=$(mktemp -d)
KEEP=${KEEP:-$ROOT/target/soak-last}
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # The logs and the probe's record stay for a look afterwards.
  rm -rf "$KEEP" && mkdir -p "$KEEP" && cp "$WORK"/*.log "$WORK"/freshness.txt "$WORK"/samples.txt "$WORK"/pipeline.txt "$KEEP"/ 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== upstream: peage demo-upstream on :$UP_PORT"
PEAGE_LOG=warn "$PEAGE" demo-upstream --listen "127.0.0.1:$UP_PORT" &
PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/hello"

bench_catalog "$WORK/catalog.toml" "$UP_PORT" soak

echo "== tansu ($BROKER engine) on :$KAFKA_PORT"
case "$BROKER" in
  memory) ENGINE="memory://tansu/" ;;
  sqlite) ENGINE="sqlite://tansu.db" ;;
  *) echo "BROKER must be memory or sqlite" >&2; exit 2 ;;
esac
start_tansu "$WORK/kafka" "$KAFKA_PORT" "$ENGINE"
KAFKA_PID=$TANSU_PID
PIDS+=($KAFKA_PID)

NAME="soak_$(date +%s)_$$"
role_config "$NAME" gw-soak
export PEAGE_CONFIG="$WORK/peage.toml"
PEAGE_LOG=warn "$PEAGE" migrate >/dev/null
PEAGE_LOG=$ROLE_LOG PEAGE_METRICS__LISTEN=127.0.0.1:$BILLING_METRICS "$PEAGE" billing >"$WORK/billing.log" 2>&1 &
BILLING_PID=$!
PIDS+=($BILLING_PID)
wait_http "http://127.0.0.1:$BILLING_PORT/healthz"
read -r PARTNER KEY < <(new_partner "http://127.0.0.1:$BILLING_PORT" soak Soak)
read -r PROBE PROBE_KEY < <(new_partner "http://127.0.0.1:$BILLING_PORT" soak Probe)
GATEWAY_TOKEN=$(PEAGE_LOG=warn "$PEAGE" service-token create --scope gateway --name gw-soak --config "$WORK/peage.toml" 2>/dev/null)
PEAGE_LOG=$ROLE_LOG PEAGE_METRICS__LISTEN=127.0.0.1:$GW_METRICS PEAGE_GATEWAY__BILLING_TOKEN="$GATEWAY_TOKEN" \
  "$PEAGE" gateway >"$WORK/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)
PEAGE_LOG=$ROLE_LOG PEAGE_METRICS__LISTEN=127.0.0.1:$AGG_METRICS "$PEAGE" aggregator >"$WORK/aggregator.log" 2>&1 &
AGG_PID=$!
PIDS+=($AGG_PID)
wait_http "http://127.0.0.1:$ROLE_PORT/demo/v1/hello" "Authorization: Bearer $KEY"

# Freshness probe: one call every 500 ms from the probe partner; after each 200, how long until
# billing's usage and quota state count it (waiting up to 120 s). One line per call:
# usage_ms quota_ms unix_time_of_the_response.
python3 - "$ROLE_PORT" "$BILLING_PORT" "$PROBE" "$PROBE_KEY" "$TOKEN" "$WORK/stop-probe" > "$WORK/freshness.txt" <<'PY' &
import json, os, sys, time, urllib.request
gw, billing, partner, key, token, stop = sys.argv[1:7]
def get(url, auth):
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + auth})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.read()
def usage():
    _, body = get(f"http://127.0.0.1:{billing}/v1/partners/{partner}/usage", token)
    return int(float(next(m["quantity"] for m in json.loads(body)["meters"] if m["meter"] == "calls")))
def quota():
    _, body = get(f"http://127.0.0.1:{billing}/v1/partners/{partner}/quotas", token)
    q = json.loads(body)
    items = q["quotas"] if isinstance(q, dict) and "quotas" in q else q
    return int(float(next(i["used"] for i in items if i["meter"] == "calls")))
sent = 1  # the readiness call below
get(f"http://127.0.0.1:{gw}/demo/v1/hello", key)
while not os.path.exists(stop):
    status, _ = get(f"http://127.0.0.1:{gw}/demo/v1/hello", key)
    answered = time.monotonic()
    if status != 200:
        continue
    sent += 1
    seen = {}
    at = time.time()
    while len(seen) < 2 and time.monotonic() - answered < 120:
        if "usage" not in seen and usage() >= sent:
            seen["usage"] = time.monotonic() - answered
        if "quota" not in seen and quota() >= sent:
            seen["quota"] = time.monotonic() - answered
        time.sleep(0.02)
    print(f"{seen.get('usage', 120) * 1000:.0f} {seen.get('quota', 120) * 1000:.0f} {at:.3f}", flush=True)
    time.sleep(max(0, 0.5 - (time.monotonic() - answered)))
PY
PROBE_PID=$!
PIDS+=($PROBE_PID)

# Where events wait: every 5 s, the gateway's spool (spooled, forwarded to the broker, pending)
# and the aggregator's inserted count, with the broker's CPU ticks. One line per sample:
# unix_time spooled forwarded pending inserted broker_ticks.
metric() { awk -v m="$1" '$1 == m {print $2; found=1} END {if (!found) print 0}'; }
(
  while [ ! -e "$WORK/stop-probe" ]; do
    gw=$(curl -fsS "http://127.0.0.1:$GW_METRICS/metrics" 2>/dev/null || true)
    agg=$(curl -fsS "http://127.0.0.1:$AGG_METRICS/metrics" 2>/dev/null || true)
    echo "$(date +%s.%N | cut -c1-14) $(metric peage_events_spooled_total <<<"$gw") \
$(metric peage_spool_forwarded_events_total <<<"$gw") $(metric peage_spool_pending_events <<<"$gw") \
$(metric peage_aggregator_inserted_events_total <<<"$agg") $(cpu_ticks "$KAFKA_PID")"
    sleep 5
  done
) > "$WORK/pipeline.txt" &
PIDS+=($!)

sample() { # segment -> one line per process: segment name rss_kib fds
  for pair in "gateway:$GW_PID" "aggregator:$AGG_PID" "billing:$BILLING_PID" "broker:$KAFKA_PID"; do
    local name=${pair%%:*} pid=${pair#*:}
    local rss fds
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    echo "$1 $name $rss $fds"
  done
}
SEGMENTS=$(( DURATION_MIN * 60 / SEGMENT_S ))
echo "== soak: $RATE calls/s for $DURATION_MIN min ($SEGMENTS segments of $SEGMENT_S s)"
sample 0 > "$WORK/samples.txt"
for i in $(seq 1 "$SEGMENTS"); do
  oha --no-tui --wait-ongoing-requests-after-deadline --output-format json -z "${SEGMENT_S}s" \
    -c "$CONNECTIONS" -q "$RATE" --latency-correction -H "Authorization: Bearer $KEY" \
    "http://127.0.0.1:$ROLE_PORT/demo/v1/hello" > "$WORK/seg-$i.json"
  sample "$i" >> "$WORK/samples.txt"
  python3 - "$WORK/seg-$i.json" "$i" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
rps, p99 = j["summary"]["requestsPerSec"], j["latencyPercentiles"]["p99"] * 1000
print(f"   segment {sys.argv[2]}: {rps:.0f} calls/s, p99 {p99:.2f} ms, statuses {j['statusCodeDistribution']}")
PY
done
LAST_CALL=$(date +%s)
touch "$WORK/stop-probe"

echo "== waiting for metered = answered"
ANSWERED=$(python3 - "$WORK" "$SEGMENTS" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
print(1 + sum(json.load(open(f"{work}/seg-{i}.json"))["statusCodeDistribution"].get("200", 0) for i in range(1, n + 1)))
PY
)
metered() {
  curl -fsS "http://127.0.0.1:${PEAGE_CLICKHOUSE_PORT:-8123}/" \
    --data-binary "SELECT count() FROM $NAME.call_events WHERE partner_id = '$PARTNER' AND status BETWEEN 200 AND 299"
}
still=0; now=$(metered)
while [ "$now" -lt "$ANSWERED" ] && [ "$still" -lt 120 ]; do  # give up after 60 s without progress
  sleep 0.5; prev=$now; now=$(metered)
  if [ "$now" = "$prev" ]; then still=$((still + 1)); else still=0; fi
done
echo "   metered $now of $ANSWERED answered, $(( $(date +%s) - LAST_CALL )) s after the last call"
wait "$PROBE_PID" 2>/dev/null || true
DUPLICATES=$(curl -fsS "http://127.0.0.1:${PEAGE_CLICKHOUSE_PORT:-8123}/" \
  --data-binary "SELECT count() - uniqExact(id) FROM $NAME.call_events")

python3 - "$WORK" "$SEGMENTS" "$SEGMENT_S" "$RATE" "$DURATION_MIN" "$ANSWERED" "$now" "$DUPLICATES" "$BROKER" <<'PY'
import datetime, json, os, statistics, sys
work, n, seg_s, rate, minutes, answered, metered, dups, broker = sys.argv[1:10]
n, seg_s = int(n), int(seg_s)
samples = {}
for line in open(f"{work}/samples.txt"):
    seg, name, rss, fds = line.split()
    samples.setdefault(name, []).append((int(seg) * seg_s / 3600, int(rss) / 1024, int(fds)))
def slope(points):
    # least squares, per hour, over the samples after the first two segments (warm-up)
    pts = [p for p in points if p[0] * 3600 / seg_s >= 2] or points
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0
segs = [json.load(open(f"{work}/seg-{i}.json")) for i in range(1, n + 1)]
p99 = [s["latencyPercentiles"]["p99"] * 1000 for s in segs]
p50 = [s["latencyPercentiles"]["p50"] * 1000 for s in segs]
rps = [s["summary"]["requestsPerSec"] for s in segs]
fresh = [tuple(map(int, l.split()[:2])) for l in open(f"{work}/freshness.txt") if l.strip()]
late = sum(1 for f in fresh if max(f) >= 30000)
pipe = [list(map(float, l.split())) for l in open(f"{work}/pipeline.txt") if len(l.split()) == 6]
backlog = max((f - i for _, _, f, _, i, _ in pipe), default=0)  # forwarded, not yet inserted
pending = max((p for _, _, _, p, _, _ in pipe), default=0)       # spooled, not yet forwarded
def broker_share(a, b):  # the broker's CPU, % of one core, between two samples
    return (b[5] - a[5]) / os.sysconf("SC_CLK_TCK") / (b[0] - a[0]) * 100 if b[0] > a[0] else 0.0
third = max(1, len(pipe) // 3)
broker_first = broker_share(pipe[0], pipe[third]) if len(pipe) > third else 0.0
broker_last = broker_share(pipe[-third - 1], pipe[-1]) if len(pipe) > third else 0.0
logs = {}
for role in ["gateway", "aggregator", "billing"]:
    text = open(f"{work}/{role}.log", errors="replace").readlines()
    lines = [l for l in text if '"ERROR"' in l or " ERROR " in l]
    warns = sum(1 for l in text if '"WARN"' in l or " WARN " in l)
    logs[role] = (len(lines), warns, [l.strip()[:300] for l in lines[-3:]])
def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))] if v else float("nan")
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
out = [f"## Soak — {now}", "",
       f"Machine: {os.cpu_count()} cores. The distributed pipeline, release build: `peage gateway` (spool → tansu 0.6, {broker} engine) → `peage aggregator` → ClickHouse 18.16; `peage billing` on PostgreSQL 15 for keys and quota leases; upstream `peage demo-upstream`. Load: oha at {rate} calls/s fixed rate, {minutes} min in {n} segments of {seg_s} s, {os.environ.get('CONNECTIONS', '50')} connections, latency corrected for coordinated omission. `load-tests/soak/run.sh`.", "",
       "| role | RSS first → last (MiB) | RSS growth (MiB/h) | open files first → last | open files growth (/h) |",
       "|---|---:|---:|---:|---:|"]
for name in ["gateway", "aggregator", "billing", "broker"]:
    pts = samples[name]
    out.append(f"| {name}{' (tansu, not Péage)' if name == 'broker' else ''} | {pts[0][1]:.0f} → {pts[-1][1]:.0f} | {slope([(x, y) for x, y, _ in pts]):+.1f} | {pts[0][2]} → {pts[-1][2]} | {slope([(x, f) for x, _, f in pts]):+.1f} |")
first, last = statistics.median(p99[: min(5, n)]), statistics.median(p99[-min(5, n):])
out += ["",
        f"| measure | value |", "|---|---:|",
        f"| calls/s per segment (min / median / max) | {min(rps):.0f} / {statistics.median(rps):.0f} / {max(rps):.0f} |",
        f"| p50 per segment, ms (min / median / max) | {min(p50):.2f} / {statistics.median(p50):.2f} / {max(p50):.2f} |",
        f"| p99 per segment, ms (min / median / max) | {min(p99):.2f} / {statistics.median(p99):.2f} / {max(p99):.2f} |",
        f"| p99, median of the last 5 segments ÷ the first 5 | {last / first:.2f} |",
        f"| answered (200) | {answered} |",
        f"| **metered** (rows in ClickHouse) | **{metered}** |",
        f"| duplicated rows | {dups} |",
        f"| freshness: call → usage, p50 / p99 / max (ms, {len(fresh)} probes) | {pct([f[0] for f in fresh], .5)} / {pct([f[0] for f in fresh], .99)} / {max((f[0] for f in fresh), default=0)} |",
        f"| freshness: call → quota state, p50 / p99 / max (ms) | {pct([f[1] for f in fresh], .5)} / {pct([f[1] for f in fresh], .99)} / {max((f[1] for f in fresh), default=0)} |",
        f"| freshness probes not visible within 30 s (of at most 120 s) | {late} |",
        f"| most events in the gateway's spool, not yet at the broker (5 s samples) | {pending:.0f} |",
        f"| most events at the broker, not yet in ClickHouse (5 s samples) | {backlog:.0f} |",
        f"| broker CPU, % of a core, first third → last third | {broker_first:.0f} → {broker_last:.0f} |",
        "", "p99 per segment (ms): " + ", ".join(f"{v:.1f}" for v in p99), ""]
for name in ["gateway", "aggregator", "billing", "broker"]:
    out.append(f"RSS of {name} per segment (MiB): " + ", ".join(f"{y:.0f}" for _, y, _ in samples[name]) + "  ")
    out.append(f"open files of {name} per segment: " + ", ".join(str(f) for _, _, f in samples[name]) + "  ")
out.append("")
for role, (n_err, warns, last) in logs.items():
    out.append(f"{role}: {n_err} ERROR lines, {warns} WARN lines" + ("; last: " + " | ".join(f"`{l}`" for l in last) if last else ""))
out.append("")
text = "\n".join(out) + "\n"
print(text)
with open("load-tests/RESULTS.md", "a") as f:
    f.write("\n" + text)
print("RESULT soak metered=" + metered + " answered=" + answered + " dups=" + dups)
PY
