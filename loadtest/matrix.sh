#!/usr/bin/env bash
# The README's performance table in one command, in the style of Kong's published benchmark grid:
# one row per kind of work, ficus's CPU per request, req/s and p99, and nginx and HAProxy beside
# it on the rows where they can do the same work. Then the memory one idle keep-alive connection
# costs each of them.
#
# Every proxy is pinned to CPU0 with one worker; wrk, the upstream (nginx returning a fixed
# body), Redis and the JWKS server run on CPU1, so their CPU is not counted. Loopback only; every
# process it starts is stopped when it ends.
#
# Usage: loadtest/matrix.sh [duration_s=8] [connections=64] [idle_connections=5000]
# FICUS_BIN=path measures another build (default: a fresh release build).
# ONLY="plain tls" runs only the rows whose key is listed (keys: plain local_rl redis_rl jwt_rl
# split_shadow routes_1 routes_1000 tls_keepalive tls_new idle).
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-8}
C=${2:-64}
IDLE=${3:-5000}
for b in wrk nginx haproxy redis-server openssl python3 taskset curl; do
  command -v "$b" >/dev/null || { echo "matrix.sh needs $b (Debian: wrk nginx-light haproxy redis-server)" >&2; exit 1; }
done
cargo build --release --locked --bin ficus --example mint_token >&2
T=${CARGO_TARGET_DIR:-target}/release
BIN=${FICUS_BIN:-$T/ficus}
HZ=$(getconf CLK_TCK)
. loadtest/lib.sh
lt_init matrix
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

# ------------------------------------------------------------------ shared fixtures (CPU1)
UP=18180; UP2=18181; JWKS=18191; REDIS=18379
lt_upstream 1 $UP $UP2
taskset -c 1 redis-server --port $REDIS --bind 127.0.0.1 --save '' --appendonly no >/dev/null & pids+=($!)
"$T/examples/mint_token" "$W" >/dev/null
(cd "$W" && exec taskset -c 1 python3 -m http.server $JWKS --bind 127.0.0.1 >/dev/null 2>&1) & pids+=($!)
lt_cert
cat "$W/cert.pem" "$W/key.pem" >"$W/haproxy.pem"
TOKEN=$(cat "$W/rs256.token")
sleep 0.5

# ------------------------------------------------------------------ measuring
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
wait_port() { for _ in $(seq 100); do curl -sk -o /dev/null "$1" && return 0; sleep 0.1; done; echo "$1 not answering" >&2; return 1; }

# load PID URL [wrk args...]: prints "cpu_us_per_req rps p99" for the process PID.
load() {
  local pid=$1 url=$2; shift 2
  taskset -c 1 wrk -t1 -c"$C" -d2s "$@" "$url" >/dev/null 2>&1 || true
  local c0 c1 out reqs
  c0=$(cpu "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$C" -d"${D}s" --latency "$@" "$url" 2>&1)
  c1=$(cpu "$pid")
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  local non2xx; non2xx=$(echo "$out" | awk '/Non-2xx/{print $5}')
  [ -n "$non2xx" ] && echo "warning: $non2xx non-2xx answers from $url" >&2
  awk -v a="$c0" -v b="$c1" -v r="$reqs" -v hz="$HZ" 'BEGIN{ if (r > 0) printf "%.1f ", (b-a)*1e6/hz/r; else printf "- " }'
  echo "$(echo "$out" | awk '/Requests\/sec/{printf "%d", $2}') $(echo "$out" | awk '$1=="99%"{print $2}')"
}

ROWS=()
row() { ROWS+=("$1|$2|$3|$4"); echo "  $1: ficus [$2] nginx [$3] haproxy [$4]" >&2; }

