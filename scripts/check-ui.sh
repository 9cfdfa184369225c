#!/usr/bin/env bash
# The migration page (/admin/ui) in headless Chromium: starts `ficus demo` on free ports, sends
# ~15 s of traffic so several 10 s history steps exist, renders the page, takes a screenshot
# (a temp file, never committed) and asserts on the DOM that the overview bar and the per-route
# plots carry data points, that the drift and learned-noise tables list fields (the demo's
# legacy backend stamps a volatile `generated_at`) and that no script error happened. Exits
# non-zero otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
[ -n "$CHROMIUM" ] || { echo "check-ui: chromium not found" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

timeout 900 cargo build --quiet --locked
bin="${CARGO_TARGET_DIR:-target}/debug/ficus"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
listen=127.0.0.1:$(free_port); admin=127.0.0.1:$(free_port)
"$bin" demo --listen "$listen" --admin "$admin" --legacy 127.0.0.1:$(free_port) \
  --modern 127.0.0.1:$(free_port) --idp 127.0.0.1:$(free_port) >"$work/demo.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -fsS -m 1 "http://$admin/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS -m 2 "http://$admin/readyz" >/dev/null || { echo "check-ui: the demo did not start" >&2; cat "$work/demo.log" >&2; exit 1; }

# ~15 s of traffic on both sides of the `orders` migration and the other routes.
end=$((SECONDS + 15))
while ((SECONDS < end)); do
  for u in alice bob carol dave beta-tester; do
    curl -s -m 2 -o /dev/null "http://$listen/api/orders/7" -H "X-User: $u" || true
  done
  curl -s -m 2 -o /dev/null "http://$listen/api/orders/404" -H 'X-User: alice' || true
  curl -s -m 2 -o /dev/null "http://$listen/legacy/page" || true
  sleep 0.1
done

flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
  --disable-component-update --disable-sync --user-data-dir="$work/profile" --virtual-time-budget=8000)
shot=${UI_SCREENSHOT:-$work/ficus-ui.png}
timeout 60 "$CHROMIUM" "${flags[@]}" --window-size=1200,2400 --screenshot="$shot" "http://$admin/admin/ui" >/dev/null 2>&1 || true
timeout 60 "$CHROMIUM" "${flags[@]}" --dump-dom "http://$admin/admin/ui" >"$work/dom.html" 2>"$work/chromium.log" || true

python3 - "$work/dom.html" "$shot" <<'PY'
import re, sys, os
dom = open(sys.argv[1], encoding="utf-8").read()
def count(series):
    return len(re.findall(r'<circle[^>]*data-point=""[^>]*data-series="%s"' % re.escape(series), dom))
problems = []
err = re.search(r'<body[^>]*data-script-error="([^"]*)"', dom)
if err:
    problems.append("script error: " + err.group(1))
overview = len(re.findall(r'<rect[^>]*data-point=""', dom))
if overview == 0:
    problems.append("the overview bar has no segment")
counts = {s: count(s) for s in ["requests-legacy", "requests-modern", "p99-legacy", "p99-modern"]}
for s, n in counts.items():
    if n == 0:
        problems.append(f"no data point in series {s}")
tables = {k: re.findall(r'<tr[^>]*data-table="%s"[^>]*data-field="([^"]*)"' % k, dom) for k in ["drift", "noise"]}
if not tables["drift"]:
    problems.append("the drift table lists no field")
if "generated_at" not in tables["noise"]:
    problems.append("generated_at was not shown as learned noise: %s" % tables["noise"])
shot = sys.argv[2]
if not (os.path.exists(shot) and os.path.getsize(shot) > 0):
    problems.append("no screenshot")
print(f"check-ui: overview segments {overview}, points {counts}, tables {tables}, screenshot {shot}")
if problems:
    print("check-ui: FAILED: " + "; ".join(problems), file=sys.stderr)
    sys.exit(1)
print("check-ui: ok")
PY
