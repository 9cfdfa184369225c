"""Traffic for scripts/check-observability.sh: `traffic.py BASE_URL SECONDS`.

Covers every dashboard panel: a migration route (both sides, shadow comparisons), a
rate-limited route (allowed and limited), a route whose upstream refuses connections (5xx,
then its breaker opens), requests no route matches, and an unknown method.
"""
import sys
import time
import urllib.error
import urllib.request

base, seconds = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + seconds


def hit(path, method="GET", data=None):
    req = urllib.request.Request(base + path, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()
    except urllib.error.HTTPError as e:
        e.read()
    except (urllib.error.URLError, OSError):
        pass


i = 0
while time.monotonic() < deadline:
    i += 1
    hit(f"/orders/{i}")
    hit(f"/orders/{i}", "POST", b"{}")
    hit("/limited/x")
    hit("/broken/x")
    hit(f"/nowhere/{i}")
    hit("/orders/x", "PROPFIND")
    time.sleep(0.05)
