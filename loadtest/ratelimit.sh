#!/usr/bin/env bash
# What a rate-limit decision costs on the plain route: in-process (GCRA, admitted and refused) and
# Redis (admitted), and a check that a Redis decision is one round trip (EVALSHA calls counted by
# Redis against requests served). ficus pinned to CPU0 (one worker); wrk, the bundled upstream and
# redis-server on CPU1, so Redis's own CPU is not counted.
# Usage: loadtest/ratelimit.sh [duration_s=8] [connections=64]. Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-8}; C=${2:-64}
for b in wrk redis-server redis-cli; do command -v $b >/dev/null || { echo "$b is needed" >&2; exit 1; }; done
cargo build --release --locked --bin ficus --example bench_upstream >&2
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
pin0=""; pin1=""
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then pin0="taskset -c 0"; pin1="taskset -c 1"; fi
$pin1 target/release/examples/bench_upstream 127.0.0.1:18090 2>/dev/null &
$pin1 redis-server --port 18379 --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
sleep 0.3
evalsha() { redis-cli -p 18379 info commandstats | awk -F'[=,:]' '/^cmdstat_evalsha/{print $3}' | tr -d '\r'; }
run() { # name, route yaml, rate_limits yaml
  cat > "$W/f.yaml" <<YAML
log: { level: warn, access_log: false }
runtime: { worker_threads: 1 }
listeners: [ { name: bench, bind: 127.0.0.1:18084, limits: { max_connections: 20000 } } ]
admin: { bind: 127.0.0.1:19901 }
reload: { watch: false }
upstreams: { up: { endpoints: ["http://127.0.0.1:18090"] } }
routes:
  - { name: plain, match: { path_prefix: / }, upstream: up $2 }
$3
YAML
  $pin0 target/release/ficus run --config "$W/f.yaml" >/dev/null 2>"$W/ficus.log" & local P=$!
  for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18084/ && break; sleep 0.1; done
  sleep 0.3
  $pin1 wrk -t1 -c"$C" -d2s http://127.0.0.1:18084/ >/dev/null
  local t0 t1 out reqs e0 e1
  e0=$(evalsha); e0=${e0:-0}
  t0=$(awk '{print $14+$15}' /proc/$P/stat)
  out=$($pin1 wrk -t1 -c"$C" -d"${D}s" http://127.0.0.1:18084/)
  t1=$(awk '{print $14+$15}' /proc/$P/stat)
  e1=$(evalsha); e1=${e1:-0}
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  printf '%-30s rps=%-10s cpu_us_per_req=%-6s non2xx=%-8s redis_evalsha_per_req=%s\n' "$1" \
    "$(echo "$out" | awk '/Requests\/sec/{print $2}')" \
    "$(awk -v a="$t0" -v b="$t1" -v r="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", (b-a)*1e6/hz/r}')" \
    "$(echo "$out" | awk '/Non-2xx/{print $5}')" \
    "$(awk -v a="$e0" -v b="$e1" -v r="$reqs" 'BEGIN{printf "%.3f", (b-a)/r}')"
  kill $P; wait $P 2>/dev/null || true
}
OPEN='policies: { p: { key: client_ip, rate: 1000000/s, burst: 1000000 } }'
run "plain GET" "" ""
run "GET + local GCRA (admitted)" ", rate_limit: [p]" "rate_limits: { $OPEN }"
run "GET + local GCRA (refused)" ", rate_limit: [p]" "rate_limits: { policies: { p: { key: client_ip, rate: 1/h } } }"
run "GET + Redis GCRA (admitted)" ", rate_limit: [p]" "rate_limits: { store: { redis_urls: ['redis://127.0.0.1:18379'], timeout: 200ms }, $OPEN }"
