"""OpenTelemetry tracing, opt-in through the standard `OTEL_*` environment variables (the `otel` extra).

    pip install -e '.[otel]'
    OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 OTEL_SERVICE_NAME=sentiment sentiment-serve

On when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`) or an OTLP endpoint is set
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), unless `OTEL_SDK_DISABLED=true`. The OTLP
exporter (protobuf over HTTP) reads its own `OTEL_EXPORTER_OTLP_*` settings, the resource reads `OTEL_SERVICE_NAME`
and `OTEL_RESOURCE_ATTRIBUTES`, the propagator `OTEL_PROPAGATORS` (default W3C `traceparent` + baggage), so an
incoming `traceparent` is continued.

What is traced: one server span per request (opentelemetry-instrumentation-fastapi) carrying the model, its
version, the number of texts and tokens; under it a `queue wait` span (submitted until the micro-batcher took it)
and an `inference` span per onnxruntime call that scored its texts (with the call's batch size). The probes
(/healthz, /readyz, /metrics, /v2/health) are not traced.

Off, nothing here is imported by the app, no middleware is added and each batcher holds `tracer = None`: the cost is
one `is None` test per request and per call.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("sentiment.tracing")
EXPORTERS = ("otlp", "console")
UNTRACED = "healthz,readyz,metrics,v2/health"


def enabled(environ=os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def provider_from_env(environ=os.environ):
    """A TracerProvider exporting where the `OTEL_*` variables say; a bad exporter name stops start-up."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError as exc:
        raise RuntimeError(
            f"tracing is configured (OTEL_* variables) but the otel extra is not installed ({exc}); "
            f"pip install 'imdb-sentiment[otel]' or unset them"
        ) from exc
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise RuntimeError(f"OTEL_TRACES_EXPORTER: unknown exporter(s) {unknown}; this service knows {', '.join(EXPORTERS)}")
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; ours is only the default name.
    provider = TracerProvider(
        resource=Resource.create({} if environ.get("OTEL_SERVICE_NAME") else {"service.name": "sentiment-service"})
    )
    for name in names:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing on: exporting spans via %s", ", ".join(names))
    return provider


def instrument(app, provider) -> BatchTracer:
    """Server spans for `app` from `provider`; the returned BatchTracer adds the model's spans in the batchers."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=UNTRACED, exclude_spans=["receive", "send"])
    return BatchTracer(provider.get_tracer("service.batching"))


def _epoch_ns(perf: float) -> int:
    """A `time.perf_counter()` reading (what the batcher records) as the epoch nanoseconds spans take."""
    return time.time_ns() - int((time.perf_counter() - perf) * 1e9)


class BatchTracer:
    """Called by `MicroBatcher` (only when tracing is on) at the points only it sees."""

    def __init__(self, tracer):
        from opentelemetry import context, trace

        self.tracer, self._context, self._trace = tracer, context, trace

    def submitted(self, runtime, encoded) -> object | None:
        """Labels the request's span; returns the context its child spans hang from (None when not traced)."""
        span = self._trace.get_current_span()
        if not span.is_recording():
            return None
        span.set_attributes(
            {
                "sentiment.model": runtime.name,
                "sentiment.model_version": runtime.version,
                "sentiment.texts": len(encoded),
                "sentiment.tokens": sum(e.num_tokens for e in encoded),
            }
        )
        return self._context.get_current()

    def waited(self, parent, enqueued: float, taken: float) -> None:
        if parent is not None:
            span = self.tracer.start_span("queue wait", context=parent, start_time=_epoch_ns(enqueued))
            span.end(end_time=_epoch_ns(taken))

    def inferred(self, parents: list, started: float, ended: float, runtime, texts: int, tokens: int) -> None:
        """One `inference` span under each request whose texts were in this onnxruntime call."""
        attributes = {
            "sentiment.model": runtime.name,
            "sentiment.batch_texts": texts,
            "sentiment.batch_tokens": tokens,
            "sentiment.provider": runtime.provider,
        }
        for parent in parents:
            if parent is not None:
                span = self.tracer.start_span("inference", context=parent, start_time=_epoch_ns(started), attributes=attributes)
                span.end(end_time=_epoch_ns(ended))
