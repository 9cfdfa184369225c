#!/usr/bin/env bash
# Checks deploy/prometheus and deploy/grafana against a real Prometheus:
#   1. promtool check rules / promtool test rules (the alerts' unit tests);
#   2. the dashboard JSON: a stable uid, the datasource/route/side variables;
#   3. end to end: ficus (FICUS_BIN, else `cargo build --bin ficus`) on a temp config with a
#      migration route (shadow, rollout), a rate-limited route (Redis store), an upstream that
#      refuses connections (breaker) and a TLS listener; traffic on every route; Prometheus
#      scraping ficus every second with the rules loaded; then every dashboard query through
#      Prometheus's HTTP API must return data, and the certificate alert must fire.
# Needs: prometheus + promtool (Debian: prometheus), redis-server, python3, openssl, curl.
# Bounded: each wait has a deadline; everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

for tool in promtool prometheus redis-server python3 openssl curl; do
  command -v "$tool" >/dev/null || { echo "check-observability: $tool is missing" >&2; exit 1; }
done

echo "== promtool check rules"
promtool check rules deploy/prometheus/ficus-rules.yaml
echo "== promtool test rules"
(cd deploy/prometheus && promtool test rules ficus-rules.test.yaml)

echo "== dashboard JSON"
python3 - deploy/grafana/ficus-dashboard.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert d.get("uid") == "ficus-gateway", f"uid: {d.get('uid')!r}"
names = {v["name"]: v for v in d["templating"]["list"]}
for want in ("datasource", "route", "side"):
    assert want in names, f"variable {want} missing"
assert names["datasource"]["type"] == "datasource" and names["datasource"]["query"] == "prometheus"
ids = [p["id"] for p in d["panels"]]
assert len(ids) == len(set(ids)), "panel ids repeat"
for p in d["panels"]:
    if p["type"] != "row":
        assert p["datasource"]["uid"] == "${datasource}", f'{p["title"]}: fixed datasource'
        assert p.get("targets"), f'{p["title"]}: no query'
print(f'uid {d["uid"]}, variables {sorted(names)}, {len(d["panels"])} panels')
PY

bin=${FICUS_BIN:-}
if [ -z "$bin" ]; then
  echo "== cargo build --bin ficus"
  cargo build --locked --bin ficus
  bin="${CARGO_TARGET_DIR:-$root/target}/debug/ficus"