# ------------------------------------------------------------------ ficus
ficus_cfg() { # routes_yaml [extra top-level yaml] [listener extra]
  cat >"$W/f.yaml" <<YAML
log: { level: warn, access_log: false }
runtime: { worker_threads: 1 }
listeners:
  - { name: bench, bind: 127.0.0.1:18084, limits: { max_connections: 20000 }${3:-} }
admin: { bind: 127.0.0.1:19901 }
reload: { watch: false }
upstreams:
  legacy: { endpoints: ["http://127.0.0.1:$UP"] }
  modern: { endpoints: ["http://127.0.0.1:$UP2"] }
${2:-}
routes:
$1
YAML
}
FPID=""
ficus_start() {
  taskset -c 0 "$BIN" run --config "$W/f.yaml" >"$W/ficus.log" 2>&1 &
  FPID=$!
  pids+=("$FPID")
}
ficus_stop() { kill "$FPID" 2>/dev/null || true; wait "$FPID" 2>/dev/null || true; }
ficus_run() { # url [wrk args]
  ficus_start
  wait_port "$1" || { cat "$W/ficus.log" >&2; return 1; }
  load "$FPID" "$@"
  ficus_stop
}
PLAIN='  - { name: plain, match: { path_prefix: / }, upstream: legacy }'
OPEN_RL='rate_limits: { policies: { p: { key: client_ip, rate: 1000000/s, burst: 1000000 } } }'
REDIS_RL="rate_limits: { store: { redis_urls: ['redis://127.0.0.1:$REDIS'], timeout: 200ms }, policies: { p: { key: client_ip, rate: 1000000/s, burst: 1000000 } } }"
JWT="identity: { jwt: { idp: { issuer: 'https://idp.bench/', audiences: [bench], algorithms: [RS256], jwks_url: 'http://127.0.0.1:$JWKS/jwks.json' } } }"
routes_n() { # n: n path_template routes; the request matches the last
  local i
  for i in $(seq 1 $(($1 - 1))); do echo "  - { name: r$i, match: { path_template: '/r$i/{id}' }, upstream: legacy }"; done
  echo "  - { name: last, match: { path_template: '/last/{id}' }, upstream: legacy }"
}
TLS_L=", tls: { certs: [ { cert: $W/cert.pem, key: $W/key.pem } ] }"

# ------------------------------------------------------------------ peers
nginx_run() { # server-block body, [http-level extra], url, [wrk args]
  local body=$1 extra=$2 url=$3; shift 3
  cat >"$W/nx.conf" <<C
worker_processes 1; daemon off; master_process off; pid $W/nx.pid; error_log $W/nx.err;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  upstream up2 { server 127.0.0.1:$UP2; keepalive 128; }
  $extra
  server { $body } }
C
  taskset -c 0 nginx -c "$W/nx.conf" & local p=$!
  pids+=("$p")
  wait_port "$url" || { cat "$W/nx.err" >&2; return 1; }
  load "$p" "$url" "$@"
  kill "$p"; wait "$p" 2>/dev/null || true
}
NX_PROXY='proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";'
haproxy_run() { # frontend lines, url, [wrk args]
  local fe=$1 url=$2; shift 2
  cat >"$W/hap.cfg" <<C
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
$fe
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:$UP
C
  taskset -c 0 haproxy -f "$W/hap.cfg" >"$W/hap.log" 2>&1 & local p=$!
  pids+=("$p")
  wait_port "$url" || { cat "$W/hap.log" >&2; return 1; }
  load "$p" "$url" "$@"
  kill "$p"; wait "$p" 2>/dev/null || true
}

F=http://127.0.0.1:18084/
N=http://127.0.0.1:18085/
H=http://127.0.0.1:18086/
echo "rows (ficus / nginx / haproxy: cpu_us_per_req rps p99):" >&2
if want plain; then
  ficus_cfg "$PLAIN"
  row plain "$(ficus_run $F)" "$(nginx_run "listen 127.0.0.1:18085; location / { $NX_PROXY }" "" $N)" \
    "$(haproxy_run "  bind 127.0.0.1:18086" $H)"
fi
if want local_rl; then
  ficus_cfg '  - { name: plain, match: { path_prefix: / }, upstream: legacy, rate_limit: [p] }' "$OPEN_RL"
  row local_rl "$(ficus_run $F)" \
    "$(nginx_run "listen 127.0.0.1:18085; location / { limit_req zone=z burst=1000000 nodelay; $NX_PROXY }" \
      'limit_req_zone $binary_remote_addr zone=z:10m rate=1000000r/s;' $N)" \
    "$(haproxy_run "  bind 127.0.0.1:18086
  stick-table type ip size 100k expire 30s store http_req_rate(10s)
  http-request track-sc0 src
  http-request deny deny_status 429 if { sc_http_req_rate(0) gt 100000000 }" $H)"
