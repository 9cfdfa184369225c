#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: the repeatable measure of CPU cost.
# On a small shared machine wall-clock CPU figures swing by 15-100 % between runs; instruction
# counts repeat to within a fraction of a percent, so an optimisation of a few percent shows.
# Instructions are not time (cache misses and syscalls count one each), so the README's table
# still comes from loadtest/matrix.sh; this says whether a change made the work smaller.
#
# Each target is started under callgrind twice: once answering a single request, once answering
# that request and N more (h2load --h1, C keep-alive connections). The difference over N is its
# cost per request, start-up and shutdown cancelled out. nginx runs the same rows where it can
# do the same work (proxy_pass with upstream keep-alive; limit_req for the rate limit).
#
# Usage: loadtest/instructions.sh [requests=5000] [connections=8]
# ROWS="plain local_rl jwt_rl nginx_plain nginx_rl bare" picks rows (default: all). `bare` is
# examples/bare_proxy.rs, the smallest hyper-util proxy: the HTTP stack's own floor.
# FICUS_BIN=path measures another build (default: a fresh release build).
# CG_DIR=dir keeps each row's callgrind profile there (read it with callgrind_annotate).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
C=${2:-8}
ROWS=${ROWS:-plain local_rl jwt_rl nginx_plain nginx_rl bare}
for b in valgrind callgrind_annotate h2load nginx python3 curl; do
  command -v "$b" >/dev/null || { echo "instructions.sh needs $b (Debian: valgrind nghttp2-client nginx-light)" >&2; exit 1; }
done
cargo build --release --locked --bin ficus --example mint_token --example bare_proxy >&2
T=${CARGO_TARGET_DIR:-target}/release
BIN=${FICUS_BIN:-$T/ficus}
. loadtest/lib.sh
lt_init instr

UP=18280; JWKS=18291
lt_upstream "" $UP
"$T/examples/mint_token" "$W" >/dev/null
(cd "$W" && exec python3 -m http.server $JWKS --bind 127.0.0.1 >/dev/null 2>&1) & pids+=($!)
TOKEN=$(cat "$W/rs256.token")
sleep 0.5

ficus_cfg() { # route extras, top-level extras
  cat >"$W/f.yaml" <<YAML
log: { level: warn, access_log: false }
runtime: { worker_threads: 1 }
listeners:
  - { name: bench, bind: 127.0.0.1:18284 }
admin: { bind: 127.0.0.1:19291 }
reload: { watch: false }
upstreams:
  legacy: { endpoints: ["http://127.0.0.1:$UP"] }
routes:
  - { name: plain, match: { path_prefix: / }, upstream: legacy$1 }
${2:-}
YAML
}
nginx_cfg() { # location extras, http extras
  cat >"$W/nx.conf" <<C
worker_processes 1; daemon off; master_process off; pid $W/nx.pid; error_log $W/nx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  ${2:-}
  server { listen 127.0.0.1:18285; location / { $1 proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
}
RL='rate_limits: { policies: { p: { key: client_ip, rate: 1000000/s, burst: 1000000 } } }'
JWT="identity: { jwt: { idp: { issuer: 'https://idp.bench/', audiences: [bench], algorithms: [RS256], jwks_url: 'http://127.0.0.1:$JWKS/jwks.json' } } }"

# total_instructions URL REQUESTS [h2load args] -- CMD...: runs CMD under callgrind, sends one
# request, then REQUESTS more, stops it and prints the instructions it executed.
total() {
  local url=$1 n=$2; shift 2
  local args=()
  while [ "$1" != -- ]; do args+=("$1"); shift; done
  shift
  rm -f "$W"/cg.out*
  valgrind --tool=callgrind --callgrind-out-file="$W/cg.out.%p" "$@" >"$W/target.log" 2>&1 &
  local p=$!
  pids+=("$p")
  local ok=""
  for _ in $(seq 600); do
    if curl -s -o /dev/null -f "${args[@]/#/-H}" "$url" 2>/dev/null; then ok=1; break; fi
    sleep 0.1
  done
  [ -n "$ok" ] || { echo "$url never answered" >&2; cat "$W/target.log" >&2; return 1; }
  if [ "$n" -gt 0 ]; then
    local hargs=()
    for h in "${args[@]}"; do hargs+=(-H "$h"); done
    local out
    out=$(h2load --h1 -n "$n" -c "$C" "${hargs[@]}" "$url" 2>&1)
    echo "$out" | grep -q "$n succeeded" || { echo "h2load: not all $n succeeded:" >&2; echo "$out" | grep -E 'requests:|status codes:' >&2; return 1; }
  fi
  kill -TERM "$p"; wait "$p" 2>/dev/null || true
  # One file per process (nginx forks none here); summed in case a target does. Lazy one-time
  # set-up (once_cell initialisers: above all quanta's clock calibration, which loops for a
  # stretch of time and so varied by up to 2,000 instructions per request between runs) is
  # taken out, so that only the work that repeats per request is left to subtract.
  local sum init
  sum=$(cat "$W"/cg.out.* | awk '/^summary:/{s+=$2} END{print s+0}')
  init=$(for f in "$W"/cg.out.*; do
    callgrind_annotate --auto=no --inclusive=yes "$f" 2>/dev/null |
      awk '/once_cell::imp::OnceCell<T>::initialize \[/{gsub(",", "", $1); s+=$1} END{print s+0}'
  done | awk '{s+=$1} END{print s+0}')
  echo $((sum - init))
  if [ -n "${CG_DIR:-}" ] && [ "$n" -gt 0 ]; then mkdir -p "$CG_DIR" && cat "$W"/cg.out.* >"$CG_DIR/$ROW.callgrind"; fi
}

# per_request LABEL URL [h2load header args] -- CMD...: prints "LABEL instructions/request".
per_request() {
  local label=$1; shift
  local base full
  base=$(total "$1" 0 "${@:2}")
  full=$(total "$1" "$N" "${@:2}")
  awk -v l="$label" -v a="$base" -v b="$full" -v n="$N" 'BEGIN{printf "%-12s %8.0f instructions/request\n", l, (b-a)/n}'
}

F=http://127.0.0.1:18284/
X=http://127.0.0.1:18285/
echo "callgrind, $N requests on $C keep-alive connections (h2load --h1), $(date -u +%Y-%m-%d):"
for r in $ROWS; do
  ROW=$r
  case $r in
    plain) ficus_cfg "" && per_request plain $F -- "$BIN" run --config "$W/f.yaml" ;;
    local_rl) ficus_cfg ", rate_limit: [p]" "$RL" && per_request local_rl $F -- "$BIN" run --config "$W/f.yaml" ;;
    jwt_rl) ficus_cfg ", rate_limit: [p], identity: { jwt: idp }" "$RL
$JWT" && per_request jwt_rl $F "Authorization: Bearer $TOKEN" -- "$BIN" run --config "$W/f.yaml" ;;
    nginx_plain) nginx_cfg "" && per_request nginx_plain $X -- nginx -c "$W/nx.conf" ;;
    nginx_rl) nginx_cfg "limit_req zone=z burst=1000000 nodelay;" \
      'limit_req_zone $binary_remote_addr zone=z:10m rate=1000000r/s;' &&
      per_request nginx_rl $X -- nginx -c "$W/nx.conf" ;;
    bare) per_request bare http://127.0.0.1:18286/ -- "$T/examples/bare_proxy" 127.0.0.1:18286 127.0.0.1:$UP ;;
    *) echo "unknown row $r" >&2; exit 1 ;;
  esac
done
