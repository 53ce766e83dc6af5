"""Prometheus metrics (prometheus-client), served at /metrics.

Each app gets its own `CollectorRegistry`, so several apps (tests, benchmarks) never collide in the global one.
Routes are labelled by their path template, never the raw path, so a scan of random URLs cannot explode the label
set. Two drift signals watch the inputs and outputs: the score distribution and the share of unknown tokens per
request (a rising share means the traffic's vocabulary moved away from the training data).

With several workers (service/workers.py) PROMETHEUS_MULTIPROC_DIR is set before prometheus-client is imported, so
every value is written to a per-process file and /metrics collects all workers' files: counters and histograms are
summed, the queue depth is the live workers' sum and a model is listed while any live worker serves it.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SHARE_BUCKETS = tuple(i / 10 for i in range(1, 11))


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _InfoGauge(Gauge):
    def remove(self, *labelvalues) -> None:
        # In multiprocess mode the value lives on in this process's file after remove(): zero it first, so a model
        # version this worker no longer serves stops counting (the gauge is a max over live workers).
        if multiprocess_dir():
            self.labels(*labelvalues).set(0)
        super().remove(*labelvalues)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("sentiment_requests_total", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram(
            "sentiment_request_duration_seconds",
            "HTTP request latency",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "sentiment_batch_size", "texts per onnxruntime call", ["model", "provider"], buckets=BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "sentiment_inference_seconds",
            "duration of one onnxruntime call",
            ["model", "provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "sentiment_queue_wait_seconds",
            "time a text waited before its onnxruntime call",
            ["model"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "sentiment_queue_depth", "texts waiting for the model", ["model"], registry=r, multiprocess_mode="livesum"
        )
        self.tokens = Counter("sentiment_tokens_scored_total", "tokens scored", ["model", "provider"], registry=r)
        self.score = Histogram(
            "sentiment_score", "P(positive) per scored text (drift signal)", ["model"], buckets=SHARE_BUCKETS, registry=r
        )
        self.unknown_share = Histogram(
            "sentiment_unknown_token_share",
            "share of [UNK] tokens per text (drift signal)",
            ["model"],
            buckets=(0.0, 0.01, 0.02, 0.05) + SHARE_BUCKETS,
            registry=r,
        )
        self.model_info = _InfoGauge(
            "sentiment_model_info",
            "loaded models and the execution provider they run on",
            ["model", "version", "provider"],
            registry=r,
            multiprocess_mode="livemax",
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        labels = (route, method, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def observe_text(self, model: str, score: float, unknown_share: float) -> None:
        self.score.labels(model).observe(score)
        self.unknown_share.labels(model).observe(unknown_share)

    def render(self) -> tuple[bytes, str]:
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        merged = CollectorRegistry()  # every worker's files, this one's included (its registry holds no values)
        multiprocess.MultiProcessCollector(merged, path=path)
        return generate_latest(merged), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every HTTP request and its latency by route template, method and final status (errors included; 499
    when the client left before any answer, e.g. mid-upload)."""

    def __init__(self, app, metrics: Metrics, known_paths: frozenset[str] = frozenset()):
        # Requests answered before routing (a 413 for the body) are labelled with their path when it is a route's.
        self.app, self.metrics, self.known_paths = app, metrics, known_paths

    def _route(self, scope) -> str:
        route = scope.get("route")
        if route is not None:
            return route.path
        if scope["path"] in self.known_paths:
            return scope["path"]
        # FastAPI sets no "route" for a mounted app, only its "endpoint": the one mount is the page at /.
        return "static" if "endpoint" in scope else "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, client_left = time.perf_counter(), None, False

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def watching_receive():
            nonlocal client_left
            message = await receive()
            client_left = client_left or message["type"] == "http.disconnect"
            return message

        try:
            await self.app(scope, watching_receive, recording_send)
        finally:
            if status is None:
                # No answer started: the client left first (an abandoned upload: 499, as for a request abandoned
                # while queued), or the app failed before answering (500).
                status = 499 if client_left else 500
            self.metrics.observe_request(self._route(scope), scope["method"], status, time.perf_counter() - start)
