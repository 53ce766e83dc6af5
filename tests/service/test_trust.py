"""Out-of-vocabulary honesty (issue 17 part 4): every result carries unknown_share and warnings, from thresholds in
the settings; abstaining (label null) only when its setting is on."""

from __future__ import annotations

import pytest

from service.trust import TrustPolicy

FOREIGN = "これは映画のレビューです とても悪い"  # no Latin letter: every token is [UNK] for an English vocabulary
REVIEW = "the film was great and the acting superb, I loved the plot"


def test_text_the_model_cannot_read_is_flagged_and_english_is_not(client):
    foreign = client.post("/v1/sentiment", json={"text": FOREIGN}).json()
    assert foreign["unknown_share"] == 1.0 and "mostly_unknown_tokens" in foreign["warnings"]
    assert foreign["label"] in ("negative", "positive") and "abstained" not in foreign  # abstaining is off by default
    english = client.post("/v1/sentiment", json={"text": REVIEW}).json()
    assert english["unknown_share"] < 0.5 and english["warnings"] == []


def test_short_and_truncated_texts_are_flagged(client):
    assert "very_short" in client.post("/v1/sentiment", json={"text": "great"}).json()["warnings"]
    long = client.post("/v1/sentiment", json={"text": " ".join(["great film"] * 400)}).json()
    assert long["truncated"] and "truncated" in long["warnings"]


def test_abstaining_withholds_the_label_past_its_threshold(make_client):
    with make_client(abstain_unknown_share=0.9) as c:
        foreign = c.post("/v1/sentiment", json={"text": FOREIGN}).json()
        assert foreign["label"] is None and foreign["abstained"] == "mostly_unknown_tokens"
        assert foreign["score"] == pytest.approx(foreign["probabilities"]["positive"])  # the model's answer stays
        batch = c.post("/v1/sentiment/batch", json={"items": [{"text": FOREIGN}, {"text": REVIEW}]}).json()["results"]
        assert batch[0]["label"] is None and batch[1]["label"] in ("negative", "positive")
        assert "abstained" not in batch[1]


def test_thresholds_come_from_the_settings(make_client):
    with make_client(warn_unknown_share=1.0, warn_min_tokens=0) as c:
        body = c.post("/v1/sentiment", json={"text": "great"}).json()
        assert body["warnings"] == []


def test_policy_counts_unknown_tokens_among_those_scored(client):
    rt = client.app.state.service.registry.get(None)
    enc = rt.encode([FOREIGN + " " + REVIEW])[0]
    share, warnings, reason = TrustPolicy(abstain_unknown_share=0.01).assess(enc, rt.tokenizer.unk_id)
    assert 0 < share < 1 and reason == "mostly_unknown_tokens"
