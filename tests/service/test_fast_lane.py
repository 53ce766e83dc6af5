"""The express lane for POST /v1/sentiment (service/fast_lane.py): it answers exactly what the full stack answers -
status, body, headers, metrics - for every kind of request, takes the well-formed ones, and leaves the rest (and a
request over the body budget) to the stack."""

from __future__ import annotations

import asyncio
import json

import pytest

import service.routes.sentiment as sentiment_routes
from service.fast_lane import FastLane
from service.http_limits import BodyBudget
from service.metrics import Metrics
from service.settings import Settings

JSON = {"content-type": "application/json"}
CASES = {
    "plain": (JSON, {"text": "A wonderful, moving film."}),
    "diagnostics": (JSON, {"text": "Not bad at all, I liked it.", "diagnostics": True}),
    "attribution": (JSON, {"text": "dull and slow", "attribution": True}),
    "named model": (JSON, {"text": "great", "model": "gru-uni-meanmax-1"}),
    "truncate": (JSON, {"text": "great " * 30, "truncate": "tail"}),
    "charset": ({"content-type": "application/json; charset=utf-8"}, {"text": "a fine film"}),
    "unknown model": (JSON, {"text": "great", "model": "nope"}),
    "too long": (JSON, {"text": "word " * 50}),
    "no tokens": (JSON, {"text": "<br /><br />"}),
    "blank": (JSON, {"text": "   "}),
    "wrong type": (JSON, {"text": "great", "diagnostics": "yes"}),
    "unknown field": (JSON, {"text": "great", "diagnostic": True}),
    "not json": (JSON, b'{"text": "great"'),
    "lone surrogate": (JSON, b'{"text": "bad \\ud800 film"}'),
    "text/plain": ({"content-type": "text/plain"}, {"text": "great"}),
    "no content type": ({}, {"text": "great"}),
    "with origin": ({**JSON, "origin": "http://example.com"}, {"text": "great"}),
}


def _post(client, headers, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/v1/sentiment", content=data, headers=headers)


def _requests_counted(client) -> dict[str, float]:
    counted = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("sentiment_requests_total{") and 'route="/v1/sentiment"' in line:
            status = line.split('status="')[1].split('"')[0]
            counted[status] = counted.get(status, 0) + float(line.rsplit(" ", 1)[1])
    return counted


def test_the_lane_answers_every_kind_of_request_as_the_full_stack(make_client):
    answers = {}
    for lane in (True, False):
        with make_client(fast_lane=lane, max_text_chars=200) as client:
            answers[lane] = {name: _post(client, *case) for name, case in CASES.items()}
            counted = _requests_counted(client)
        assert sum(counted.values()) == len(CASES), counted  # every request counted once, by its route
    for name in CASES:
        fast, full = answers[True][name], answers[False][name]
        assert fast.status_code == full.status_code, name
        assert fast.json() == full.json(), name
        for header in ("content-type", "x-content-type-options", "x-frame-options", "content-security-policy", "retry-after"):
            assert fast.headers.get(header) == full.headers.get(header), (name, header)
    assert {name: r.status_code for name, r in answers[True].items() if r.status_code != 200} == {
        "unknown model": 404,
        "too long": 413,
        "no tokens": 422,
        "blank": 422,
        "wrong type": 422,
        "unknown field": 422,
        "not json": 422,
        "lone surrogate": 422,
        "text/plain": 422,
        "no content type": 422,
    }


def _record_taken(monkeypatch) -> list[str]:
    """The texts of the requests the lane answers itself, in order."""
    taken: list[str] = []
    answer = FastLane._answer

    async def spy(self, request, receive, send, start):
        taken.append(request.text)
        return await answer(self, request, receive, send, start)

    monkeypatch.setattr(FastLane, "_answer", spy)
    return taken


def test_the_lane_takes_the_well_formed_requests_and_only_those(make_client, monkeypatch):
    taken = _record_taken(monkeypatch)
    with make_client() as client:
        assert _post(client, JSON, {"text": "taken"}).status_code == 200
        assert _post(client, {"content-type": "text/plain"}, {"text": "not taken"}).status_code == 422
        assert client.post("/v1/sentiment/batch", json={"items": [{"text": "not taken either"}]}).status_code == 200
    assert taken == ["taken"]
    taken.clear()
    with make_client(fast_lane=False) as client:
        assert _post(client, JSON, {"text": "the stack's"}).status_code == 200
    assert taken == []


def test_an_unexpected_error_in_the_lane_is_the_generic_500_and_logged(make_client, monkeypatch, caplog):
    async def broken(state, body, receive):
        raise RuntimeError("secret detail /srv/model")

    monkeypatch.setattr(sentiment_routes, "score_one", broken)
    with make_client() as client:
        response = _post(client, JSON, {"text": "great"})
        assert _requests_counted(client) == {"500": 1.0}
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error", "message": "internal server error (logged on the server)"}}
    assert "secret" not in response.text and "secret detail" in caplog.text


def _drive(lane: FastLane, headers: dict[str, str], body: bytes):
    """One request through `lane` alone: what its inner app received, and what was sent."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/sentiment",
        "headers": [(k.encode(), v.encode()) for k, v in {**headers, "content-length": str(len(body))}.items()],
    }
    seen, sent = [], []

    async def inner(scope, receive, send):
        seen.append((await receive())["body"])

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    lane.app = inner
    asyncio.run(lane(scope, receive, send))
    return seen, sent


class _State:
    settings = Settings(api_keys=[])
    metrics = Metrics()


@pytest.mark.parametrize(
    "headers, budget, goes_to_stack",
    [
        (JSON, 1_000, False),
        (JSON, 10, True),  # over the body budget: the stack's body limit answers (503)
        ({"content-type": "application/x-www-form-urlencoded"}, 1_000, True),
        ({**JSON, "transfer-encoding": "chunked"}, 1_000, True),
    ],
)
def test_what_the_lane_leaves_to_the_stack_reaches_it_with_its_body(headers, budget, goes_to_stack):
    async def score_one(state, request, receive):
        return {"text": request.text}

    body = b'{"text": "a fine film"}'
    lane = FastLane(None, _State(), score_one, max_bytes=1_000, budget=BodyBudget(budget))
    seen, sent = _drive(lane, headers, body)
    if goes_to_stack:
        assert seen == [body] and sent == []
    else:
        assert seen == [] and sent[1]["body"] == b'{"text":"a fine film"}'
    assert lane.budget.used == 0  # its bytes came back either way


def test_with_api_keys_the_lane_takes_a_valid_key_and_the_stack_answers_the_rest(make_client, monkeypatch):
    key = "k" * 16
    cases = {
        "valid": {"x-api-key": key},
        "bearer": {"authorization": f"Bearer {key}"},
        "missing": {},
        "wrong": {"x-api-key": "w" * 16},
    }
    taken = _record_taken(monkeypatch)
    answers = {}
    for lane in (True, False):
        with make_client(fast_lane=lane, api_keys=[key]) as client:
            answers[lane] = {name: _post(client, {**JSON, **headers}, {"text": name}) for name, headers in cases.items()}
    assert taken == ["valid", "bearer"]
    for name in cases:
        fast, full = answers[True][name], answers[False][name]
        assert (fast.status_code, fast.json(), fast.headers.get("www-authenticate")) == (
            full.status_code,
            full.json(),
            full.headers.get("www-authenticate"),
        ), name
    assert [answers[True][name].status_code for name in cases] == [200, 200, 401, 401]
