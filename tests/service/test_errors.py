"""Every error status, always in the one shape {"error": {"code", "message"}}: 413, 422, 404, 405, 401, 503, 500,
and start-up failures that name the broken file."""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.artifacts import ArtifactError
from service.errors import BodyLimitMiddleware
from service.runtime import ProviderError

GRU_UNI = "gru-uni-meanmax-1"


def assert_error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]["message"]


# -- 413 --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_client(make_client):
    with make_client(max_text_chars=50, max_batch_items=3, max_body_bytes=2000) as c:
        yield c


def test_text_over_the_limit_is_413(small_client):
    message = assert_error(small_client.post("/v1/sentiment", json={"text": "a" * 51}), 413, "text_too_large")
    assert "51" in message and "50" in message
    assert small_client.post("/v1/sentiment", json={"text": "great " * 8}).status_code == 200  # 48 chars


def test_batch_item_over_the_text_limit_gets_its_own_error_naming_it(small_client):
    # Issue 17: per-item errors; the other items are scored (was a 413 for the whole request).
    items = [{"text": "great"}, {"text": "a" * 51}]
    response = small_client.post("/v1/sentiment/batch", json={"items": items})
    assert response.status_code == 200, response.text
    first, bad = response.json()["results"]
    assert first["label"] in ("negative", "positive")
    assert set(bad) == {"error"} and bad["error"]["code"] == "text_too_large" and "items[1]" in bad["error"]["message"]


def test_too_many_batch_items_is_413(small_client):
    items = [{"text": "great"}] * 4
    assert_error(small_client.post("/v1/sentiment/batch", json={"items": items}), 413, "batch_too_large")
    assert small_client.post("/v1/sentiment/batch", json={"items": items[:3]}).status_code == 200


def test_body_over_the_limit_is_413_before_parsing(small_client):
    # Not even valid JSON: a 422 would mean the body was parsed first.
    response = small_client.post("/v1/sentiment", content=b"{" * 2001, headers={"content-type": "application/json"})
    assert_error(response, 413, "body_too_large")


def test_streamed_body_is_counted_without_content_length(small_client):
    def chunks():
        for _ in range(30):
            yield b"x" * 100

    assert_error(small_client.post("/v1/sentiment", content=chunks()), 413, "body_too_large")


def test_body_limit_middleware_stops_reading_a_stream_at_the_limit():
    received, sent = [], []

    async def app(scope, receive, send):  # pragma: no cover - must never run
        raise AssertionError("the app must not see an oversized body")

    async def receive():
        received.append(1)
        return {"type": "http.request", "body": b"x" * 400, "more_body": True}  # endless

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/sentiment", "headers": []}
    asyncio.run(BodyLimitMiddleware(app, max_bytes=1000)(scope, receive, send))
    assert len(received) == 3  # 1200 bytes > 1000: stopped there
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "body_too_large"


# -- 422 ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, code, mentions",
    [
        ({"text": ""}, "empty_text", "text"),
        ({"text": "   \n\t "}, "empty_text", "text"),
        ({}, "invalid_request", "text"),
        ({"text": 42}, "invalid_request", "text"),
        ({"text": ["great"]}, "invalid_request", "text"),
        ({"text": "great", "diagnostics": "yes"}, "invalid_request", "diagnostics"),
        ({"text": "great", "model": 3}, "invalid_request", "model"),
        ({"text": "great", "truncate": "middle"}, "invalid_request", "truncate"),
        ({"text": "great", "diagnostic": True}, "invalid_request", "diagnostic"),
        ({"text": "<br /><br />"}, "no_tokens", "text"),
    ],
)
def test_invalid_single_requests_are_422(client, body, code, mentions):
    assert mentions in assert_error(client.post("/v1/sentiment", json=body), 422, code)


@pytest.mark.parametrize(
    "body, code, mentions",
    [
        ({"items": []}, "invalid_request", "items"),
        ({"items": [{"text": "fine"}, {"id": 7.5, "text": "x"}]}, "invalid_request", "items[1].id"),
        ({"items": [{"text": "fine"}, {"id": True, "text": "x"}]}, "invalid_request", "items[1].id"),
        ({"items": [{"text": "fine"}, {"text": 3}]}, "invalid_request", "items[1].text"),
        ({"items": [{"text": "fine"}, {"id": "a"}]}, "invalid_request", "items[1].text"),
        ({"items": "great"}, "invalid_request", "items"),
    ],
)
def test_malformed_batch_requests_are_422(client, body, code, mentions):
    assert mentions in assert_error(client.post("/v1/sentiment/batch", json=body), 422, code)