fi
[ -x "$bin" ] || { echo "check-observability: no ficus binary at $bin" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Free loopback ports, chosen by the kernel (a race with other processes is unlikely here).
read -r public tls admin dead redis prom < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(6)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
for s in ss: s.close()')

wait_for() { # wait_for SECONDS WHAT COMMAND...
  local until=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > until)); then
      echo "check-observability: timed out waiting for $what" >&2
      for log in "$work"/*.log; do echo "--- $log" >&2; tail -20 "$log" >&2; done
      exit 1
    fi
    sleep 0.2
  done
}

echo "== start upstreams, redis, ficus"
for side in legacy modern; do
  python3 scripts/observability/upstream.py "$side" "$work/$side.port" >"$work/$side.log" 2>&1 &
  pids+=($!)
done
redis-server --port "$redis" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
wait_for 10 "the upstreams" test -s "$work/legacy.port" -a -s "$work/modern.port"
legacy=$(cat "$work/legacy.port")
modern=$(cat "$work/modern.port")

# Ten days left: the certificate alert must fire.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 10 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1

cat >"$work/ficus.yaml" <<YAML
log: { level: warn, access_log: false }
listeners:
  - { name: main, bind: '127.0.0.1:$public' }
  - name: public-tls
    bind: '127.0.0.1:$tls'
    tls:
      certs:
        - { cert: cert.pem, key: key.pem }
admin: { bind: '127.0.0.1:$admin' }
reload: { watch: false }
upstreams:
  legacy: { endpoints: ['http://127.0.0.1:$legacy'] }
  modern: { endpoints: ['http://127.0.0.1:$modern'] }
  broken:
    endpoints: ['http://127.0.0.1:$dead']
    circuit_breaker: { window: 10s, min_requests: 3, failure_rate: 0.5, open_for: 5m, max_open_for: 10m }
routes:
  - name: orders
    match: { path_prefix: /orders }
    migration:
      legacy: { upstream: legacy }
      modern: { upstream: modern }
      modern_percent: 50
      shadow: { percent: 100 }
      rollout: { step: 10, every: 1h, min_requests: 1000000 }
  - name: limited
    match: { path_prefix: /limited }
    upstream: legacy
    rate_limit: [per-client]
  - name: broken
    match: { path_prefix: /broken }
    upstream: broken
rate_limits:
  store: { redis_urls: ['redis://127.0.0.1:$redis/0'] }
  policies:
    per-client: { key: client_ip, rate: 5/s, burst: 5 }
YAML
"$bin" check --config "$work/ficus.yaml"
"$bin" run --config "$work/ficus.yaml" >"$work/ficus.log" 2>&1 &
pids+=($!)
wait_for 30 "ficus to be ready" curl -fsS "http://127.0.0.1:$admin/readyz"

echo "== traffic and prometheus"
python3 scripts/observability/traffic.py "http://127.0.0.1:$public" 300 >"$work/traffic.log" 2>&1 &
pids+=($!)
cat >"$work/prometheus.yml" <<YAML
global: { scrape_interval: 1s, evaluation_interval: 1s }
rule_files: ['$root/deploy/prometheus/ficus-rules.yaml']
scrape_configs:
  - job_name: ficus
    static_configs: [{ targets: ['127.0.0.1:$admin'] }]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$prom" >"$work/prometheus.log" 2>&1 &
pids+=($!)
wait_for 30 "prometheus to be ready" curl -fsS "http://127.0.0.1:$prom/-/ready"
up() { curl -fsS "http://127.0.0.1:$prom/api/v1/query?query=up%7Bjob%3D%22ficus%22%7D%3D%3D1" | grep -q '"value"'; }
wait_for 30 "prometheus to scrape ficus" up
sleep 5 # a few more scrapes, so rates have two samples

echo "== every dashboard query, through Prometheus"
python3 scripts/observability/query_dashboard.py deploy/grafana/ficus-dashboard.json "http://127.0.0.1:$prom" 60

echo "== the traffic produced what the panels are about"
has_data() { curl -fsS --get --data-urlencode "query=$1" "http://127.0.0.1:$prom/api/v1/query" | grep -q '"result":\[{'; }
for expr in \
  'http_server_request_duration_seconds_count{http_route="orders",side="legacy"} > 0' \
  'http_server_request_duration_seconds_count{http_route="orders",side="modern"} > 0' \
  'http_server_request_duration_seconds_count{http_route="broken",http_response_status_code=~"5.."} > 0' \
  'http_server_request_duration_seconds_count{http_request_method="_OTHER"} > 0' \
  'http_client_request_duration_seconds_count{server_address="broken",error_type="connect"} > 0' \
  'ficus_circuit_state{upstream="broken"} == 1' \
  'ficus_ratelimit_decisions_total{result="limited"} > 0' \
  'ficus_ratelimit_decisions_total{result="allowed"} > 0' \
  'ficus_shadow_comparisons_total{route="orders",result="mismatch"} > 0' \
  'ficus_shadow_comparisons_total{route="orders",result="match"} > 0' \
  'ficus_migration_modern_percent{route="orders"} == 50'; do
  wait_for 30 "$expr" has_data "$expr"
  echo "ok   $expr"
done
if has_data 'count({__name__=~"http_.*", http_request_method="PROPFIND"})'; then
  echo "check-observability: a client's method became a label value" >&2
  exit 1
fi

echo "== the certificate alert fires on real data"
cert_alert() { curl -fsS "http://127.0.0.1:$prom/api/v1/alerts" | grep -q '"alertname":"FicusCertificateExpiringSoon".*"state":"firing"'; }
wait_for 30 "FicusCertificateExpiringSoon to fire" cert_alert
echo "check-observability: ok"
