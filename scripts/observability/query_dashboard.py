"""Evaluates every query of a Grafana dashboard against a Prometheus:
`query_dashboard.py DASHBOARD_JSON PROMETHEUS_URL SECONDS`.

Grafana's variables are replaced by concrete values (the `All` choice of `route` and `side`,
fixed intervals). Every query must succeed and return at least one sample that is a number
(retrying until SECONDS pass, as rates need two scrapes). The `route` variable's query must
find label values too. Exit status 1 lists the queries that failed.
"""
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

dashboard_path, prom, seconds = sys.argv[1], sys.argv[2].rstrip("/"), float(sys.argv[3])
dashboard = json.load(open(dashboard_path))

VARIABLES = {
    "${datasource}": "prometheus",
    "$__rate_interval": "30s",
    "$__interval": "15s",
    "$__range": "5m",
    "${route}": ".*",
    "$route": ".*",
    "${side}": ".*",
    "$side": ".*",
}


def exprs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                yield node.get("refId", "?"), v
            else:
                yield from exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from exprs(v)


def panel_queries():
    for panel in dashboard["panels"]:
        for sub in [panel] + panel.get("panels", []):
            for ref, expr in exprs(sub.get("targets", [])):
                yield f'{sub["title"]} [{ref}]', expr


def substitute(expr):
    for k, v in VARIABLES.items():
        expr = expr.replace(k, v)
    if "$" in expr:
        raise ValueError(f"unsubstituted variable in {expr}")
    return expr


def get(path, params):
    url = f"{prom}{path}?{urllib.parse.urlencode(params, doseq=True)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def check(expr):
    """None when the query returned data, else why not."""
    answer = get("/api/v1/query", {"query": expr})
    if answer.get("status") != "success":
        return f'error: {answer.get("errorType")}: {answer.get("error")}'
    result = answer["data"]["result"]
    if not result:
        return "no data"
    values = [float(s["value"][1]) for s in result]
    if all(math.isnan(v) for v in values):
        return "only NaN"
    return None


queries = [(name, substitute(expr)) for name, expr in panel_queries()]
if not queries:
    sys.exit("no queries found in the dashboard")
variable = "label_values(ficus_requests_total, route)"
pending = dict(queries)
why = {}
deadline = time.monotonic() + seconds
while True:
    for name, expr in list(pending.items()):
        why[name] = check(expr)
        if why[name] is None:
            del pending[name]
    routes = get("/api/v1/label/route/values", {"match[]": "ficus_requests_total"}).get("data", [])
    if not pending and routes:
        break
    if time.monotonic() > deadline:
        break
    time.sleep(1)

for name, expr in queries:
    print(f'{"FAIL" if name in pending else "ok  "} {name}: {expr}' + (f"  -> {why[name]}" if name in pending else ""))
print(f"{'ok  ' if routes else 'FAIL'} variable route: {variable} -> {routes}")
if pending or not routes:
    sys.exit(f"{len(pending)} of {len(queries)} dashboard queries returned no data")
print(f"all {len(queries)} dashboard queries returned data")
