"""Sanity checks a person would run on the shipped default model's diagnostics, through the HTTP API.

- A short text with one obvious sentiment word ranks that word first by contribution (>= 90% of the texts), with
  the word's sign.
- Negations: "not" and the word it negates get opposite-signed or jointly verdict-signed contributions, and every
  text's contributions add up with the baseline to the final log-odds, as the verdict does.
- The running score at a token is what the API answers for the text cut there (random cuts, 1e-4).
"""

from __future__ import annotations

import math
import random

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

# (text, the sentiment word, its polarity)
ONE_WORD = [
    ("A wonderful film.", "wonderful", 1),
    ("The plot was dreadful.", "dreadful", -1),
    ("What a brilliant performance.", "brilliant", 1),
    ("The acting was awful.", "awful", -1),
    ("This movie is boring.", "boring", -1),
    ("An excellent cast.", "excellent", 1),
    ("The script was terrible.", "terrible", -1),
    ("A beautiful story.", "beautiful", 1),
    ("The ending was stupid.", "stupid", -1),
    ("I loved this film.", "loved", 1),
    ("I hated the characters.", "hated", -1),
    ("The dialogue was horrible.", "horrible", -1),
    ("Superb direction.", "superb", 1),
    ("A fantastic soundtrack.", "fantastic", 1),
    ("The effects were poor.", "poor", -1),
    ("The pacing is dull.", "dull", -1),
    ("A delightful comedy.", "delightful", 1),
    ("The jokes were lame.", "lame", -1),
    ("Great cinematography.", "great", 1),
    ("The story was predictable.", "predictable", -1),
    ("An amazing cast.", "amazing", 1),
    ("The film is a mess.", "mess", -1),
    ("A touching drama.", "touching", 1),
    ("The sequel was pointless.", "pointless", -1),
    ("The music is gorgeous.", "gorgeous", 1),
    ("The movie was a waste.", "waste", -1),
    ("A perfect ending.", "perfect", 1),
    ("The characters were annoying.", "annoying", -1),
    ("An enjoyable evening.", "enjoyable", 1),
    ("The plot is ridiculous.", "ridiculous", -1),
    ("A hilarious film.", "hilarious", 1),
    ("The acting was bad.", "bad", -1),
]
NEGATIONS = [
    ("This film is not bad.", "not", "bad"),
    ("Not bad at all!", "not", "bad"),
    ("The movie was not good.", "not", "good"),
    ("It is not boring.", "not", "boring"),
    ("The plot was not great.", "not", "great"),
    ("Not a bad film.", "not", "bad"),
]
PREFIX_TEXTS = [
    "The acting was wooden and the plot made no sense, but the final twenty minutes were wonderful.",
    "I loved the music, the acting and the story. Sadly the last act drags and the ending is a letdown!",
    "A wonderful, moving film. The cast is superb.",
]


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(intra_op_threads=1, inter_op_threads=1))) as c:
        yield c


def diagnose(client, text: str) -> dict:
    r = client.post("/v1/sentiment", json={"text": text, "diagnostics": True})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_default_model_has_exact_diagnostics(client):
    summary = diagnose(client, "A wonderful film.")["diagnostics"]["summary"]
    assert summary["running_score_method"] == "exact"
    assert summary["contribution_method"].startswith("state_change")


def test_the_one_sentiment_word_ranks_first(client):
    misses = []
    for text, word, polarity in ONE_WORD:
        tokens = diagnose(client, text)["diagnostics"]["tokens"]
        top = max(tokens, key=lambda t: abs(t["contribution"]))
        if top["token"] != word or math.copysign(1, top["contribution"]) != polarity:
            misses.append((text, top["token"], top["contribution"]))
    assert len(misses) <= 0.1 * len(ONE_WORD), misses


@pytest.mark.parametrize("text,neg,word", NEGATIONS)
def test_negations_add_up_as_the_verdict_does(client, text, neg, word):
    body = diagnose(client, text)
    report = body["diagnostics"]
    tokens = {t["token"]: t["contribution"] for t in report["tokens"]}
    summary = report["summary"]
    total = summary["contribution_baseline"] + sum(t["contribution"] for t in report["tokens"])
    assert total == pytest.approx(summary["final_logodds"], abs=1e-3)
    assert summary["final_logodds"] == pytest.approx(math.log(body["score"] / (1 - body["score"])), abs=1e-3)
    verdict = math.copysign(1, summary["final_logodds"])
    pair = (tokens[neg], tokens[word])
    opposite = pair[0] * pair[1] < 0
    jointly_with_verdict = all(math.copysign(1, c) == verdict for c in pair)
    assert opposite or jointly_with_verdict, (text, pair, verdict)


def test_running_score_is_the_answer_for_the_text_cut_there(client):
    rng = random.Random(0)
    worst = 0.0
    for text in PREFIX_TEXTS:
        tokens = diagnose(client, text)["diagnostics"]["tokens"]
        for t in rng.sample(tokens, min(6, len(tokens))):
            cut = text[: t["end"]]
            score = client.post("/v1/sentiment", json={"text": cut}).json()["score"]
            worst = max(worst, abs(score - t["running_score"]))
    assert worst <= 1e-4
