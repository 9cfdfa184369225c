#!/usr/bin/env bash
# Routing cost against the length of the route table: ficus with one `path_template` route, then
# with 1,000 of them, the request matching the last one (the first route with a one-route table).
# Same listener, upstream and request in both; ficus pinned to CPU0 with one worker, wrk and an
# nginx upstream on CPU1, loopback only. Prints ficus CPU µs per request for each table, and the
# ratio (issue 14's target: at most 1.05).
# Usage: loadtest/routes.sh [duration_s=8] [connections=64] [rounds=2]
# Ports (override if they are taken): UP_PORT=18180 GW_PORT=18184 ADMIN_PORT=19911
# FICUS_BIN=<path> measures that binary instead of building this checkout (e.g. a before/after).
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-8}; C=${2:-64}; ROUNDS=${3:-2}
UP=${UP_PORT:-18180}; GW=${GW_PORT:-18184}; ADMIN=${ADMIN_PORT:-19911}
N=1000
for b in nginx wrk taskset curl; do command -v $b >/dev/null || { echo "$b is needed (apt-get install -y nginx-light wrk)" >&2; exit 1; }; done
if [ -n "${FICUS_BIN:-}" ]; then BIN=$FICUS_BIN; else
  cargo build --release --locked --bin ficus >&2
  BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/ficus
fi
W=$(mktemp -d /tmp/routebench.XXXXXX)
TCK=$(getconf CLK_TCK)

cat > $W/up.conf <<C
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello from upstream\n"; } } }
C

# bench.yaml up to its routes, on this script's ports; then the table.
head_of_bench() {
  sed -n '1,/^routes:/p' loadtest/bench.yaml | sed "s/127.0.0.1:18084/127.0.0.1:$GW/; s/127.0.0.1:19901/127.0.0.1:$ADMIN/; s/127.0.0.1:18080/127.0.0.1:$UP/"
}
route() { printf "  - name: svc%d\n    match: { path_template: '/svc%d/items/{id}' }\n    upstream: up\n" "$1" "$1"; }
{ head_of_bench; route $((N - 1)); } > $W/routes-1.yaml
{ head_of_bench; for i in $(seq 0 $((N - 1))); do route $i; done; } > $W/routes-$N.yaml
URL=http://127.0.0.1:$GW/svc$((N - 1))/items/42

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
taskset -c 1 nginx -c $W/up.conf & pids+=($!)

declare -A CPU
for round in $(seq 1 "$ROUNDS"); do
  for table in 1 $N; do
    taskset -c 0 "$BIN" run --config $W/routes-$table.yaml >$W/gw-$table.log 2>&1 & gw=$!; pids+=($gw)
    for _ in $(seq 50); do curl -sf -o /dev/null $URL && break; sleep 0.1; done
    curl -sf -o /dev/null $URL || { echo "ficus with $table routes is not answering $URL"; cat $W/gw-$table.log; exit 1; }
    taskset -c 1 wrk -t1 -c$C -d1s $URL >/dev/null 2>&1  # warm the pools
    c0=$(awk '{print $14+$15}' /proc/$gw/stat)
    out=$(taskset -c 1 wrk -t1 -c$C -d${D}s --latency $URL 2>&1)
    c1=$(awk '{print $14+$15}' /proc/$gw/stat)
    kill $gw; wait $gw 2>/dev/null || true
    reqs=$(echo "$out" | awk '/requests in/{print $1}')
    non2xx=$(echo "$out" | awk '/Non-2xx/{print $NF}')
    [ -z "$non2xx" ] || { echo "ficus with $table routes answered $non2xx non-2xx responses"; exit 1; }
    rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    p99=$(echo "$out" | awk '$1=="99%"{print $2}')
    cpu=$(awk -v a=$c0 -v b=$c1 -v r=$reqs -v t=$TCK 'BEGIN{ printf "%.1f", (b-a)*1000000/t/r }')
    CPU[$table]=$cpu
    echo "round=$round routes=$table rps=$rps p99=$p99 ficus_cpu_us_per_req=$cpu"
  done
  awk -v a="${CPU[1]}" -v b="${CPU[$N]}" -v r=$round -v n=$N \
    'BEGIN{ printf "round=%s routes_%s/routes_1 cpu_per_req_ratio=%.2f\n", r, n, b/a }'
done
