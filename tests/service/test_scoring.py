"""The scoring core without HTTP (service/scoring.py): tokenization in batches, per-item batch results, and the one
table that gives each of its errors an HTTP status."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service import exceptions
from service.errors import STATUS, as_api_error
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.reload import start_batcher
from service.scoring import ScoringCore


@pytest.fixture()
def core(make_settings):
    settings = make_settings(max_text_chars=50)
    state = ScoringCore(settings=settings, metrics=Metrics(), registry=ModelRegistry.load(settings), ready=True)
    yield state
    state.tokenizer_pool.shutdown(wait=False)


def test_concurrent_requests_are_tokenized_together(core):
    rt = core.model(None)
    calls = []
    real = rt.encode

    def counting(texts, truncation=None):
        calls.append(len(texts))
        return real(texts, truncation)

    rt.encode = counting
    try:

        async def scenario():
            texts = [f"a fine film number {i} " + "with more to say " * 40 for i in range(20)]  # over INLINE_CHARS
            got = await asyncio.gather(*(core.encode(rt, [t]) for t in texts))
            return texts, got

        texts, got = asyncio.run(scenario())
    finally:
        rt.__dict__.pop("encode", None)
    assert sum(calls) == 20 and len(calls) < 20  # requests that waited for a thread shared one call
    for text, (enc,) in zip(texts, got):
        assert enc.ids.tolist() == rt.encode([text])[0].ids.tolist()


def test_a_short_single_text_is_tokenized_on_the_loop_and_the_same(core):
    """A text of at most INLINE_CHARS costs less to tokenize than a thread hop: it is done in place. A longer one,
    or several texts, go to the pool (a 20,000-character text must never hold the event loop)."""
    rt = core.model(None)
    threads = []
    real = rt.encode

    def recording(texts, truncation=None):
        threads.append(threading.current_thread().name)
        return real(texts, truncation)

    rt.encode = recording
    short, long = "a fine film", "a fine film " * 50
    try:

        async def scenario():
            return [await core.encode(rt, texts) for texts in ([short], [long], [short, short])]

        got = asyncio.run(scenario())
    finally:
        rt.__dict__.pop("encode", None)
    assert threads[0] == "MainThread" and all(name.startswith("tokenize") for name in threads[1:]), threads
    for texts, encoded in zip(([short], [long], [short, short]), got):
        assert [e.ids.tolist() for e in encoded] == [e.ids.tolist() for e in rt.encode(texts)]


def test_batch_items_get_their_own_errors_and_the_rest_is_scored(core):
    rt = core.model(None)

    async def scenario():
        core.batchers[rt.name] = start_batcher(core, rt, None)
        try:
            return await core.classify_items(
                rt, ["a great film", " ", "x" * 51, "<br />", "dull"], lambda i: f"items[{i}].text", None
            )
        finally:
            await core.batchers[rt.name].stop()

    results = asyncio.run(scenario())
    assert [r.get("error", {}).get("code") for r in results] == [None, "empty_text", "text_too_large", "no_tokens", None]
    assert results[0]["label"] in ("negative", "positive") and "warnings" in results[4]
    assert "items[2].text" in results[2]["error"]["message"]


def test_every_core_error_has_one_http_status():
    kinds = [
        k
        for k in vars(exceptions).values()
        if isinstance(k, type) and issubclass(k, exceptions.ServiceError) and k is not exceptions.ServiceError
    ]
    assert kinds and all(any(issubclass(k, mapped) for mapped in STATUS) for k in kinds)
    err = as_api_error(exceptions.Overloaded("busy"), 3)
    assert (err.status, err.code, err.headers) == (503, "overloaded", {"Retry-After": "3"})
    assert as_api_error(exceptions.UnknownModel("no"), 3).status == 404


def test_the_registry_raises_the_core_error_not_an_http_one(core):
    with pytest.raises(exceptions.UnknownModel, match="nope"):
        core.model("nope")
