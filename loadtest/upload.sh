#!/usr/bin/env bash
# ficus's CPU for large request bodies streamed through the plain route: the check that a change
# to hyper's read buffers (vendor/hyper) keeps big uploads reading in large steps. The request
# rows of matrix.sh and instructions.sh carry no body, so they cannot see that.
#
# ficus (CPU0) proxies COUNT uploads of SIZE_MIB MiB, one after the other, to nginx (CPU1), which
# reads each body whole; prints ficus's user+system CPU for them. Loopback only.
#
# Usage: loadtest/upload.sh [count=40] [size_mib=8]
# FICUS_BIN=path measures another build (default: a fresh release build). Compare two builds by
# alternating them; one run's figure varies by about ±10 %.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-40}
SIZE=${2:-8}
for b in nginx curl taskset; do
  command -v "$b" >/dev/null || { echo "upload.sh needs $b (Debian: nginx-light curl)" >&2; exit 1; }
done
if [ -z "${FICUS_BIN:-}" ]; then
  cargo build --release --locked --bin ficus >&2
fi
BIN=${FICUS_BIN:-${CARGO_TARGET_DIR:-target}/release/ficus}
HZ=$(getconf CLK_TCK)
. loadtest/lib.sh
lt_init upload

head -c $((SIZE * 1048576)) /dev/urandom >"$W/body"
# nginx reads the body before answering only when it proxies it: a second server block answers.
cat >"$W/up.conf" <<C
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err;
events { worker_connections 1024; }
http { access_log off; client_max_body_size $((SIZE + 1))m; client_body_buffer_size $((SIZE + 1))m;
  client_body_temp_path $W;
  server { listen 127.0.0.1:18580; location / { proxy_pass http://127.0.0.1:18581; } }
  server { listen 127.0.0.1:18581; location / { return 200 "ok\n"; } } }
C
cat >"$W/f.yaml" <<Y
log: { level: warn, access_log: false }
runtime: { worker_threads: 1 }
listeners:
  - { name: bench, bind: 127.0.0.1:18584, limits: { max_body_bytes: $((SIZE + 1))MiB } }
admin: { bind: 127.0.0.1:19591 }
reload: { watch: false }
upstreams:
  legacy: { endpoints: ["http://127.0.0.1:18580"] }
routes:
  - { name: plain, match: { path_prefix: / }, upstream: legacy }
Y
taskset -c 1 nginx -c "$W/up.conf" & pids+=($!)
taskset -c 0 "$BIN" run --config "$W/f.yaml" >"$W/f.log" 2>&1 & fp=$!; pids+=($fp)
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18584/ && break; sleep 0.1; done
code=$(curl -s -o /dev/null -w "%{http_code}" --data-binary @"$W/body" http://127.0.0.1:18584/up)
[ "$code" = 200 ] || { echo "an upload got $code, not 200" >&2; cat "$W/f.log" >&2; exit 1; }
t0=$(awk '{print $14+$15}' "/proc/$fp/stat")
for _ in $(seq "$COUNT"); do
  taskset -c 1 curl -s -o /dev/null --data-binary @"$W/body" http://127.0.0.1:18584/up
done
t1=$(awk '{print $14+$15}' "/proc/$fp/stat")
awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$COUNT" -v s="$SIZE" \
  'BEGIN{printf "%d uploads of %d MiB: ficus CPU %.2f s, %.1f ms per upload, %.2f ms per MiB\n", n, s, t/hz, 1000*t/hz/n, 1000*t/hz/n/s}'
