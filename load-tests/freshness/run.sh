#!/usr/bin/env bash
# Freshness under load (issue 16, item 6): how long after its response a call shows in the
# partner's usage and in its quota state, read through billing's API, while the distributed
# pipeline carries 2,000 calls/s.
#
#   load-tests/freshness/run.sh     # DURATION_MIN=5 RATE=2000, and the soak's other knobs
#
# It is the soak (load-tests/soak/run.sh) run for a shorter time: the same roles, the same load
# and the same probe (one call every 500 ms from a partner of its own; after each 200, billing's
# usage and quota routes are read every 20 ms until they count it, up to 120 s). The soak's
# table, freshness rows included, is appended to load-tests/RESULTS.md; this prints the
# freshness rows again at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DURATION_MIN=${DURATION_MIN:-5}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
load-tests/soak/run.sh | tee "$out"
echo "== freshness"
grep -E '^\| (freshness|most events|broker CPU)' "$out"
