"""Text Embeddings Inference's classification API (service/routes/tei.py): TEI's payloads over HTTP, and the real
`huggingface_hub.InferenceClient` against a real server."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from live_http import live

from service.app import create_app

TEXTS = ["A wonderful, moving film. I loved it!", "Boring and awful, a waste of time."]
LONG = " ".join(["great"] * 30 + ["boring"] * 60)  # over the tiny model's 64 tokens
KEY = "tei-test-key-123"


@pytest.fixture(scope="module")
def server(make_settings):
    with live(create_app(make_settings())) as url:
        yield url


def v1(url: str, text: str, **extra) -> dict:
    return httpx.post(f"{url}/v1/sentiment", json={"text": text, **extra}).json()


def ranked(result: dict) -> list[dict]:
    probs = result["probabilities"]
    return sorted(({"label": k, "score": v} for k, v in probs.items()), key=lambda p: -p["score"])


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert [p["label"] for p in got] == [p["label"] for p in want]
    np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-6, rtol=0)


def test_inference_client_text_classification(server):
    """What huggingface_hub really sends: POST / with {"inputs": text, "parameters": {...}}."""
    client = InferenceClient(base_url=server)
    for text in TEXTS:
        got = client.text_classification(text)
        assert_same([{"label": p.label, "score": p.score} for p in got], ranked(v1(server, text)))
    top = client.text_classification(TEXTS[0], top_k=1)
    assert len(top) == 1 and top[0].label == ranked(v1(server, TEXTS[0]))[0]["label"]


@pytest.mark.parametrize("path", ["/predict", "/"])
def test_single_input_answers_a_flat_list_like_tei(server, path):
    r = httpx.post(server + path, json={"inputs": TEXTS[0]})
    assert r.status_code == 200, r.text
    assert_same(r.json(), ranked(v1(server, TEXTS[0])))


@pytest.mark.parametrize("inputs", [TEXTS, [[t] for t in TEXTS]], ids=["flat", "tei-batch"])
def test_batch_answers_a_list_per_text(server, inputs):
    r = httpx.post(f"{server}/predict", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    assert len(r.json()) == 2
    for got, text in zip(r.json(), TEXTS):
        assert_same(got, ranked(v1(server, text)))


def test_raw_scores_are_log_probabilities(server):
    got = httpx.post(f"{server}/predict", json={"inputs": TEXTS[1], "raw_scores": True}).json()
    want = [{"label": p["label"], "score": float(np.log(p["score"]))} for p in ranked(v1(server, TEXTS[1]))]
    assert_same(got, want)


def test_truncation(server):
    r = httpx.post(f"{server}/predict", json={"inputs": LONG, "truncate": False})
    assert r.status_code == 413 and r.json()["error_type"] == "Validation" and "90 tokens" in r.json()["error"]
    default = httpx.post(f"{server}/predict", json={"inputs": LONG}).json()
    assert_same(default, ranked(v1(server, LONG)))  # the model's own head+tail policy
    for direction, policy in (("right", "head"), ("left", "tail")):
        got = httpx.post(f"{server}/predict", json={"inputs": LONG, "truncate": True, "truncation_direction": direction}).json()
        assert_same(got, ranked(v1(server, LONG, truncate=policy)))


@pytest.mark.parametrize(
    "body, status",
    [
        ({"inputs": [["a", "b"]]}, 422),  # a sentence pair
        ({"inputs": []}, 422),
        ({"inputs": "   "}, 422),
        ({"input": "typo"}, 422),
        ({"inputs": "x", "parameters": {"function_to_apply": "sigmoid"}}, 422),
    ],
)
def test_bad_requests_answer_tei_error_shape(server, body, status):
    r = httpx.post(f"{server}/predict", json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "error_type"} and isinstance(r.json()["error"], str)


def test_page_still_served_at_get_root(server):
    r = httpx.get(server + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert httpx.get(f"{server}/predict").status_code == 405  # the API's path: its 405, not the page


def test_api_key_is_sent_by_the_client_as_a_bearer_token(make_settings):
    with live(create_app(make_settings(api_keys=[KEY]))) as url:
        with pytest.raises(HfHubHTTPError) as exc:
            InferenceClient(base_url=url).text_classification(TEXTS[0])
        assert exc.value.response.status_code == 401
        assert len(InferenceClient(base_url=url, api_key=KEY).text_classification(TEXTS[0])) == 2
