"""The bad-input catalogue: hostile or odd requests, each with the status it must get, under the shipped default
limits (20,000 characters per text, 64 items per batch, 4 MB per body). Every refusal is in the one error shape;
every 200 is a well-formed score; nothing is a 5xx. RELIABILITY.md lists the same table.

Text cases run against both scoring routes (`{"text": ...}` and `{"items": [{"text": ...}]}`); bodies are sent as
bytes, so the JSON on the wire is exactly what the row says (lone surrogates as \\ud800 escapes, raw NUL bytes, ...).
"""

from __future__ import annotations

import json
import math

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.settings import Settings

JSON = {"content-type": "application/json"}

# (case, text, status, error code or None for a 200)
TEXT_CASES = [
    ("empty", "", 422, "empty_text"),
    ("whitespace", " \t\n\r\u00a0\u3000 ", 422, "empty_text"),
    ("zero-width only", "\u200b\u200c\u200d\u2060\ufeff", 422, "empty_text"),
    ("1,000,000 characters", "a" * 1_000_000, 413, "text_too_large"),
    ("20,000 characters (the limit)", ("great film " * 2000)[:20_000], 200, None),
    ("lone surrogate", "great \ud800 film", 422, "invalid_text"),
    ("NUL bytes (escaped)", "great\x00film\x00", 200, None),
    ("control and escape characters", "great\x01\x02\x1b[31m film\x7f", 200, None),
    ("emoji", "\U0001f600\U0001f3ac\U0001f37f great film \U0001f44d\U0001f3fd", 200, None),
    ("emoji only", "\U0001f600\U0001f3ac\U0001f37f", 200, None),
    ("right-to-left", "\u05d4\u05e1\u05e8\u05d8 \u05d4\u05d9\u05d4 \u0645\u0631\u062d\u0628\u0627 great", 200, None),
    ("bidi override", "\u202egreat film\u202c", 200, None),
    ("zero-width inside words", "gr\u200beat fi\u200dlm", 200, None),
    ("HTML and script", "<p>A <b>great</b> film</p><script>alert(1)</script>", 200, None),
    ("HTML only", "<br /><br /><i></i>", 422, "no_tokens"),
    ("only unknown words", "qzxv wprtk blorft", 200, None),
    ("combining marks", "Z\u0338\u0321\u031ba\u0336l\u0337g\u0334o\u0335 great", 200, None),
    ("full-width letters", "\uff47\uff52\uff45\uff41\uff54 \uff46\uff49\uff4c\uff4d", 200, None),
]

