#!/usr/bin/env bash
# Multiplexed HTTP/2, ficus against nginx, side by side on loopback: h2load (Debian's
# nghttp2-client) opens C connections with M concurrent streams each, over TLS (ALPN h2) and in
# cleartext (h2c, prior knowledge). Both proxies forward every stream as HTTP/1.1 to the same
# nginx upstream over a keep-alive pool. Proxies on CPU0 with one worker, h2load and the
# upstream on CPU1; CPU µs per request is the proxy's user+system time over the requests served.
# Usage: loadtest/h2.sh [seconds=8] [connections=8] [streams=16] [rounds=2]
# FICUS_BIN=path measures another build (default: a fresh release build).
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-8}
C=${2:-8}
M=${3:-16}
ROUNDS=${4:-2}
for b in nginx openssl taskset h2load; do
  command -v $b >/dev/null || { echo "h2.sh needs $b (h2load: apt-get install nghttp2-client)" >&2; exit 1; }
done
if [ -z "${FICUS_BIN:-}" ]; then
  cargo build --release --locked --bin ficus >&2
  FICUS_BIN=$PWD/target/release/ficus
fi
. loadtest/lib.sh
lt_init h2

lt_cert

# nginx 1.22 spells h2 as a listen parameter; `http2_max_concurrent_streams` is 128 by default.
cat >"$W/nginx.conf" <<C
worker_processes 1; daemon off; master_process off; pid $W/nx.pid; error_log $W/nx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:18280; keepalive 128; }
  server {
    listen 127.0.0.1:18281 ssl http2;
    listen 127.0.0.1:18282 http2;
    ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
cat >"$W/ficus.yaml" <<C
log: { level: warn, access_log: false }
runtime: { worker_threads: 1 }
listeners:
  - name: tls
    bind: 127.0.0.1:18284
    tls: { certs: [ { cert: cert.pem, key: key.pem } ] }
  - name: h2c
    bind: 127.0.0.1:18285
admin: { bind: 127.0.0.1:19291 }
reload: { watch: false }
upstreams:
  up: { endpoints: ["http://127.0.0.1:18280"] }
routes:
  - { name: plain, match: { path_prefix: / }, upstream: up }
C

lt_upstream 1 18280
taskset -c 0 nginx -c "$W/nginx.conf" & pids+=($!)
NGINX=$!
taskset -c 0 "$FICUS_BIN" run --config "$W/ficus.yaml" >"$W/ficus.log" 2>&1 & pids+=($!)
FICUS=$!
sleep 2
for url in https://127.0.0.1:18281/ http://127.0.0.1:18282/ https://127.0.0.1:18284/ http://127.0.0.1:18285/; do
  taskset -c 1 h2load -n 10 -c 1 "$url" 2>&1 | grep -q '10 succeeded' \
    || { echo "$url does not answer h2"; cat "$W/ficus.log"; exit 1; }
done

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }

measure() { # name pid url
  local c0 c1 out
  c0=$(cpu "$2")
  out=$(taskset -c 1 h2load -D "$S" --warm-up-time=1 -c "$C" -m "$M" "$3" 2>&1)
  c1=$(cpu "$2")
  echo "$out" | awk -v a="$c0" -v b="$c1" -v name="$1" -v url="$3" '
    /^finished in/ { rps = $4 }
    /requests:/ { for (i = 1; i <= NF; i++) if ($(i+1) == "succeeded,") ok = $i; fail = 0
                  for (i = 1; i <= NF; i++) if ($(i+1) == "failed,") fail = $i }
    /time for request:/ { max = $5; mean = $6 }
    END { proto = (url ~ /^https/) ? "h2/TLS" : "h2c"
          cpu = (ok > 0) ? (b - a) * 10000 / ok : 0
          printf "%-6s %-7s req/s=%-10s ok=%-8s failed=%-4s mean=%-9s max=%-9s cpu_us_per_req=%.1f\n", name, proto, rps, ok, fail, mean, max, cpu }'
}

echo "h2load -D $S -c $C -m $M (proxies on CPU0, h2load and upstream on CPU1)"
for round in $(seq "$ROUNDS"); do
  echo "== round $round"
  measure nginx $NGINX https://127.0.0.1:18281/
  measure ficus $FICUS https://127.0.0.1:18284/
  measure nginx $NGINX http://127.0.0.1:18282/
  measure ficus $FICUS http://127.0.0.1:18285/
done
