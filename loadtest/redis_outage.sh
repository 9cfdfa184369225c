#!/usr/bin/env bash
# The latency a Redis outage adds to a Redis-limited route (goal: p99 under 5 ms). Runs the same
# wrk load twice against one ficus: with Redis up, then right after redis-server is SIGKILLed
# (the run includes the moment of the kill, so the breaker's first failures are counted). Prints
# requests/s, p50/p99 and the fallback decisions and breaker state from /metrics.
# ficus pinned to CPU0 (one worker); wrk, the bundled upstream and redis-server on CPU1.
# Usage: loadtest/redis_outage.sh [duration_s=10] [connections=64] [store_timeout=50ms]
# With many connections the percentiles are mostly queueing at the saturated worker; a few
# connections (e.g. 4) show what one decision costs.
# Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-10}; C=${2:-64}; TIMEOUT=${3:-50ms}
for b in wrk redis-server redis-cli curl; do command -v $b >/dev/null || { echo "$b is needed" >&2; exit 1; }; done
cargo build --release --locked --bin ficus --example bench_upstream >&2
T=${CARGO_TARGET_DIR:-target}/release
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
pin0=""; pin1=""
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then pin0="taskset -c 0"; pin1="taskset -c 1"; fi
$pin1 "$T/examples/bench_upstream" 127.0.0.1:18090 2>/dev/null &
$pin1 redis-server --port 18379 --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
RPID=$!
cat > "$W/f.yaml" <<YAML
log: { level: warn, access_log: false }
runtime: { worker_threads: 1 }
listeners: [ { name: bench, bind: 127.0.0.1:18084, limits: { max_connections: 20000 } } ]
admin: { bind: 127.0.0.1:19901 }
reload: { watch: false }
upstreams: { up: { endpoints: ["http://127.0.0.1:18090"] } }
routes:
  - { name: limited, match: { path_prefix: / }, upstream: up, rate_limit: [p] }
rate_limits:
  store: { redis_urls: ['redis://127.0.0.1:18379'], timeout: $TIMEOUT, on_error: local }
  policies: { p: { key: client_ip, rate: 1000000/s, burst: 1000000 } }
YAML
$pin0 "$T/ficus" run --config "$W/f.yaml" >/dev/null 2>"$W/ficus.log" &
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18084/ && break; sleep 0.1; done
metric() { curl -s http://127.0.0.1:19901/metrics | awk -v s="$1" 'index($0, s) == 1 {print $NF}' | head -1; }
# Wait until Redis decides (the connection is made in the background).
for _ in $(seq 50); do
  curl -s -o /dev/null http://127.0.0.1:18084/
  [ "$(metric 'ficus_ratelimit_decisions_total{policy="p",result="allowed"}')" != "0" ] && break; sleep 0.1
done
report() { # name, wrk output
  printf '%-34s rps=%-10s p50=%-9s p99=%-9s non2xx=%s\n' "$1" \
    "$(echo "$2" | awk '/Requests\/sec/{print $2}')" \
    "$(echo "$2" | awk '$1=="50%"{print $2}')" \
    "$(echo "$2" | awk '$1=="99%"{print $2}')" \
    "$(echo "$2" | awk '/Non-2xx/{print $5}')"
}
$pin1 wrk -t1 -c"$C" -d2s http://127.0.0.1:18084/ >/dev/null
report "Redis up (decided by Redis)" "$($pin1 wrk -t1 -c"$C" -d"${D}s" --latency http://127.0.0.1:18084/)"
echo "decided by Redis so far: $(metric 'ficus_ratelimit_decisions_total{policy="p",result="allowed"}')"
kill -9 $RPID; wait $RPID 2>/dev/null || true
report "Redis SIGKILLed (fallback: local)" "$($pin1 wrk -t1 -c"$C" -d"${D}s" --latency http://127.0.0.1:18084/)"
echo "store errors by reason: $(for r in unavailable timeout error circuit_open; do
  printf '%s=%s ' $r "$(metric "ficus_ratelimit_store_errors_total{policy=\"p\",reason=\"$r\"}")"; done)"
echo "fallback decisions: $(metric 'ficus_ratelimit_decisions_total{policy="p",result="fallback_allowed"}')," \
  "breaker state: $(metric 'ficus_ratelimit_store_breaker_state{store="redis"}')," \
  "opened: $(metric 'ficus_ratelimit_store_breaker_transitions_total{store="redis",to="open"}') times"