fi
if want redis_rl; then
  ficus_cfg '  - { name: plain, match: { path_prefix: / }, upstream: legacy, rate_limit: [p] }' "$REDIS_RL"
  row redis_rl "$(ficus_run $F)" "" ""
fi
if want jwt_rl; then
  ficus_cfg "  - { name: plain, match: { path_prefix: / }, upstream: legacy, rate_limit: [p], identity: { jwt: idp } }" \
    "$OPEN_RL
$JWT"
  row jwt_rl "$(ficus_run $F -H "Authorization: Bearer $TOKEN")" "" ""
fi
if want split_shadow; then
  ficus_cfg "  - name: split
    match: { path_prefix: / }
    migration: { legacy: { upstream: legacy }, modern: { upstream: modern }, modern_percent: 50, shadow: { percent: 100 } }"
  row split_shadow "$(ficus_run $F)" \
    "$(nginx_run "listen 127.0.0.1:18085; location / { mirror /mirror; proxy_pass http://\$side; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
      location = /mirror { internal; proxy_pass http://up2\$request_uri; proxy_http_version 1.1; proxy_set_header Connection \"\"; }" \
      'split_clients "${remote_port}${msec}" $side { 50% up; * up2; }' $N)" ""
fi
if want routes_1; then
  ficus_cfg "$(routes_n 1)"
  row routes_1 "$(ficus_run http://127.0.0.1:18084/last/7)" \
    "$(nginx_run "listen 127.0.0.1:18085; location /last/ { $NX_PROXY }" "" http://127.0.0.1:18085/last/7)" \
    "$(haproxy_run "  bind 127.0.0.1:18086
  acl last path_beg /last/
  http-request deny deny_status 404 if !last" http://127.0.0.1:18086/last/7)"
fi
if want routes_1000; then
  ficus_cfg "$(routes_n 1000)"
  nx_locs=$(for i in $(seq 1 999); do echo "location /r$i/ { $NX_PROXY }"; done)
  hap_acls=$(for i in $(seq 1 999); do echo "  http-request deny deny_status 404 if { path_beg /r$i/ } { hdr(x-never) -m found }"; done)
  row routes_1000 "$(ficus_run http://127.0.0.1:18084/last/7)" \
    "$(nginx_run "listen 127.0.0.1:18085; $nx_locs
      location /last/ { $NX_PROXY }" "" http://127.0.0.1:18085/last/7)" \
    "$(haproxy_run "  bind 127.0.0.1:18086
$hap_acls" http://127.0.0.1:18086/last/7)"
fi
NX_TLS="listen 127.0.0.1:18085 ssl; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem; ssl_session_cache shared:SSL:10m;"
if want tls_keepalive; then
  ficus_cfg "$PLAIN" "" "$TLS_L"
  row tls_keepalive "$(ficus_run https://127.0.0.1:18084/)" \
    "$(nginx_run "$NX_TLS location / { $NX_PROXY }" "" https://127.0.0.1:18085/)" \
    "$(haproxy_run "  bind 127.0.0.1:18086 ssl crt $W/haproxy.pem" https://127.0.0.1:18086/)"
fi
if want tls_new; then
  # wrk does not resume sessions: every request is a new connection with a full handshake.
  ficus_cfg "$PLAIN" "" "$TLS_L"
  row tls_new "$(ficus_run https://127.0.0.1:18084/ -H 'Connection: close')" \
    "$(nginx_run "$NX_TLS location / { $NX_PROXY }" "" https://127.0.0.1:18085/ -H 'Connection: close')" \
    "$(haproxy_run "  bind 127.0.0.1:18086 ssl crt $W/haproxy.pem" https://127.0.0.1:18086/ -H 'Connection: close')"
fi

# ------------------------------------------------------------------ idle connections
# Opens $IDLE keep-alive connections, sends one request on each, reads the answer, then holds
# them idle and prints nothing; RSS is read from the proxy's /proc before and after.
cat >"$W/idle.py" <<'PY'
import asyncio, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
async def one(conns):
    r, w = await asyncio.open_connection('127.0.0.1', port)
    w.write(b'GET / HTTP/1.1\r\nHost: bench\r\n\r\n')
    await w.drain()
    await r.readuntil(b'hello from upstream\n')
    conns.append(w)
async def main():
    conns = []
    for i in range(0, n, 200):
        await asyncio.gather(*(one(conns) for _ in range(min(200, n - i))))
    print('open', len(conns), flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
PY
rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
idle_kib() { # pid port
  local r0 r1
  r0=$(rss_kib "$1")
  taskset -c 1 python3 "$W/idle.py" "$2" "$IDLE" >"$W/idle.out" &
  local ip=$!
  for _ in $(seq 600); do grep -q open "$W/idle.out" 2>/dev/null && break; sleep 0.1; done
  sleep 2
  r1=$(rss_kib "$1")
  kill $ip; wait $ip 2>/dev/null || true
  awk -v a="$r0" -v b="$r1" -v n="$IDLE" 'BEGIN{printf "%.1f", (b-a)/n}'
}
IDLE_ROW=""
if want idle; then
  ficus_cfg "$PLAIN"
  ficus_start
  wait_port $F
  fi_idle=$(idle_kib "$FPID" 18084)
  ficus_stop
  cat >"$W/nx.conf" <<C
worker_processes 1; daemon off; master_process off; pid $W/nx.pid; error_log $W/nx.err;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 3600s;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:18085; location / { $NX_PROXY } } }
C
  taskset -c 0 nginx -c "$W/nx.conf" & np=$!
  pids+=("$np")
  wait_port $N
  nx_idle=$(idle_kib "$np" 18085)
  kill $np
  cat >"$W/hap.cfg" <<C
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 3600s
  timeout server 30s
  timeout http-keep-alive 3600s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:18086
  default_backend be
