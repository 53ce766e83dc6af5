"""/metrics counts what happened: requests by route and status, latency, batches, queue, tokens, drift signals."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

TEXTS = ["a great film", "awful qqqzzz wwwxxx boring", "superb acting", "dull", "loved it"]


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels...): value} of a Prometheus exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def value(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, *sorted(labels.items())), 0.0)


@pytest.fixture(scope="module")
def scraped(make_client):
    """A fresh app: 2 single requests, 1 batch of 3, 1 diagnostics request, a 422, a 404, two 413s, then scrapes."""
    with make_client(max_text_chars=100, max_body_bytes=2000) as c:
        singles = [c.post("/v1/sentiment", json={"text": t}).json() for t in TEXTS[:2]]
        batch = c.post("/v1/sentiment/batch", json={"items": [{"text": t} for t in TEXTS[2:]]}).json()["results"]
        diag = c.post("/v1/sentiment", json={"text": TEXTS[1], "diagnostics": True}).json()
        assert c.post("/v1/sentiment", json={"text": " "}).status_code == 422
        assert c.post("/v1/sentiment", json={"text": "x", "model": "nope"}).status_code == 404
        assert c.post("/v1/sentiment", json={"text": "x" * 101}).status_code == 413
        assert c.post("/v1/sentiment", json={"text": "x" * 3000}).status_code == 413  # refused before routing
        rt = c.app.state.service.registry.get(None)
        first = samples(c.get("/metrics").text)
        second = samples(c.get("/metrics").text)
    return first, second, singles + batch + [diag], rt


def test_requests_are_counted_by_route_and_status(scraped):
    m, again, _, _ = scraped
    assert value(m, "sentiment_requests_total", route="/v1/sentiment", method="POST", status="200") == 3
    assert value(m, "sentiment_requests_total", route="/v1/sentiment/batch", method="POST", status="200") == 1
    for status, count in (("422", 1), ("404", 1), ("413", 2)):
        assert value(m, "sentiment_requests_total", route="/v1/sentiment", method="POST", status=status) == count
    assert value(m, "sentiment_request_duration_seconds_count", route="/v1/sentiment", method="POST", status="200") == 3
    assert value(again, "sentiment_requests_total", route="/metrics", method="GET", status="200") == 1


def test_batches_queue_and_tokens(scraped):
    m, _, results, rt = scraped
    labels = {"model": rt.name, "provider": rt.provider}
    assert value(m, "sentiment_batch_size_sum", **labels) == 5  # batched texts; diagnostics bypass the batcher
    assert value(m, "sentiment_inference_seconds_count", **labels) == value(m, "sentiment_batch_size_count", **labels)
    assert value(m, "sentiment_tokens_scored_total", **labels) == sum(r["num_tokens"] for r in results)
    assert value(m, "sentiment_queue_wait_seconds_count", model=rt.name) == 3  # two singles, one batch request
    assert value(m, "sentiment_queue_depth", model=rt.name) == 0


def test_drift_signals(scraped):
    m, _, results, rt = scraped
    assert value(m, "sentiment_score_count", model=rt.name) == 6
    assert value(m, "sentiment_score_sum", model=rt.name) == pytest.approx(sum(r["score"] for r in results), abs=1e-6)
    shares = [float(np.mean(e.ids == rt.tokenizer.unk_id)) for e in rt.encode(TEXTS + TEXTS[1:2])]
    assert shares[1] == 0.5  # the two made-up words
    assert value(m, "sentiment_unknown_token_share_count", model=rt.name) == 6
    assert value(m, "sentiment_unknown_token_share_sum", model=rt.name) == pytest.approx(sum(shares))
