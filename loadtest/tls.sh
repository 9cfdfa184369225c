#!/usr/bin/env bash
# TLS handshake cost, ficus against nginx, side by side on loopback: server CPU per connection
# for full handshakes and for resumed ones, TLS 1.3 and TLS 1.2. Both proxies terminate TLS with
# the same ECDSA P-256 certificate and proxy one GET per connection to the same nginx upstream;
# nginx has its session cache and tickets on (`ssl_session_cache shared:SSL:10m`), ficus its
# defaults. Proxies on CPU0, `openssl s_time` and the upstream on CPU1.
# Usage: loadtest/tls.sh [seconds per measurement=5] [rounds=2]
# FICUS_BIN=path measures another build (default: a fresh release build).
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-5}
ROUNDS=${2:-2}
for b in nginx openssl taskset; do
  command -v $b >/dev/null || { echo "tls.sh needs $b" >&2; exit 1; }
done
if [ -z "${FICUS_BIN:-}" ]; then
  cargo build --release --locked --bin ficus >&2
  FICUS_BIN=$PWD/target/release/ficus
fi
. loadtest/lib.sh
lt_init tls

lt_cert

cat >"$W/nginx.conf" <<C
worker_processes 1; daemon off; master_process off; pid $W/nx.pid; error_log $W/nx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:18180; keepalive 128; }
  server {
    listen 127.0.0.1:18181 ssl;
    ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m; ssl_session_tickets on;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
cat >"$W/ficus.yaml" <<C
log: { level: warn, access_log: false }
runtime: { worker_threads: 1 }
listeners:
  - name: tls
    bind: 127.0.0.1:18184
    tls: { certs: [ { cert: cert.pem, key: key.pem } ] }
    limits: { max_connections: 20000 }
admin: { bind: 127.0.0.1:19191 }
reload: { watch: false }
upstreams:
  up: { endpoints: ["http://127.0.0.1:18180"] }
routes:
  - { name: plain, match: { path_prefix: / }, upstream: up }
C

lt_upstream 1 18180
taskset -c 0 nginx -c "$W/nginx.conf" & pids+=($!)
NGINX=$!
taskset -c 0 "$FICUS_BIN" run --config "$W/ficus.yaml" >"$W/ficus.log" 2>&1 & pids+=($!)
FICUS=$!
sleep 2
for port in 18181 18184; do
  curl -sfk --resolve bench.test:$port:127.0.0.1 "https://bench.test:$port/" >/dev/null \
    || { echo "port $port not answering"; cat "$W/ficus.log"; exit 1; }
done

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }

# One measurement: server CPU (clock ticks are 10 ms) per connection over $S seconds.
measure() { # name pid port mode version
  local c0 c1 out conns
  c0=$(cpu "$2")
  out=$(taskset -c 1 openssl s_time -connect "127.0.0.1:$3" -"$4" -"$5" -www / -time "$S" 2>&1)
  c1=$(cpu "$2")
  conns=$(echo "$out" | awk '/connections in .* real seconds/{print $1; exit}')
  awk -v a="$c0" -v b="$c1" -v n="$conns" -v name="$1" -v mode="$4" -v v="$5" 'BEGIN{
    if (n > 0) printf "%-6s %-6s %-5s conns=%-6d server_cpu_us_per_conn=%.1f\n", name, v, mode, n, (b-a)*10000/n
    else printf "%-6s %-6s %-5s no connections\n", name, v, mode }'
}

for round in $(seq "$ROUNDS"); do
  echo "== round $round"
  for v in tls1_3 tls1_2; do
    for mode in new reuse; do
      measure nginx $NGINX 18181 $mode $v
      measure ficus $FICUS 18184 $mode $v
    done
  done
done