backend be
  server s1 127.0.0.1:$UP
C
  taskset -c 0 haproxy -f "$W/hap.cfg" >"$W/hap.log" 2>&1 & hp=$!
  pids+=("$hp")
  wait_port $H
  hp_idle=$(idle_kib "$hp" 18086)
  kill $hp
  IDLE_ROW="| idle keep-alive connection (KiB RSS each, $IDLE open) | $fi_idle | | | $nx_idle | | | $hp_idle | | |"
fi

# ------------------------------------------------------------------ the table
label() {
  case $1 in
    plain) echo "plain route" ;;
    local_rl) echo "in-process rate limit" ;;
    redis_rl) echo "Redis rate limit" ;;
    jwt_rl) echo "rate limit + JWT (JWKS, cache hit)" ;;
    split_shadow) echo "50% split + 100% shadow" ;;
    routes_1) echo "1 route (template, matched)" ;;
    routes_1000) echo "1,000 routes, the last matches" ;;
    tls_keepalive) echo "TLS, keep-alive" ;;
    tls_new) echo "TLS, new connection per request" ;;
  esac
}
echo
echo "$D s per target, $C connections, $(date -u +%Y-%m-%d) on $(nproc) cores; CPU is the proxy's, in µs per request."
echo
echo "| work | ficus CPU µs | ficus req/s | ficus p99 | nginx CPU µs | nginx req/s | nginx p99 | HAProxy CPU µs | HAProxy req/s | HAProxy p99 | ficus / nginx CPU |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for r in "${ROWS[@]}"; do
  IFS='|' read -r key f n h <<<"$r"
  read -r fc fr fp <<<"${f:-- - -}"
  read -r nc nr np <<<"${n:-— — —}"
  read -r hc hr hp <<<"${h:-— — —}"
  ratio=$(awk -v a="$fc" -v b="$nc" 'BEGIN{ if (a+0 > 0 && b+0 > 0) printf "%.2f", a/b; else print "—" }')
  echo "| $(label "$key") | $fc | $fr | $fp | $nc | $nr | $np | $hc | $hr | $hp | $ratio |"
done
[ -n "$IDLE_ROW" ] && echo "$IDLE_ROW |"
exit 0
