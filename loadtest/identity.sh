#!/usr/bin/env bash
# What identity costs on the plain route: RS256 and ES256 tokens on a verified-token cache hit
# and on a miss (the cache disabled, so every request verifies the signature), the same RS256
# token (it carries a `kid`) verified with a static PEM file key instead of the JWKS, an internal
# JWT signed towards legacy, and an RFC 7662 introspection cache hit. Each run also prints the
# verified-token cache's hits and misses from /metrics (ficus_jwt_cache_total). ficus pinned to
# CPU0 (one worker); wrk, the bundled upstream, a tiny JWKS server and an introspection endpoint
# on CPU1.
# Usage: loadtest/identity.sh [duration_s=8] [connections=64]. Loopback only; stops by itself.
# Honours CARGO_TARGET_DIR; FICUS_BIN=path measures another ficus binary (e.g. an older build)
# with the same helpers.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-8}; C=${2:-64}
command -v wrk >/dev/null || { echo "wrk is needed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
cargo build --release --locked --bin ficus --example bench_upstream --example mint_token >&2
T=${CARGO_TARGET_DIR:-target}/release
BIN=${FICUS_BIN:-$T/ficus}
# The introspection endpoint's audience check (OPQ_CHECK= for a build that predates it).
OPQ_CHECK=${OPQ_CHECK-audiences: [bench]}
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
pin0=""; pin1=""
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then pin0="taskset -c 0"; pin1="taskset -c 1"; fi
$pin1 "$T/examples/bench_upstream" 127.0.0.1:18090 2>/dev/null &
# Keys, a JWKS and one token per algorithm, from the mint_token example.
"$T/examples/mint_token" "$W" >/dev/null
(cd "$W" && exec $pin1 python3 -m http.server 18091 --bind 127.0.0.1 >/dev/null 2>&1) &
sleep 0.5
# A minimal RFC 7662 endpoint: every token is active for an hour.
cat > "$W/introspect.py" <<'PY'
import json, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get('content-length', 0)))
        body = json.dumps({"active": True, "sub": "bench-user", "scope": "orders:read", "aud": "bench", "exp": int(time.time()) + 3600}).encode()
        self.send_response(200); self.send_header('content-type', 'application/json')
        self.send_header('content-length', str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
ThreadingHTTPServer(('127.0.0.1', 18092), H).serve_forever()
PY
$pin1 python3 "$W/introspect.py" &
echo -n "opaque-bench-token-0123456789" > "$W/opaque.token"
export BENCH_INTROSPECTION_SECRET=bench-secret
ROUTE_ID='jwt: idp, forward_claims: { sub: X-User-Id }'
JWKS_KEYS='jwks_url: "http://127.0.0.1:18091/jwks.json"'
run() { # name, token file, cache entries [, route identity [, provider keys]]
  local route_id=${4:-$ROUTE_ID} keys=${5:-$JWKS_KEYS}
  cat > "$W/f.yaml" <<YAML
log: { level: warn, access_log: false }
runtime: { worker_threads: 1 }
listeners: [ { name: bench, bind: 127.0.0.1:18084, limits: { max_connections: 20000 } } ]
admin: { bind: 127.0.0.1:19901 }
reload: { watch: false }
upstreams: { up: { endpoints: ["http://127.0.0.1:18090"] } }
routes:
  - { name: plain, match: { path_prefix: / }, upstream: up, identity: { $route_id } }
identity:
  jwt:
    idp: { issuer: "https://idp.bench/", audiences: [bench], algorithms: [RS256, ES256], $keys, cache_entries: $3 }
  introspection:
    opq: { url: "http://127.0.0.1:18092/introspect", client_id: ficus, client_secret_env: BENCH_INTROSPECTION_SECRET${OPQ_CHECK:+, $OPQ_CHECK} }
YAML
  $pin0 "$BIN" run --config "$W/f.yaml" >/dev/null 2>"$W/ficus.log" & local P=$!
  local tok; tok=$(cat "$W/$2")
  for _ in $(seq 50); do curl -sf -o /dev/null -H "Authorization: Bearer $tok" http://127.0.0.1:18084/ && break; sleep 0.1; done
  $pin1 wrk -t1 -c"$C" -d2s -H "Authorization: Bearer $tok" http://127.0.0.1:18084/ >/dev/null
  local t0 t1 out reqs
  t0=$(awk '{print $14+$15}' /proc/$P/stat)
  out=$($pin1 wrk -t1 -c"$C" -d"${D}s" -H "Authorization: Bearer $tok" http://127.0.0.1:18084/)
  t1=$(awk '{print $14+$15}' /proc/$P/stat)
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  local cache; cache=$(curl -sf http://127.0.0.1:19901/metrics \
    | sed -n 's/^ficus_jwt_cache_total{.*result="\([a-z]*\)"} \(.*\)/\1=\2/p' | tr '\n' ' ')
  printf '%-40s rps=%-10s cpu_us_per_req=%s non2xx=%s jwt_cache: %s\n' "$1" "$(echo "$out" | awk '/Requests\/sec/{print $2}')" \
    "$(awk -v a="$t0" -v b="$t1" -v r="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", (b-a)*1e6/hz/r}')" \
    "$(echo "$out" | awk '/Non-2xx/{print $5}')" "${cache:-n/a}"
  kill $P; wait $P 2>/dev/null || true
}
run "RS256, cache hit" rs256.token 100000
run "RS256, cache miss" rs256.token 0
run "RS256 + kid, PEM file key, cache hit" rs256.token 100000 "$ROUTE_ID" 'pem_file: rs256-public.pem'
run "RS256 + kid, PEM file key, cache miss" rs256.token 0 "$ROUTE_ID" 'pem_file: rs256-public.pem'
run "ES256, cache hit" es256.token 100000
run "ES256, cache miss" es256.token 0
run "RS256 hit + internal ES256 JWT to legacy" rs256.token 100000 \
  'jwt: idp, upstream_auth: { jwt: { algorithm: ES256, key_file: internal-es256.pem, issuer: "https://ficus.bench/", audience: legacy } }'
run "introspection, cache hit" opaque.token 100000 'introspection: opq, forward_claims: { sub: X-User-Id }'
