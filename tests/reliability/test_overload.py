"""Overload against a real server with a small queue (4 texts): while the model is stuck, excess requests - plain
and diagnostics - get 503 + Retry-After at once instead of hanging; when the model comes back, everything that
was admitted is answered and the service is back to normal (queue empty, new requests scored, ready).

(tests/service/test_errors.py checks the plain-scoring 503 in-process; this adds a real server, a burst of
clients, the diagnostics path and recovery.)
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

from service.runtime import ModelRuntime

QUEUE = 4
RETRY_AFTER = 2
AT_ONCE_S = 1.0  # a refused request must be answered within this, however long the model is stuck


def test_excess_requests_get_503_at_once_and_the_service_recovers(live_server):
    gate = threading.Event()
    with live_server(queue_size=QUEUE, max_wait_ms=0, retry_after_s=RETRY_AFTER, max_batch_items=8) as srv:
        rt, batcher, state = srv.state.registry.get(None), srv.batcher(), srv.state

        def stuck_batch(encoded):
            gate.wait(30)
            return ModelRuntime.run_batch(rt, encoded)

        def stuck_diagnose(*args, **kwargs):
            gate.wait(30)
            return ModelRuntime.diagnose(rt, *args, **kwargs)

        rt.run_batch, rt.diagnose = stuck_batch, stuck_diagnose

        async def timed(c, path, body):
            start = time.monotonic()
            response = await c.post(path, json=body)
            return response, time.monotonic() - start

        async def scenario():
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as c:
                single = lambda text, **kw: asyncio.create_task(c.post("/v1/sentiment", json={"text": text, **kw}))  # noqa: E731
                admitted = [single("a great film")]
                while not batcher.in_flight:
                    await asyncio.sleep(0.01)
                admitted += [single(f"a dull film {i}") for i in range(QUEUE)]
                admitted += [single(f"loved it {i}", diagnostics=True) for i in range(QUEUE)]
                while batcher.depth < QUEUE or state.diagnosing < QUEUE:
                    await asyncio.sleep(0.01)

                # The burst: 20 plain, 10 diagnostics, 2 batch requests, all while the model is stuck.
                burst = (
                    [("/v1/sentiment", {"text": f"awful {i}"}) for i in range(20)]
                    + [("/v1/sentiment", {"text": f"superb {i}", "attribution": True}) for i in range(10)]
                    + [("/v1/sentiment/batch", {"items": [{"text": "fine"}] * 2})] * 2
                )
                refused = await asyncio.gather(*[timed(c, path, body) for path, body in burst])
                for response, seconds in refused:
                    assert response.status_code == 503, response.text
                    assert response.json()["error"]["code"] == "overloaded"
                    assert response.headers["retry-after"] == str(RETRY_AFTER)
                    assert seconds < AT_ONCE_S, f"a refusal took {seconds:.2f} s"
                assert not any(t.done() for t in admitted)  # the admitted ones are still waiting, not failed
                print(f"overload: {len(refused)} refused with 503, slowest refusal {max(s for _, s in refused):.3f} s")

                gate.set()
                for response in await asyncio.gather(*admitted):
                    assert response.status_code == 200, response.text

                # Recovered: queue and diagnostics slots empty, traffic within capacity all scored, ready again.
                assert batcher.depth == 0 and state.diagnosing == 0
                for _ in range(3):
                    wave = [c.post("/v1/sentiment", json={"text": f"wave {i}", "diagnostics": i == 0}) for i in range(QUEUE)]
                    assert all(r.status_code == 200 for r in await asyncio.gather(*wave))
                # A batch request bigger than the whole queue is served once nothing waits (never a permanent 503).
                big = await c.post("/v1/sentiment/batch", json={"items": [{"text": "fine"}] * (QUEUE + 2)})
                assert big.status_code == 200, big.text
                big = await c.post("/v1/sentiment/batch", json={"diagnostics": True, "items": [{"text": "fine"}] * (QUEUE + 2)})
                assert big.status_code == 200, big.text
                assert (await c.get("/readyz")).status_code == 200

        try:
            asyncio.run(scenario())
        finally:
            gate.set()
            rt.__dict__.pop("run_batch", None)
            rt.__dict__.pop("diagnose", None)
