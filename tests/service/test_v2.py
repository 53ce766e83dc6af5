"""Open Inference Protocol v2 (service/routes/v2.py), driven by the real `tritonclient[http]` against a real server."""

from __future__ import annotations

import json
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from live_http import live
from tritonclient.utils import InferenceServerException

from service.app import create_app

MODEL = "tiny-lstm"
TEXTS = ["A wonderful, moving film. I loved it!", "Boring and awful, a waste of time.", "The plot <br /> was &amp; fine"]
KEY = "v2-test-key-123"


@pytest.fixture(scope="module")
def server(make_settings):
    with live(create_app(make_settings())) as url:
        yield url


@pytest.fixture(scope="module")
def triton(server):
    client = httpclient.InferenceServerClient(server.removeprefix("http://"))
    yield client
    client.close()


def text_input(texts: list[str], binary: bool):
    inp = httpclient.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary_data=binary)
    return inp


def v1_probabilities(url: str, texts: list[str]) -> np.ndarray:
    body = httpx.post(f"{url}/v1/sentiment/batch", json={"items": [{"text": t} for t in texts], "model": MODEL}).json()
    return np.array([[r["probabilities"]["negative"], r["probabilities"]["positive"]] for r in body["results"]])


def test_health_and_metadata_through_tritonclient(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready(MODEL)
    assert triton.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    meta = triton.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"] == ["0.0.1"]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
    ]


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_infer_matches_v1_sentiment(triton, server, binary):
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("label", "probabilities")]
    result = triton.infer(MODEL, [text_input(TEXTS, binary)], outputs=outputs, request_id="r-1")
    probs = result.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == (3, 2)
    np.testing.assert_allclose(probs, v1_probabilities(server, TEXTS), atol=1e-6, rtol=0)
    labels = [b.decode() if isinstance(b, bytes) else b for b in result.as_numpy("label")]
    assert labels == [["negative", "positive"][i] for i in probs.argmax(axis=1)]
    response = result.get_response()
    assert response["model_name"] == MODEL and response["model_version"] == "0.0.1" and response["id"] == "r-1"


def test_infer_with_default_outputs_is_binary(triton):
    """No outputs named: tritonclient asks for every output as binary data (`binary_data_output`)."""
    result = triton.infer(MODEL, [text_input(TEXTS[:1], True)])
    assert result.as_numpy("probabilities").shape == (1, 2)
    assert {o["name"] for o in result.get_response()["outputs"]} == {"label", "probabilities"}


def test_versioned_routes(triton):
    assert triton.is_model_ready(MODEL, "0.0.1")
    result = triton.infer(MODEL, [text_input(TEXTS[:2], True)], model_version="0.0.1")
    assert result.as_numpy("probabilities").shape == (2, 2)
    with pytest.raises(InferenceServerException, match="no version '9'"):
        triton.infer(MODEL, [text_input(TEXTS[:1], True)], model_version="9")


def test_unknown_model_is_a_protocol_error(triton, server):
    with pytest.raises(InferenceServerException, match="no model named 'nope'"):
        triton.get_model_metadata("nope")
    r = httpx.get(f"{server}/v2/models/nope")
    assert r.status_code == 404 and isinstance(r.json()["error"], str)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, "expected BYTES"),
        ({"inputs": [{"name": "review", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}, "named 'text'"),
        ({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["x"]}]}, "but 1 elements"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["   "]}]}, "empty"),
        (
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}], "outputs": [{"name": "logits"}]},
            "unknown output 'logits'",
        ),
        ({"inputs": []}, "inputs"),
    ],
)
def test_bad_requests_are_400_with_a_string_error(server, body, message):
    r = httpx.post(f"{server}/v2/models/{MODEL}/infer", json=body)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and message in r.json()["error"]


def test_malformed_json_and_binary(server):
    r = httpx.post(f"{server}/v2/models/{MODEL}/infer", content=b"{nope")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    header = json.dumps(
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}
    ).encode()
    broken = struct.pack("<I", 50) + b"short"  # the length prefix promises more than follows
    r = httpx.post(
        f"{server}/v2/models/{MODEL}/infer",
        content=header + broken,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 400 and "runs past the end" in r.json()["error"]


def test_rest_of_the_service_keeps_its_error_shape(server):
    r = httpx.post(f"{server}/v1/sentiment", json={"text": "x", "model": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model"


def test_api_key_guards_metadata_and_infer_not_health(make_settings):
    with live(create_app(make_settings(api_keys=[KEY]))) as url:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        try:
            assert client.is_server_ready() and client.is_model_ready(MODEL)
            with pytest.raises(InferenceServerException, match="needs an API key"):
                client.infer(MODEL, [text_input(TEXTS[:1], True)])
            result = client.infer(MODEL, [text_input(TEXTS[:1], True)], headers={"X-API-Key": KEY})
            assert result.as_numpy("probabilities").shape == (1, 2)
            assert client.get_model_metadata(MODEL, headers={"Authorization": f"Bearer {KEY}"})["name"] == MODEL
        finally:
            client.close()
