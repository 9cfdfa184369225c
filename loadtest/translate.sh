#!/usr/bin/env bash
# What translation costs: the same ~1 KiB legacy answer through a plain route and through a route
# whose transform unwraps SOAP and applies field operations (tests/fixtures/translate/ficus.yaml,
# `soap_orders` response). ficus pinned to CPU0 (one worker), wrk and the upstream on CPU1.
# Usage: loadtest/translate.sh [duration_s=8] [connections=64]. Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-8}; C=${2:-64}
command -v wrk >/dev/null || { echo "wrk is needed" >&2; exit 1; }
cargo build --release --locked --bin ficus --example bench_upstream >&2
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
pin0=""; pin1=""
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then pin0="taskset -c 0"; pin1="taskset -c 1"; fi
$pin1 target/release/examples/bench_upstream 127.0.0.1:18090 tests/fixtures/translate/create_order.response.xml 'text/xml; charset=utf-8' 2>/dev/null &
sleep 0.3
run() { # name, route yaml (transform or not)
  cat > "$W/f.yaml" <<YAML
log: { level: warn, access_log: false }
runtime: { worker_threads: 1 }
listeners: [ { name: bench, bind: 127.0.0.1:18084, limits: { max_connections: 20000 } } ]
admin: { bind: 127.0.0.1:19901 }
reload: { watch: false }
upstreams: { up: { endpoints: ["http://127.0.0.1:18090"] } }
$(sed -n '/^transforms:/,/^routes:/p' tests/fixtures/translate/ficus.yaml | sed '$d')
routes:
  - { name: r, match: { path_prefix: / }, upstream: up $2 }
YAML
  $pin0 target/release/ficus run --config "$W/f.yaml" >/dev/null 2>"$W/ficus.log" & local P=$!
  for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:18084/ && break; sleep 0.1; done
  $pin1 wrk -t1 -c"$C" -d2s http://127.0.0.1:18084/ >/dev/null
  local t0 t1 out reqs
  t0=$(awk '{print $14+$15}' /proc/$P/stat)
  out=$($pin1 wrk -t1 -c"$C" -d"${D}s" http://127.0.0.1:18084/)
  t1=$(awk '{print $14+$15}' /proc/$P/stat)
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  printf '%-34s rps=%-10s cpu_us_per_req=%s non2xx=%s\n' "$1" "$(echo "$out" | awk '/Requests\/sec/{print $2}')" \
    "$(awk -v a="$t0" -v b="$t1" -v r="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", (b-a)*1e6/hz/r}')" \
    "$(echo "$out" | awk '/Non-2xx/{print $5}')"
  kill $P; wait $P 2>/dev/null || true
}
run "plain (1 KiB SOAP passed through)" ""
run "translated (SOAP -> JSON, 17 ops)" ", transform: soap_orders"
