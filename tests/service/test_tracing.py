"""OpenTelemetry tracing (service/tracing.py): spans recorded with the SDK's in-memory exporter."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service import tracing
from service.app import create_app

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
OTEL_VARS = ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


@pytest.fixture
def traced(make_settings):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with TestClient(create_app(make_settings(), tracer_provider=provider)) as client:
        yield client, exporter


def spans_of(exporter, trace_id: int) -> dict:
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
    return {
        "server": [s for s in spans if s.kind == SpanKind.SERVER],
        "queue wait": [s for s in spans if s.name == "queue wait"],
        "inference": [s for s in spans if s.name == "inference"],
    }


def test_request_span_continues_traceparent_with_model_spans_under_it(traced):
    client, exporter = traced
    r = client.post(
        "/v1/sentiment/batch",
        json={"items": [{"text": "Loved it, great film."}, {"text": "Dull."}]},
        headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
    )
    assert r.status_code == 200
    spans = spans_of(exporter, int(TRACE_ID, 16))
    (server,) = spans["server"]
    assert server.parent.span_id == int(PARENT_ID, 16)  # continued, not a new trace
    attrs = server.attributes
    assert attrs["sentiment.model"] == "tiny-lstm" and attrs["sentiment.model_version"] == "0.0.1"
    assert attrs["sentiment.texts"] == 2
    assert attrs["sentiment.tokens"] == sum(item["num_tokens"] for item in r.json()["results"])
    (wait,) = spans["queue wait"]
    assert spans["inference"], "no inference span"
    for child in [wait, *spans["inference"]]:
        assert child.parent.span_id == server.context.span_id
        assert server.start_time <= child.start_time <= child.end_time <= server.end_time
    assert wait.end_time <= min(s.start_time for s in spans["inference"])
    assert sum(s.attributes["sentiment.batch_texts"] for s in spans["inference"]) >= 2


@pytest.mark.parametrize(
    "path, body",
    [
        ("/predict", {"inputs": "A great film."}),
        ("/v2/models/tiny-lstm/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Great."]}]}),
    ],
)
def test_protocol_routes_are_traced_alike(traced, path, body):
    client, exporter = traced
    assert client.post(path, json=body, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}).status_code == 200
    spans = spans_of(exporter, int(TRACE_ID, 16))
    assert spans["server"][0].attributes["sentiment.texts"] == 1
    assert len(spans["queue wait"]) == 1 and len(spans["inference"]) == 1


def test_probes_are_not_traced(traced):
    client, exporter = traced
    assert client.get("/readyz").status_code == 200
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize(
    "environ, on",
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_opt_in_through_standard_variables(environ, on):
    assert tracing.enabled(environ) is on


def test_off_by_default_adds_nothing(make_settings, monkeypatch):
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    app = create_app(make_settings())
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
    with TestClient(app):
        assert all(b.tracer is None for b in app.state.service.batchers.values())


def test_on_from_the_environment(make_settings, monkeypatch):
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    app = create_app(make_settings())
    assert app._is_instrumented_by_opentelemetry
    with TestClient(app):
        assert all(b.tracer is not None for b in app.state.service.batchers.values())


def test_unknown_exporter_stops_start_up():
    with pytest.raises(RuntimeError, match="unknown exporter"):
        tracing.provider_from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
