#!/usr/bin/env bash
# End-to-end container test (`make test-container`): builds the image with podman, measures its size and cold start,
# checks a graceful SIGTERM stop, brings `api` up with podman-compose, waits for healthy, scores reviews over the
# published port, checks the process is not root and the root filesystem is read-only, scrapes it with a real
# Prometheus (tests/container/prometheus.sh), runs the `batch` profile on a small file, and tears everything down,
# also on failure. Not part of `pytest`: it needs a container engine and a few minutes.
#
#   bash tests/container/run.sh
#   SENTIMENT_TEST_ARTIFACT=/path/to/artifact bash tests/container/run.sh   # build with that artifact, not exported/
#
# Sets podman up with ../shared/tools/container-env.sh when it is missing. Leaves the image ($IMAGE) behind so the
# next run builds from cache; `podman rmi localhost/imdb-sentiment:ctest` removes it.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
IMAGE=${SENTIMENT_TEST_IMAGE:-localhost/imdb-sentiment:ctest}
PROJECT=sentiment-ctest-$$
COMPOSE=(podman-compose -p "$PROJECT" -f "$ROOT/docker-compose.yml")
READY_TIMEOUT=${READY_TIMEOUT:-120}

log() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
# wait_ready URL SECONDS: poll until the URL answers 200.
wait_ready() {
  local deadline=$((SECONDS + $2))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# ---- engine ---------------------------------------------------------------------------------------------------
if ! command -v podman >/dev/null || ! command -v podman-compose >/dev/null \
   || ! podman image exists docker.io/library/python:3.11-slim; then
  log "setting up podman (../shared/tools/container-env.sh)"
  bash "$ROOT/../shared/tools/container-env.sh"
fi
command -v curl >/dev/null || fail "curl is needed on the host"

WORK=$(mktemp -d /tmp/sentiment-ctest.XXXXXX)
STANDALONE=sentiment-ctest-run-$$
cleanup() {
  local rc=$?
  set +e
  if ((rc != 0)); then
    log "failed (rc=$rc): container logs"
    podman logs "$STANDALONE" 2>/dev/null | tail -30
    for c in $(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT"); do podman logs "$c" 2>&1 | tail -30; done
  fi
  log "teardown"
  podman rm -f -t 5 "$STANDALONE" >/dev/null 2>&1
  "${COMPOSE[@]}" --profile batch down -v -t 10 >/dev/null 2>&1
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- compose file ---------------------------------------------------------------------------------------------
log "podman-compose config (every profile)"
for profile in "" gpu batch monitoring; do
  "${COMPOSE[@]}" ${profile:+--profile "$profile"} config >/dev/null || fail "compose config, profile '${profile:-default}'"
done

# ---- build ----------------------------------------------------------------------------------------------------
CONTEXT=$ROOT
if [ -n "${SENTIMENT_TEST_ARTIFACT:-}" ]; then
  # A staged context: the files .dockerignore lets in, with the given artifact as the only one in exported/.
  [ -f "$SENTIMENT_TEST_ARTIFACT/manifest.json" ] || fail "SENTIMENT_TEST_ARTIFACT has no manifest.json"
  CONTEXT=$WORK/context
  mkdir -p "$CONTEXT/exported"
  cp -r Dockerfile .dockerignore pyproject.toml README.md service "$CONTEXT/"
  cp -r "$SENTIMENT_TEST_ARTIFACT" "$CONTEXT/exported/$(basename "$SENTIMENT_TEST_ARTIFACT")"
elif ! compgen -G "exported/*/manifest.json" >/dev/null && [ ! -f exported/manifest.json ]; then
  fail "no artifact in exported/ (export one, or set SENTIMENT_TEST_ARTIFACT=/path/to/artifact)"
fi
log "podman build $IMAGE (context: $CONTEXT)"
start=$(now)
podman build --network host --format docker -t "$IMAGE" -f "$ROOT/Dockerfile" "$CONTEXT"
echo "build: $(elapsed "$start") s"
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
base=$(podman image inspect docker.io/library/python:3.11-slim --format '{{.Size}}')
echo "image size: $((size / 1000000)) MB (base python:3.11-slim here: $((base / 1000000)) MB, added: $(((size - base) / 1000000)) MB)"
[ "$(podman image inspect "$IMAGE" --format '{{.Config.User}}')" = 10001:10001 ] || fail "image USER is not 10001"
# (grep reads here-strings, not pipes: with pipefail, `grep -q` exiting early can fail the writer with SIGPIPE.)
grep -q readyz <<<"$(podman image inspect "$IMAGE" --format '{{json .Config.Healthcheck}}')" || fail "image has no HEALTHCHECK"

# ---- cold start and graceful stop (plain podman run, read-only root) ------------------------------------------
log "cold start: podman run -> /readyz 200"
port=$(free_port)
start=$(now)
podman run -d --name "$STANDALONE" --network bridge -p "127.0.0.1:$port:8000" --read-only --tmpfs /tmp \
  --cap-drop ALL "$IMAGE" >/dev/null
wait_ready "http://127.0.0.1:$port/readyz" "$READY_TIMEOUT" || fail "not ready within ${READY_TIMEOUT}s"
echo "cold start to ready: $(elapsed "$start") s"
log "SIGTERM stops it gracefully"
start=$(now)
podman stop -t 30 "$STANDALONE" >/dev/null
echo "stopped in $(elapsed "$start") s"
[ "$(podman inspect "$STANDALONE" --format '{{.State.ExitCode}}')" = 0 ] || fail "exit status after SIGTERM is not 0"
grep -q "Finished server process" <<<"$(podman logs "$STANDALONE" 2>&1)" || fail "no graceful shutdown in the logs"
podman rm "$STANDALONE" >/dev/null

# ---- compose: api ---------------------------------------------------------------------------------------------
API_PORT=$(free_port)
export SENTIMENT_IMAGE=$IMAGE API_PORT
log "podman-compose up -d api (port $API_PORT)"
"${COMPOSE[@]}" up -d --no-build api
cid=$(podman ps -q --filter "label=io.podman.compose.project=$PROJECT" --filter "label=com.docker.compose.service=api")
[ -n "$cid" ] || fail "the api container is not running"
# No systemd here to run podman's healthcheck timers: run the compose healthcheck until it passes.
deadline=$((SECONDS + READY_TIMEOUT))
until podman healthcheck run "$cid" >/dev/null 2>&1; do
  ((SECONDS < deadline)) || fail "api not healthy within ${READY_TIMEOUT}s"
  sleep 1
done
[ "$(podman inspect "$cid" --format '{{.State.Health.Status}}')" = healthy ] || fail "health status is not healthy"
echo "api healthy"

log "score reviews over the published port"
score() {
  curl -sf "http://127.0.0.1:$API_PORT/v1/sentiment" -H 'content-type: application/json' \
    -d "$(python3 -c 'import json, sys; print(json.dumps({"text": sys.argv[1]}))' "$1")"
}
pos=$(score "A wonderful, moving film. The cast is superb and I loved every minute of it.") || fail "POST /v1/sentiment"
neg=$(score "An awful, boring waste of time. The worst film I have seen; terrible acting.") || fail "POST /v1/sentiment"
echo "positive review: $pos"
echo "negative review: $neg"
python3 - "$pos" "$neg" <<'EOF' || fail "unexpected scores"
import json, sys
pos, neg = (json.loads(a) for a in sys.argv[1:])
for r in (pos, neg):
    assert r["label"] in r["probabilities"] and 0.0 <= r["score"] <= 1.0, r
assert pos["probabilities"]["positive"] > neg["probabilities"]["positive"], (pos, neg)
EOF
curl -sf "http://127.0.0.1:$API_PORT/v1/models" >/dev/null || fail "GET /v1/models"
metrics=$(curl -sf "http://127.0.0.1:$API_PORT/metrics") || fail "GET /metrics"
grep -q '^sentiment_requests_total{' <<<"$metrics" || fail "no request counter in /metrics"

log "hardening: non-root, read-only root filesystem, no torch, no compiler"
uid=$(podman exec "$cid" sh -c 'awk "/^Uid:/ {print \$2}" /proc/1/status')
echo "PID 1 runs as uid $uid"
[ "$uid" != 0 ] || fail "the service runs as root"
[ "$(podman inspect "$cid" --format '{{.HostConfig.ReadonlyRootfs}}')" = true ] || fail "root filesystem not read-only"
if out=$(podman exec "$cid" touch /app/probe 2>&1); then fail "could write /app"; fi
grep -q "Read-only file system" <<<"$out" || fail "writing /app failed, but not for a read-only fs: $out"
podman exec "$cid" touch /tmp/probe || fail "/tmp is not writable"
podman exec "$cid" python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
  || fail "torch is in the image"
if podman exec "$cid" sh -c 'command -v gcc || command -v cc'; then fail "a compiler in the image"; fi
# The local stand-in for python:3.11-slim has curl (the official image has none): only the image's own layers count.
if ! podman run --rm docker.io/library/python:3.11-slim sh -c 'command -v curl' >/dev/null 2>&1 \
   && podman exec "$cid" sh -c 'command -v curl'; then fail "curl in the image"; fi
echo "ok"

# ---- Prometheus scraping the running api with deploy/prometheus.yml --------------------------------------------
log "prometheus (Debian package) scraping the api with deploy/prometheus.yml"
bash "$ROOT/tests/container/prometheus.sh" "127.0.0.1:$API_PORT"

# ---- compose: batch profile -----------------------------------------------------------------------------------
log "podman-compose --profile batch run --rm batch"
export BATCH_DATA=$WORK/data BATCH_INPUT=reviews.jsonl BATCH_OUTPUT=scored.jsonl
mkdir -p "$BATCH_DATA"
chmod 0777 "$BATCH_DATA"  # the job runs as uid 10001 and creates out/ (private temp dir)
cat >"$BATCH_DATA/reviews.jsonl" <<'EOF'
{"id": "r1", "text": "A wonderful, moving film. The cast is superb."}
{"id": "r2", "text": "Dull, stupid and far too long. I hated it."}
{"id": "r3", "text": "The plot was fine and the music was nice."}
EOF
"${COMPOSE[@]}" --profile batch run --rm -T batch
python3 - "$BATCH_DATA/out/scored.jsonl" <<'EOF' || fail "batch output"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
assert [r["id"] for r in rows] == ["r1", "r2", "r3"], rows
assert all(r["label"] in ("negative", "positive") and 0 <= r["score"] <= 1 for r in rows), rows
print(f"batch: {len(rows)} rows scored: " + ", ".join(f"{r['id']}={r['label']}" for r in rows))
EOF
[ -f "$BATCH_DATA/out/scored.jsonl.summary.json" ] || fail "no batch summary"

log "container tests passed"
