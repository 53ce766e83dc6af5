"""The micro-batcher: how it plans onnxruntime calls, that coalesced results equal unbatched ones, and its failure
rules (full queue, failed call, cancelled request, shutdown)."""

from __future__ import annotations

import asyncio
import random
import threading

import numpy as np
import pytest

from service.batching import BatcherStopped, MicroBatcher, QueueFull, plan_calls
from service.runtime import ModelRuntime, NoTokensError

WORDS = "the film was great awful boring superb plot acting loved hated and it dull".split()


@pytest.fixture(scope="module")
def runtime(serving_root):
    return ModelRuntime(serving_root / "tiny-lstm", intra_op_threads=1)


class Recording:
    """Wraps a runtime's run_batch to record the token lengths of every onnxruntime call."""

    def __init__(self, runtime: ModelRuntime, fail_if=None, gate: threading.Event | None = None):
        self.runtime, self.fail_if, self.gate, self.calls = runtime, fail_if, gate, []

    def __call__(self, encoded):
        if self.gate is not None:
            self.gate.wait(10)
        lengths = [e.num_tokens for e in encoded]
        self.calls.append(lengths)
        if self.fail_if and self.fail_if(lengths):
            raise RuntimeError("boom")
        return type(self.runtime).run_batch(self.runtime, encoded)


