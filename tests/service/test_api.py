"""Every route's happy path: scoring one text and a batch, model selection, truncation, /v1/models, probes, docs."""

from __future__ import annotations

import numpy as np
import pytest

from service import app as app_module
from service.runtime import ModelRuntime

DEFAULT, GRU_UNI, LSTM_UNI_LAST = "tiny-lstm", "gru-uni-meanmax-1", "lstm-uni-last-1"  # see conftest.serving_root

REVIEW = "A wonderful film<br />The acting was superb &amp; the ending loved. I didn&#39;t expect it!"
TEXTS = ["awful boring waste", "great", REVIEW, "the plot was dull and the cast hated it " * 3, "superb!"]


@pytest.fixture(scope="module")
def runtimes(serving_root):
    return {name: ModelRuntime(serving_root / name, intra_op_threads=1) for name in (DEFAULT, GRU_UNI, LSTM_UNI_LAST)}


def direct(rt: ModelRuntime, text: str, truncate=None) -> np.ndarray:
    return rt.run_batch(rt.encode([text], truncate))[0]


def test_sentiment_scores_one_text_like_the_runtime(client, runtimes):
    response = client.post("/v1/sentiment", json={"text": REVIEW})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"label", "score", "probabilities", "model", "num_tokens", "truncated", "unknown_share", "warnings"}
    rt = runtimes[DEFAULT]
    probs = direct(rt, REVIEW)
    assert body["score"] == pytest.approx(float(probs[1]), abs=1e-6)
    assert body["probabilities"]["negative"] + body["probabilities"]["positive"] == pytest.approx(1.0, abs=1e-6)
    assert body["label"] == ("positive" if body["score"] > 0.5 else "negative")
    assert body["model"] == {"name": DEFAULT, "version": "0.0.1"}
    assert body["num_tokens"] == rt.encode([REVIEW])[0].num_tokens
    assert body["truncated"] is False


def test_batch_keeps_input_order_and_ids_and_matches_single_requests(client):
    items = [{"id": f"r{i}", "text": t} for i, t in enumerate(TEXTS)]
    items[2].pop("id")  # ids are optional
    response = client.post("/v1/sentiment/batch", json={"items": items})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r.get("id") for r in results] == ["r0", "r1", None, "r3", "r4"]
    for text, result in zip(TEXTS, results):
        single = client.post("/v1/sentiment", json={"text": text}).json()
        assert result["score"] == pytest.approx(single["score"], abs=1e-5)
        assert result["num_tokens"] == single["num_tokens"]


@pytest.mark.parametrize("name", [GRU_UNI, LSTM_UNI_LAST])
def test_model_field_selects_the_model(client, runtimes, name):
    body = client.post("/v1/sentiment", json={"text": REVIEW, "model": name}).json()
    assert body["model"] == {"name": name, "version": "0.0.0"}
    assert body["score"] == pytest.approx(float(direct(runtimes[name], REVIEW)[1]), abs=1e-6)
    batch = client.post("/v1/sentiment/batch", json={"model": name, "items": [{"text": REVIEW}]}).json()
    assert batch["results"][0]["model"]["name"] == name
    assert batch["results"][0]["score"] == pytest.approx(body["score"], abs=1e-5)


def test_default_model_setting_changes_the_default(make_client):
    with make_client(default_model=GRU_UNI) as c:
        assert c.post("/v1/sentiment", json={"text": "great"}).json()["model"]["name"] == GRU_UNI
        assert c.get("/v1/models").json()["default"] == GRU_UNI


def test_long_text_is_truncated_not_refused(client, runtimes):
    rt = runtimes[GRU_UNI]  # max_tokens 24
    text = "great " * 10 + "the film was " * 30 + "awful " * 10
    results = {}
    for mode in ("head", "tail", "head_tail"):
        body = client.post("/v1/sentiment", json={"text": text, "model": GRU_UNI, "truncate": mode}).json()
        assert body["truncated"] is True and body["num_tokens"] == rt.tokenizer.max_tokens
        assert body["score"] == pytest.approx(float(direct(rt, text, mode)[1]), abs=1e-6)
        results[mode] = body["score"]
    assert results["head"] != pytest.approx(results["tail"], abs=1e-6)
    # The model's own policy applies when the request names none.
    assert client.post("/v1/sentiment", json={"text": text, "model": GRU_UNI}).json()["score"] == pytest.approx(
        results[rt.tokenizer.truncation], abs=1e-6
    )


def test_models_lists_every_artifact_with_its_provider(client):
    body = client.get("/v1/models").json()
    assert body["default"] == DEFAULT
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {DEFAULT, GRU_UNI, LSTM_UNI_LAST}
    assert by_name[GRU_UNI]["cell"] == "gru" and by_name[GRU_UNI]["directions"] == 1
    assert by_name[DEFAULT]["default"] is True and by_name[GRU_UNI]["default"] is False
    for model in body["models"]:
        assert model["provider"] == "CPUExecutionProvider" and model["providers"] == ["CPUExecutionProvider"]
        assert model["vocab_size"] > 2 and model["max_tokens"] > 0


def test_probes(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "models": {name: "CPUExecutionProvider" for name in (DEFAULT, GRU_UNI, LSTM_UNI_LAST)},
    }


def test_openapi_docs(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/sentiment", "/v1/sentiment/batch", "/v1/models", "/healthz", "/readyz", "/metrics"} <= set(paths)


def test_static_page_is_mounted_after_the_api(make_client, tmp_path, monkeypatch):
    (tmp_path / "index.html").write_text("<h1>page</h1>")
    monkeypatch.setattr(app_module, "STATIC_DIR", tmp_path)
    with make_client() as c:
        assert c.get("/").text == "<h1>page</h1>"
        assert c.get("/healthz").json() == {"status": "ok"}  # the API still wins
        assert c.post("/v1/sentiment", json={"text": "great"}).status_code == 200
        missing = c.get("/nothing-here.js")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        # A path the API owns never falls through to the page: a wrong method is the API's 405, naming its method.
        wrong = c.get("/v1/sentiment")
        assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
        assert wrong.headers["allow"] == "POST"
