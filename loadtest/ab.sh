#!/usr/bin/env bash
# A/B of two ficus binaries on the plain route of loadtest/bench.yaml: alternating runs, ficus
# pinned to CPU0, wrk and an nginx upstream on CPU1, CPU µs per request from /proc.
# Usage: loadtest/ab.sh BIN_A BIN_B [pairs=4] [seconds=8]
# e.g. build the baseline in a worktree, then: loadtest/ab.sh /tmp/ficus-before target/release/ficus
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1; B=$2; PAIRS=${3:-4}; D=${4:-8}
for b in nginx wrk; do command -v $b >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null; }; done
W=$(mktemp -d)
cat > "$W/up.conf" <<C
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18080; location / { return 200 "hello from upstream\n"; } } }
C
taskset -c 1 nginx -c "$W/up.conf" & UP=$!
trap 'kill $UP 2>/dev/null || true; rm -rf "$W"' EXIT
sleep 1
CLK=$(getconf CLK_TCK)
for _ in $(seq "$PAIRS"); do for bin in "$A" "$B"; do
  taskset -c 0 "$bin" run --config loadtest/bench.yaml >/dev/null 2>&1 & P=$!
  sleep 1.5
  taskset -c 1 wrk -t1 -c64 -d2s http://127.0.0.1:18084/ >/dev/null 2>&1
  t0=$(awk '{print $14+$15}' /proc/$P/stat)
  out=$(taskset -c 1 wrk -t1 -c64 -d"${D}s" --latency http://127.0.0.1:18084/ 2>&1)
  t1=$(awk '{print $14+$15}' /proc/$P/stat)
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  p99=$(echo "$out" | awk '/ 99%/ {print $2}')
  awk -v b="$bin" -v t="$((t1 - t0))" -v c="$CLK" -v r="$reqs" -v d="$D" -v p="$p99" \
    'BEGIN { printf "%s cpu_us_per_req=%.2f rps=%d p99=%s\n", b, t / c * 1e6 / r, r / d, p }'
  kill $P; wait $P 2>/dev/null || true
done; done
