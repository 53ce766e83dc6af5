"""The scoring core without HTTP (service/scoring.py): tokenization in batches, per-item batch results, and the one
table that gives each of its errors an HTTP status."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service import exceptions
from service.errors import STATUS, as_api_error
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.reload import start_batcher
from service.scoring import ScoringCore, _unless_gone


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


# -- the client-gone watch --------------------------------------------------------------------------------------------
def _gone_after(seconds: float):
    async def gone() -> None:
        await asyncio.sleep(seconds)

    return gone


async def _work(seconds: float, log: list):
    try:
        await asyncio.sleep(seconds)
        return "result"
    except asyncio.CancelledError:
        log.append("cleaned up")
        raise


@pytest.mark.parametrize("watch_after", [0.0, 0.05])
def test_a_client_that_leaves_stops_its_work_and_the_request_is_not_left_cancelled(watch_after):
    async def scenario():
        log: list = []
        with pytest.raises(exceptions.ClientGone):
            await _unless_gone(_gone_after(0.0), _work(5, log), watch_after)
        # The cancellation was the watch's: the request can go on (answer 499) without being cancelled again.
        return log, asyncio.current_task().cancelling()

    started = time.monotonic()
    log, cancelling = asyncio.run(scenario())
    assert log == ["cleaned up"] and cancelling == 0
    assert watch_after <= time.monotonic() - started < 1


def test_work_done_before_the_watch_starts_is_answered_even_if_the_client_left():
    async def scenario():
        started = []

        async def gone():
            started.append(True)

        result = await _unless_gone(gone, _work(0.0, []), watch_after=0.05)
        await asyncio.sleep(0.1)  # the watch's timer was cancelled with the answer: it never runs
        return result, started

    assert asyncio.run(scenario()) == ("result", [])


def test_a_request_cancelled_by_the_server_stays_cancelled():
    async def scenario():
        log: list = []
        request = asyncio.ensure_future(_unless_gone(_gone_after(5), _work(5, log), 0.0))
        await asyncio.sleep(0.01)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        return log

    assert asyncio.run(scenario()) == ["cleaned up"]