# (case, raw body, status, error code)
BODY_CASES = [
    ("10 MB body", b'{"text": "' + b"a" * 10_000_000 + b'"}', 413, "body_too_large"),
    ("invalid UTF-8", b'{"text": "caf\xe9 great"}', 422, "invalid_json"),
    ("raw NUL byte in a string", b'{"text": "great\x00film"}', 422, "invalid_json"),
    ("100,000-deep nested JSON", b'{"text": "great", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 422, "invalid_json"),
    ("500-deep nested JSON as the text", b'{"text": ' + b"[" * 500 + b'"great"' + b"]" * 500 + b"}", 422, "invalid_request"),
    ("not JSON", b"text=great", 422, "invalid_json"),
    ("truncated JSON", b'{"text": "great', 422, "invalid_json"),
    ("empty body", b"", 422, "invalid_request"),
    ("JSON array", b'["great"]', 422, "invalid_request"),
    ("JSON null", b"null", 422, "invalid_request"),
    ("text is a number", b'{"text": 42}', 422, "invalid_request"),
    ("flag is a string", b'{"text": "great", "diagnostics": "yes"}', 422, "invalid_request"),
    ("flag is NaN", b'{"text": "great", "diagnostics": NaN}', 422, "invalid_request"),
    ("extra field", b'{"text": "great", "sentiment": "positive"}', 422, "invalid_request"),
    ("model name as a path", b'{"text": "great", "model": "../../etc/passwd"}', 404, "unknown_model"),
]

# (case, batch body, status, error code or None)
BATCH_CASES = [
    ("65 items (over the limit)", {"items": [{"text": "great"}] * 65}, 413, "batch_too_large"),
    ("10,000 items", {"items": [{"text": "great"}] * 10_000}, 413, "batch_too_large"),
    ("64 items (the limit)", {"items": [{"text": f"great film {i}"} for i in range(64)]}, 200, None),
    ("no items", {"items": []}, 422, "invalid_request"),
    ("lone surrogate in an id", {"items": [{"id": "\ud800", "text": "great"}]}, 422, "invalid_text"),
    ("id of emoji and RTL text", {"items": [{"id": "\U0001f600 \u0645\u0631\u062d\u0628\u0627", "text": "great"}]}, 200, None),
    ("number as id", {"items": [{"id": 7, "text": "great"}]}, 200, None),  # issue 17: ids keep their type
    ("float as id", {"items": [{"id": 7.5, "text": "great"}]}, 422, "invalid_request"),
]


@pytest.fixture(scope="module")
def client(model_root):
    # The shipped defaults, not the test fixtures' small limits: this is what production traffic meets.
    defaults = Settings.model_fields
    assert (defaults["max_text_chars"].default, defaults["max_batch_items"].default) == (20_000, 64)
    with TestClient(create_app(Settings(model_root=model_root, intra_op_threads=1, inter_op_threads=1))) as c:
        yield c


def post(client, path: str, body) -> object:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()  # ensure_ascii: surrogates as \ud800
    return client.post(path, content=raw, headers=JSON)


def check(response, status: int, code: str | None) -> dict:
    assert response.status_code == status, response.text[:500]
    body = response.json()
    if code is not None:
        assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"], body
        assert "Traceback" not in response.text and len(response.text) < 2000  # never echoes the input back
    return body


def check_score(result: dict) -> None:
    assert result["label"] in ("negative", "positive")
    assert 0.0 <= result["score"] <= 1.0 and math.isfinite(result["score"])
    assert math.isclose(sum(result["probabilities"].values()), 1.0, abs_tol=1e-5)
    assert result["num_tokens"] >= 1


@pytest.mark.parametrize("case, text, status, code", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_text_catalogue_single(client, case, text, status, code):
    body = check(post(client, "/v1/sentiment", {"text": text}), status, code)
    if status == 200:
        check_score(body)


# A text's own problem is its item's error in a batch, and the other items are scored (issue 17: one batch semantics
# with `sentiment-score --on-error skip`); a body over the size limit still fails the request.
ITEM_CODES = {"text_too_large", "empty_text", "no_tokens", "invalid_text"}


@pytest.mark.parametrize("case, text, status, code", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_text_catalogue_batch(client, case, text, status, code):
    per_item = code in ITEM_CODES
    body = check(
        post(client, "/v1/sentiment/batch", {"items": [{"id": "a", "text": "fine"}, {"text": text}]}),
        200 if per_item else status,
        None if per_item else code,
    )
    if per_item:
        first, bad = body["results"]
        check_score(first)
        assert set(bad) == {"error"} and bad["error"]["code"] == code, bad
        assert "items[1].text" in bad["error"]["message"] and len(bad["error"]["message"]) < 2000  # names the item
    elif status == 200:
        assert [r.get("id") for r in body["results"]] == ["a", None]
        check_score(body["results"][1])
    elif code != "body_too_large":
        assert "items[1].text" in body["error"]["message"]  # names the item


@pytest.mark.parametrize("case, raw, status, code", BODY_CASES, ids=[c[0] for c in BODY_CASES])
def test_body_catalogue(client, case, raw, status, code):
    check(post(client, "/v1/sentiment", raw), status, code)


@pytest.mark.parametrize("case, body, status, code", BATCH_CASES, ids=[c[0] for c in BATCH_CASES])
def test_batch_catalogue(client, case, body, status, code):
    result = check(post(client, "/v1/sentiment/batch", body), status, code)
    if status == 200:
        assert len(result["results"]) == len(body["items"])
        for item, scored in zip(body["items"], result["results"]):
            assert scored.get("id") == item.get("id")
            check_score(scored)


def test_wrong_content_type_is_422(client):
    response = client.post("/v1/sentiment", content=b'{"text": "great"}', headers={"content-type": "text/plain"})
    check(response, 422, "invalid_request")


def test_a_text_of_only_unknown_words_is_scored_as_all_unknown(client):
    body = check(post(client, "/v1/sentiment", {"text": "qzxv wprtk blorft", "diagnostics": True}), 200, None)
    assert body["diagnostics"]["summary"]["unknown_share"] == 1.0
    assert all(token["unknown"] for token in body["diagnostics"]["tokens"])


def test_diagnostics_echo_odd_text_spans_exactly(client):
    """Offsets point into the text as sent, so emoji, RTL and zero-width characters come back intact."""
    text = "\U0001f600 gr\u200beat \u05d4\u05e1\u05e8\u05d8 film"
    body = check(post(client, "/v1/sentiment", {"text": text, "attribution": True}), 200, None)
    for token in body["diagnostics"]["tokens"]:
        assert text[token["start"] : token["end"]] == token["text"]


def test_the_catalogue_caused_no_5xx(client):
    """Runs last in this module: after every row above, the server counted no 5xx and still scores."""
    check_score(check(post(client, "/v1/sentiment", {"text": "a great film"}), 200, None))
    statuses = {
        s.labels["status"]
        for f in text_string_to_metric_families(client.get("/metrics").text)
        for s in f.samples
        if s.name == "sentiment_requests_total"
    }
    assert statuses and not any(status.startswith("5") for status in statuses), statuses