def texts(n: int, seed: int = 0, lo: int = 1, hi: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


async def run_with(runtime, coro_fn, recorder=None, **options):
    opts = {"max_items": 16, "max_tokens": 10_000, "max_wait_ms": 20, "queue_size": 100, **options}
    batcher = MicroBatcher(runtime, **opts)
    if recorder is not None:
        runtime.run_batch = recorder
    batcher.start()
    try:
        return await coro_fn(batcher)
    finally:
        await batcher.stop()
        runtime.__dict__.pop("run_batch", None)


# -- planning ---------------------------------------------------------------------------------------------------------
def test_plan_calls_respects_items_tokens_and_length_groups():
    rng = random.Random(3)
    items = [(k, rng.choice([1, 2, 3, 5, 8, 20, 40, 64, 200, 400])) for k in range(300)]
    calls = plan_calls(items, max_items=32, max_tokens=4096)
    assert sorted(k for call in calls for k, _ in call) == list(range(300))  # every item exactly once
    previous_max = 0
    for call in calls:
        lengths = [n for _, n in call]
        assert lengths == sorted(lengths) and lengths[0] >= previous_max  # shortest first
        previous_max = lengths[-1]
        assert len(call) <= 32
        assert len(call) == 1 or len(call) * lengths[-1] <= 4096
        assert lengths[-1] <= 2 * lengths[0] + 16  # no short text padded to a much longer one


def test_plan_calls_lets_one_long_text_exceed_the_token_budget():
    assert plan_calls([(0, 500)], max_items=8, max_tokens=100) == [[(0, 500)]]


# -- results --------------------------------------------------------------------------------------------------------
def test_micro_batched_results_equal_unbatched_ones(runtime):
    batch = texts(40, seed=1)
    encoded = runtime.encode(batch)
    alone = np.stack([runtime.run_batch([e])[0] for e in encoded])
    recorder = Recording(runtime)

    async def scenario(batcher):
        singles = [batcher.submit([e]) for e in encoded[:30]]
        group = batcher.submit(encoded[30:])  # a batch request: its texts scored together, in its order
        results = await asyncio.gather(*singles, group)
        return np.concatenate([r for r in results])

    together = asyncio.run(run_with(runtime, scenario, recorder))
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert len(recorder.calls) < 40 and max(map(len, recorder.calls)) > 1  # they really were coalesced
    assert sum(map(len, recorder.calls)) == 40


def test_short_texts_are_not_padded_to_long_ones(runtime):
    short, long = texts(6, seed=2, lo=2, hi=4), texts(6, seed=3, lo=50, hi=60)
    recorder = Recording(runtime)

    async def scenario(batcher):
        return await asyncio.gather(*[batcher.submit(runtime.encode([t])) for t in short + long])

    asyncio.run(run_with(runtime, scenario, recorder, max_wait_ms=50))
    for lengths in recorder.calls:
        assert max(lengths) <= 2 * min(lengths) + 16
    assert len(recorder.calls) == 2  # all arrived inside one wait: one call per length group


def test_token_budget_splits_calls(runtime):
    batch = texts(12, seed=4, lo=30, hi=30)  # 30 words each
    recorder = Recording(runtime)

    async def scenario(batcher):
        return await batcher.submit(runtime.encode(batch))

    asyncio.run(run_with(runtime, scenario, recorder, max_tokens=100))
    assert all(len(lengths) * max(lengths) <= 100 for lengths in recorder.calls)
    assert sum(map(len, recorder.calls)) == 12


def test_direct_predict_plans_its_calls_like_the_micro_batcher(runtime, monkeypatch):
    """ModelRuntime.predict (batch CLI, benchmarks) cuts calls by items, padded tokens and length groups too, and
    answers in input order with the same probabilities as scoring each text alone."""
    batch = texts(40, seed=5, lo=1, hi=60)
    encoded = runtime.encode(batch)
    recorder = Recording(runtime)
    monkeypatch.setattr(runtime, "run_batch", recorder)
    probs = runtime.predict(encoded, batch_size=8, max_tokens=120)
    monkeypatch.undo()
    assert sorted(n for call in recorder.calls for n in call) == sorted(e.num_tokens for e in encoded)
    assert all(len(c) <= 8 and (len(c) == 1 or len(c) * max(c) <= 120) for c in recorder.calls)
    alone = np.concatenate([runtime.run_batch([e]) for e in encoded])
    assert np.allclose(probs, alone, atol=1e-5)


# -- failure rules ----------------------------------------------------------------------------------------------------
def test_a_failed_call_fails_only_its_own_requests(runtime):
    short, long = runtime.encode(["great fun"]), runtime.encode(texts(1, seed=5, lo=50, hi=50))
    recorder = Recording(runtime, fail_if=lambda lengths: max(lengths) > 20)

    async def scenario(batcher):
        return await asyncio.gather(batcher.submit(short), batcher.submit(long), return_exceptions=True)

    ok, failed = asyncio.run(run_with(runtime, scenario, recorder, max_wait_ms=50))
    np.testing.assert_allclose(ok, runtime.run_batch(short), atol=1e-6)
    assert isinstance(failed, RuntimeError) and str(failed) == "boom"


def test_texts_without_tokens_are_refused_before_they_reach_a_call(runtime):
    empty = runtime.encode(["<br />"])

    async def scenario(batcher):
        with pytest.raises(NoTokensError):
            await batcher.submit(runtime.encode(["great"]) + empty)
        return await batcher.submit(runtime.encode(["great"]))

    assert asyncio.run(run_with(runtime, scenario)).shape == (1, 2)


def test_full_queue_refuses_and_cancelled_waiters_give_their_slots_back(runtime):
    gate = threading.Event()
    recorder = Recording(runtime, gate=gate)
    enc = runtime.encode(["great"])

    async def scenario(batcher):
        running = asyncio.create_task(batcher.submit(enc))
        while not recorder.calls and not batcher.in_flight:
            await asyncio.sleep(0.005)
        waiting = [asyncio.create_task(batcher.submit(enc)) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert batcher.depth == 3
        with pytest.raises(QueueFull):
            await batcher.submit(enc)
        with pytest.raises(QueueFull):  # a batch request that does not fit is refused whole
            await batcher.submit(enc * 2)
        waiting[0].cancel()
        await asyncio.gather(waiting[0], return_exceptions=True)
        assert batcher.depth == 2
        waiting.append(asyncio.create_task(batcher.submit(enc)))
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(running, *waiting[1:])
        assert batcher.depth == 0
        return results

    try:
        results = asyncio.run(run_with(runtime, scenario, recorder, queue_size=3, max_wait_ms=0))
    finally:
        gate.set()
    assert len(results) == 4
    assert sum(map(len, recorder.calls)) == 4  # the cancelled text never reached the model


def test_stop_fails_waiting_requests(runtime):
    gate = threading.Event()
    recorder = Recording(runtime, gate=gate)
    enc = runtime.encode(["great"])

    async def scenario(batcher):
        tasks = [asyncio.create_task(batcher.submit(enc)) for _ in range(3)]
        await asyncio.sleep(0.05)
        await batcher.stop()
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        with pytest.raises(BatcherStopped):
            await batcher.submit(enc)
        return results

    try:
        results = asyncio.run(run_with(runtime, scenario, recorder, max_wait_ms=0))
    finally:
        gate.set()
    assert all(isinstance(r, BatcherStopped) for r in results)


def test_in_flight_counts_texts_being_scored_and_in_diagnostics(runtime):
    gate = threading.Event()
    recorder = Recording(runtime, gate=gate)
    enc = runtime.encode(["great film", "dull plot"])
    real_diagnose, entered = runtime.diagnose, threading.Event()

    def held_diagnose(*args, **kwargs):
        entered.set()
        gate.wait(10)
        return real_diagnose(*args, **kwargs)

    async def scenario(batcher):
        runtime.diagnose = held_diagnose
        assert batcher.in_flight == 0 and not batcher.busy
        scoring = asyncio.create_task(batcher.submit(enc))
        diagnosing = asyncio.create_task(batcher.diagnose("great film", enc[0], False, False, 1000))
        while batcher.in_flight < 3 or not entered.is_set():  # both texts in the call, one in diagnostics
            await asyncio.sleep(0.005)
        assert batcher.in_flight == 3 and batcher.busy and batcher.depth == 0
        gate.set()
        probs, (diag_probs, report) = await asyncio.gather(scoring, diagnosing)
        assert batcher.in_flight == 0 and not batcher.busy
        return probs, diag_probs

    try:
        probs, diag_probs = asyncio.run(run_with(runtime, scenario, recorder, max_wait_ms=0))
    finally:
        gate.set()
        runtime.__dict__.pop("diagnose", None)
    assert np.allclose(probs[0], diag_probs, atol=1e-5)


# -- memory -----------------------------------------------------------------------------------------------------------
def test_an_idle_batcher_hands_freed_memory_back_once_and_a_busy_one_never(runtime, monkeypatch):
    import service.batching as batching

    released = []  # (thread name, texts being scored at that moment)
    scoring = []
    monkeypatch.setattr(batching, "RELEASE_AFTER_S", 0.05)
    monkeypatch.setattr(
        batching, "release_freed_memory", lambda: released.append((threading.current_thread().name, len(scoring)))
    )

    def slow(encoded):
        scoring.append(1)
        try:
            threading.Event().wait(0.02)
            return type(runtime).run_batch(runtime, encoded)
        finally:
            scoring.pop()

    async def scenario(batcher):
        enc = runtime.encode(texts(4))
        for _ in range(8):  # busy: a window every ~20 ms, each closer to the last than RELEASE_AFTER_S
            await batcher.submit(enc)
        during = len(released)
        await asyncio.sleep(0.2)  # idle
        return during, len(released)

    during, after = asyncio.run(run_with(runtime, scenario, slow, max_wait_ms=0))
    assert during == 0 and after == 1
    assert released[0][0].startswith("ort-") and released[0][1] == 0  # in the model's thread, between calls