@pytest.mark.parametrize("text, code", [(" ", "empty_text"), ("\u200b\ufeff", "empty_text"), ("<i></i>", "no_tokens")])
def test_an_unscorable_batch_item_gets_an_error_and_the_others_are_scored(client, text, code):
    # Issue 17: one batch semantics with the CLI's --on-error skip (these were a 422 for the whole request).
    body = {"items": [{"id": "a", "text": "fine"}, {"id": 2, "text": text}, {"text": "a great film"}]}
    response = client.post("/v1/sentiment/batch", json=body)
    assert response.status_code == 200, response.text
    first, bad, third = response.json()["results"]
    assert first["id"] == "a" and first["label"] in ("negative", "positive") and "error" not in first
    assert bad == {"id": 2, "error": {"code": code, "message": bad["error"]["message"]}}
    assert "items[1].text" in bad["error"]["message"]
    assert "id" not in third and third["num_tokens"] > 0


def test_a_lone_surrogate_in_a_batch_item_is_that_items_error(client):
    body = b'{"items": [{"text": "fine"}, {"text": "bad \\ud800 text"}]}'
    response = client.post("/v1/sentiment/batch", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["results"][1]["error"]["code"] == "invalid_text"


def test_malformed_json_is_422(client):
    response = client.post("/v1/sentiment", content=b'{"text": ', headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_json")


# -- 404 / 405 ------------------------------------------------------------------------------------------------------
def test_unknown_model_is_404(client):
    message = assert_error(client.post("/v1/sentiment", json={"text": "great", "model": "nope"}), 404, "unknown_model")
    assert "nope" in message and GRU_UNI in message  # names what is available
    response = client.post("/v1/sentiment/batch", json={"items": [{"text": "great"}], "model": "nope"})
    assert_error(response, 404, "unknown_model")


def test_unknown_route_and_wrong_method(make_client, monkeypatch, tmp_path):
    # Without the page: once it is mounted at /, it answers every unknown GET (a 404 in the same shape).
    monkeypatch.setattr("service.app.STATIC_DIR", tmp_path / "no-page")
    with make_client() as c:
        assert_error(c.get("/v1/nothing"), 404, "not_found")
        assert_error(c.get("/v1/sentiment"), 405, "method_not_allowed")
        assert_error(c.delete("/v1/models"), 405, "method_not_allowed")


# -- 401 ----------------------------------------------------------------------------------------------------------
def test_api_keys_guard_the_api_but_not_the_probes(make_client):
    with make_client(api_keys=["first-key-123", "second-key-456"]) as c:
        assert_error(c.post("/v1/sentiment", json={"text": "great"}), 401, "missing_api_key")
        wrong = c.post("/v1/sentiment", json={"text": "great"}, headers={"x-api-key": "first-key-12"})
        assert_error(wrong, 401, "invalid_api_key")
        assert wrong.headers["www-authenticate"] == "Bearer"
        assert_error(c.get("/v1/models", headers={"authorization": "Basic Zm9vOmJhcg=="}), 401, "missing_api_key")
        assert c.post("/v1/sentiment", json={"text": "great"}, headers={"x-api-key": "first-key-123"}).status_code == 200
        ok = c.post(
            "/v1/sentiment/batch", json={"items": [{"text": "great"}]}, headers={"authorization": "Bearer second-key-456"}
        )
        assert ok.status_code == 200
        assert c.get("/v1/models", headers={"x-api-key": "second-key-456"}).status_code == 200
        for probe in ("/healthz", "/readyz", "/metrics"):
            assert c.get(probe).status_code == 200


# -- 503 ----------------------------------------------------------------------------------------------------------
def test_not_ready_before_startup_is_503_with_retry_after(make_settings):
    c = TestClient(create_app(make_settings(retry_after_s=3)))  # no `with`: the lifespan never ran
    for response in (c.post("/v1/sentiment", json={"text": "great"}), c.get("/readyz"), c.get("/v1/models")):
        assert_error(response, 503, "not_ready")
        assert response.headers["retry-after"] == "3"
    assert c.get("/healthz").status_code == 200  # alive, just not ready


def test_full_queue_is_503_at_once_and_cancelled_requests_free_their_slots(make_settings, async_client):
    app = create_app(make_settings(queue_size=2, max_wait_ms=0, retry_after_s=2))
    gate = threading.Event()

    async def scenario():
        async with async_client(app) as c:
            batcher = app.state.service.batchers["tiny-lstm"]
            real = batcher.runtime.run_batch
            batcher.runtime.run_batch = lambda enc: (gate.wait(10), real(enc))[1]  # the model is stuck
            try:
                post = lambda: c.post("/v1/sentiment", json={"text": "great"})  # noqa: E731
                first = asyncio.create_task(post())
                while batcher.depth or not batcher.in_flight:  # the worker took it and is blocked
                    await asyncio.sleep(0.005)
                queued = [asyncio.create_task(post()) for _ in range(2)]
                while batcher.depth < 2:
                    await asyncio.sleep(0.005)
                full = await post()
                assert_error(full, 503, "overloaded")
                assert full.headers["retry-after"] == "2"
                queued[1].cancel()  # the client gave up: its slot comes back
                await asyncio.gather(queued[1], return_exceptions=True)
                assert batcher.depth == 1
                late = asyncio.create_task(post())
                while batcher.depth < 2:
                    await asyncio.sleep(0.005)
                gate.set()
                for response in await asyncio.gather(first, queued[0], late):
                    assert response.status_code == 200
                assert batcher.depth == 0
            finally:
                gate.set()
                batcher.runtime.run_batch = real

    asyncio.run(scenario())


# -- 500 ----------------------------------------------------------------------------------------------------------
def test_unexpected_error_is_a_generic_500_logged_on_the_server(make_client, caplog):
    with make_client() as c:
        rt = c.app.state.service.registry.get(None)
        rt.run_batch = lambda enc: (_ for _ in ()).throw(RuntimeError("secret internals /etc/passwd"))
        with caplog.at_level(logging.ERROR):
            response = c.post("/v1/sentiment", json={"text": "great"})
        message = assert_error(response, 500, "internal_error")
        assert "secret" not in response.text and "Traceback" not in response.text and "secret" not in message
        assert "secret internals" in caplog.text  # logged server-side, with the traceback
        del rt.run_batch  # back to the class's method: the worker survived the failure
        assert c.post("/v1/sentiment", json={"text": "great"}).status_code == 200


# -- start-up ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def broken_root(serving_root, tmp_path):
    import shutil

    root = tmp_path / "models"
    shutil.copytree(serving_root / GRU_UNI, root / GRU_UNI)
    return root / GRU_UNI


def _start(make_settings, **overrides):
    with TestClient(create_app(make_settings(**overrides))):
        pass


def test_corrupt_file_stops_startup_naming_it(make_settings, broken_root):
    with (broken_root / "weights.bin").open("r+b") as fh:
        fh.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match=r"weights\.bin.*sha256"):
        _start(make_settings, model_root=broken_root.parent, default_model=None)


def test_missing_file_stops_startup_naming_it(make_settings, broken_root):
    (broken_root / "diagnostics.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"diagnostics\.onnx.*missing"):
        _start(make_settings, model_root=broken_root.parent, default_model=None)


def test_tokenizer_model_mismatch_stops_startup(make_settings, broken_root):
    manifest = json.loads((broken_root / "manifest.json").read_text())
    manifest["model"]["vocab_size"] += 5
    (broken_root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"tokenizer\.json.*expects"):
        _start(make_settings, model_root=broken_root.parent, default_model=None)


def test_empty_root_unknown_default_and_bad_provider_stop_startup(make_settings, tmp_path):
    with pytest.raises(ArtifactError, match="no model artifacts"):
        _start(make_settings, model_root=tmp_path, default_model=None)
    with pytest.raises(ArtifactError, match="default model 'nope'"):
        _start(make_settings, default_model="nope")
    with pytest.raises(ProviderError, match="not-a-provider"):
        _start(make_settings, providers=["not-a-provider"])
