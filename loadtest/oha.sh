#!/usr/bin/env bash
# Load test: ficus (pinned to CPU0, one worker) in front of the bundled minimal upstream
# (examples/bench_upstream.rs), driven by oha (pinned to CPU1). Prints requests/s, p50/p99 and
# ficus's CPU microseconds per request (from /proc/<pid>/stat: user+system ticks).
# Usage: loadtest/oha.sh [duration_s=10] [connections=64] [access_log=false]
# Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-10}; C=${2:-64}; ACCESS_LOG=${3:-false}
command -v oha >/dev/null || { echo "oha is needed: cargo install oha --locked" >&2; exit 1; }
cargo build --release --locked --bin ficus --example bench_upstream >&2
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
sed -e "s/access_log: false/access_log: $ACCESS_LOG/" -e 's/18080/18090/' loadtest/bench.yaml > "$W/ficus.yaml"
pin0=""; pin1=""
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then pin0="taskset -c 0"; pin1="taskset -c 1"; fi
$pin1 target/release/examples/bench_upstream 127.0.0.1:18090 2>/dev/null &
$pin0 target/release/ficus run --config "$W/ficus.yaml" >/dev/null 2>"$W/ficus.log" &
FPID=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:18084/ >/dev/null && break; sleep 0.1; done
curl -sf http://127.0.0.1:18084/ >/dev/null || { echo "ficus did not come up"; cat "$W/ficus.log"; exit 1; }
$pin1 oha -z 2s -c "$C" --no-tui http://127.0.0.1:18084/ >/dev/null   # warm-up
ticks() { awk '{print $14+$15}' "/proc/$FPID/stat"; }
t0=$(ticks)
$pin1 oha -z "${D}s" -c "$C" --no-tui --output-format json http://127.0.0.1:18084/ > "$W/oha.json"
t1=$(ticks)
HZ=$(getconf CLK_TCK)
python3 - "$W/oha.json" "$t0" "$t1" "$HZ" "$ACCESS_LOG" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1])); t0, t1, hz = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = doc["summary"]; p = doc["latencyPercentiles"]
total = sum(doc.get("statusCodeDistribution", {}).values())
ok = doc.get("statusCodeDistribution", {}).get("200", 0)
cpu_us = (t1 - t0) * 1e6 / hz / max(total, 1)
print(f"access_log={sys.argv[5]} requests={total} ok={ok} rps={s['requestsPerSec']:.0f} "
      f"p50={p['p50']*1e3:.2f}ms p99={p['p99']*1e3:.2f}ms ficus_cpu_us_per_req={cpu_us:.1f}")
PY
