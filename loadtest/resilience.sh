#!/usr/bin/env bash
# What the resilience and migration features cost on top of the plain route: breaker + retry,
# an idempotent POST (in-process and Redis store), a split route, and a split route with 100%
# shadowing. ficus pinned to CPU0 (one worker), wrk and the
# bundled upstream on CPU1; prints ficus's CPU microseconds per request for each variant.
# Usage: loadtest/resilience.sh [duration_s=8] [connections=64]
# Loopback only; stops by itself. Needs wrk and redis-server (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-8}; C=${2:-64}
for b in wrk redis-server; do command -v $b >/dev/null || { echo "$b is needed" >&2; exit 1; }; done
cargo build --release --locked --bin ficus --example bench_upstream >&2
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
pin0=""; pin1=""
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then pin0="taskset -c 0"; pin1="taskset -c 1"; fi
$pin1 target/release/examples/bench_upstream 127.0.0.1:18090 2>/dev/null &
$pin1 redis-server --port 18379 --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
cat > "$W/post.lua" <<'LUA'
local n = 0
-- A different key space per run (and per warm-up), so no key is ever replayed.
math.randomseed(os.time() + os.clock() * 1000000)
local seed = tostring(math.random(1, 1000000000))
request = function()
  n = n + 1
  return wrk.format("POST", "/orders", { ["Idempotency-Key"] = seed .. "-" .. n, ["Content-Type"] = "application/json" }, '{"item":42,"qty":1}')
end
LUA
run() { # name, extra upstream yaml, extra route yaml, extra top-level yaml, wrk args...
  local name=$1 up=$2 route=$3 top=$4; shift 4
  cat > "$W/f.yaml" <<YAML
log: { level: warn, access_log: false }
runtime: { worker_threads: 1 }
listeners: [ { name: bench, bind: 127.0.0.1:18084, limits: { max_connections: 20000 } } ]
admin: { bind: 127.0.0.1:19901 }
reload: { watch: false }
upstreams:
  up:
    endpoints: ["http://127.0.0.1:18090"]
$up
  up2:
    endpoints: ["http://127.0.0.1:18090"]
routes:
  - name: plain
    match: { path_prefix: / }
${ROUTE_TARGET:-    upstream: up}
$route
$top
YAML
  $pin0 target/release/ficus run --config "$W/f.yaml" >/dev/null 2>"$W/ficus.log" & local P=$!
  for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:18084/ && break; sleep 0.1; done
  $pin1 wrk -t1 -c"$C" -d2s "$@" http://127.0.0.1:18084/ >/dev/null
  local t0 t1 out reqs
  t0=$(awk '{print $14+$15}' /proc/$P/stat)
  out=$($pin1 wrk -t1 -c"$C" -d"${D}s" "$@" http://127.0.0.1:18084/)
  t1=$(awk '{print $14+$15}' /proc/$P/stat)
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  printf '%-32s rps=%-10s cpu_us_per_req=%s non2xx=%s\n' "$name" "$(echo "$out" | awk '/Requests\/sec/{print $2}')" \
    "$(awk -v a="$t0" -v b="$t1" -v r="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", (b-a)*1e6/hz/r}')" \
    "$(echo "$out" | awk '/Non-2xx/{print $5}')"
  kill $P; wait $P 2>/dev/null || true
}
BR='    circuit_breaker: { window: 10s, min_requests: 20, failure_rate: 0.5 }'
RT='    retry: { attempts: 2, budget: 0.2 }'
IDEM='    idempotency: { ttl: 1h, scope: client_ip }'
run "plain GET" "" "" ""
run "GET + breaker + retry" "$BR
$RT" "" ""
run "POST (no idempotency)" "" "" "" -s "$W/post.lua"
run "POST + idempotency (local)" "" "$IDEM" "" -s "$W/post.lua"
run "POST + idempotency (redis)" "" "$IDEM" "idempotency_store: { redis_url: 'redis://127.0.0.1:18379' }" -s "$W/post.lua"
SPLIT='    migration:
      legacy: { upstream: up }
      modern: { upstream: up2 }
      modern_percent: 50
      sticky: client-ip'
ROUTE_TARGET="$SPLIT" run "GET, split route (50%, sticky)" "" "" ""
ROUTE_TARGET="$SPLIT
      shadow: { percent: 100, max_concurrent: 256 }" run "GET, split + 100% shadow" "" "" ""
