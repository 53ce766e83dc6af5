#!/usr/bin/env bash
# deploy/prometheus.yml against a live service, with a real Prometheus (Debian's `prometheus` package; registry
# images cannot be pulled here): promtool validates the committed file, then Prometheus runs a copy of it with the
# compose address `api:8000` swapped for TARGET, and its HTTP API must show the target up, the request counter
# scraped, and every query of the Grafana dashboard evaluating without error.
#
#   bash tests/container/prometheus.sh 127.0.0.1:8000     # TARGET: host:port of a running service
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=${1:?usage: prometheus.sh HOST:PORT}
TIMEOUT=${PROMETHEUS_TIMEOUT:-60}

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "installing Debian's prometheus package"
  apt-get update -qq
  # policy-rc.d keeps the package from starting its own service where there is an init system.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check config deploy/prometheus.yml

work=$(mktemp -d /tmp/sentiment-prom.XXXXXX)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

sed "s/\"api:8000\"/\"$TARGET\"/" deploy/prometheus.yml >"$work/prometheus.yml"
grep -q "\"$TARGET\"" "$work/prometheus.yml" || { echo "FAIL: no api:8000 target in deploy/prometheus.yml" >&2; exit 1; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$port" >"$work/prometheus.log" 2>&1 &
pid=$!
echo "prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}') on 127.0.0.1:$port, pid $pid, scraping $TARGET"

# Poll the HTTP API until the target is up and the counter has been scraped, then check the dashboard's queries.
if ! python3 - "http://127.0.0.1:$port" "$TARGET" "$TIMEOUT" deploy/grafana/dashboards/sentiment.json <<'EOF'; then
import json, sys, time, urllib.parse, urllib.request

base, target, timeout, dashboard = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]

def api(path, **params):
    url = f"{base}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]

deadline, last = time.monotonic() + timeout, None
while True:
    try:
        targets = api("targets")["activeTargets"]
        mine = [t for t in targets if t["labels"].get("instance") == target]
        samples = api("query", query='sentiment_requests_total{job="sentiment-api"}')["result"]
        if mine and mine[0]["health"] == "up" and samples:
            break
        last = (mine and {k: mine[0][k] for k in ("health", "lastError")}) or targets
    except OSError as exc:  # Prometheus still starting
        last = exc
    if time.monotonic() > deadline:
        sys.exit(f"FAIL: target {target} not up with sentiment_requests_total scraped after {timeout:.0f}s: {last}")
    time.sleep(1)
print(f"target {target}: up (job {mine[0]['labels']['job']}, scrape url {mine[0]['scrapeUrl']})")
for s in samples:
    print(f"  sentiment_requests_total{{route={s['metric']['route']!r}, status={s['metric']['status']!r}}} = {s['value'][1]}")

exprs = [t["expr"] for p in json.load(open(dashboard))["panels"] for t in p["targets"]]
for expr in exprs:
    api("query", query=expr.replace("$__rate_interval", "1m"))
print(f"all {len(exprs)} dashboard queries evaluate")
EOF
  echo "--- prometheus log" >&2; tail -20 "$work/prometheus.log" >&2
  exit 1
fi
