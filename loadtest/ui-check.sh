#!/usr/bin/env bash
# Loads the admin status page (/admin/ui) of a running `ficus demo` in headless Chromium and
# checks that it renders the live data: the route mid-migration with its progress bar, the
# backends' health, and a shadow diff. Needs Debian's `chromium` package. Loopback only.
# Usage: loadtest/ui-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CHROME=$(command -v chromium || command -v chromium-browser || true)
[ -n "$CHROME" ] || { echo "chromium is needed: apt-get install -y chromium" >&2; exit 1; }
cargo build --release --locked --bin ficus >&2
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
target/release/ficus demo >/dev/null 2>"$W/demo.log" &
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:9901/readyz && break; sleep 0.1; done
# Some traffic, so that there is something to show (the demo's backends disagree on purpose).
for u in alice bob carol dave erin; do curl -s -o /dev/null -H "X-User: $u" http://127.0.0.1:8080/api/orders/1; done
sleep 0.5
"$CHROME" --headless=new --no-sandbox --disable-gpu --virtual-time-budget=5000 \
  --dump-dom http://127.0.0.1:9901/admin/ui > "$W/dom.html" 2>"$W/chrome.log"
fail=0
check() { if grep -q -- "$1" "$W/dom.html"; then echo "ok: $2"; else echo "FAIL: $2"; fail=1; fi; }
check 'data-route="orders"' "the route mid-migration is listed"
check '50% on modern' "its progress bar shows the split"
check 'healthy</span>' "backend health is shown"
check 'header content-type' "a recent shadow diff is shown, field by field"
exit $fail
