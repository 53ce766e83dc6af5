"""Hostile clients against a real server (RELIABILITY.md, "Hostile clients"): no request stalls the others, no
client without a valid key can make the server hold memory or sockets, an abandoned upload is not a server error,
diagnostics stop when their client leaves, and the contract holds at its edges.
"""

from __future__ import annotations

import threading
import time

import httpx

# The slowest text to tokenize that we know of (the old `<br` pattern aside): every character a token or an entity
# prefix, 20,000 characters (the default limit), ~30 ms of tokenizer work each on this machine (the test sends 32).
HOSTILE_TEXT = "&#39" * 5_000
PROBE_LIMIT_S = 0.100


def _probe_healthz_while(url: str, busy: threading.Thread) -> list[float]:
    """/healthz latencies from a second connection, one after another, for as long as `busy` runs."""
    latencies = []
    with httpx.Client(base_url=url, timeout=30) as c:
        c.get("/healthz")  # open the connection first: only the server's answer is timed
        while busy.is_alive():
            start = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
    return latencies


# -- 1: one request must not stall every client ------------------------------------------------------------------
def _healthz_during_a_hostile_batch(url: str, items: int) -> tuple[dict, list[float]]:
    body = {"items": [{"text": HOSTILE_TEXT} for _ in range(items)]}
    answer = {}

    def big():
        start = time.perf_counter()
        answer["status"] = httpx.post(f"{url}/v1/sentiment/batch", json=body, timeout=300).status_code
        answer["took"] = time.perf_counter() - start

    thread = threading.Thread(target=big)
    thread.start()
    latencies = _probe_healthz_while(url, thread)
    thread.join()
    return answer, latencies


def test_a_huge_hostile_request_does_not_delay_healthz(serve_process):
    with serve_process() as (url, _):
        answer, latencies = _healthz_during_a_hostile_batch(url, 32)
        if max(latencies) >= PROBE_LIMIT_S:
            # One more try before calling it: on a shared 2-core machine a burst of other load can stall any probe
            # once (an idle server's worst probe reached 42 ms at load average 9). Tokenizing on the event loop
            # failed every try: the first probe waited for the whole request, seconds.
            answer, latencies = _healthz_during_a_hostile_batch(url, 32)
    assert answer["status"] == 200
    # The probes overlapped a request that was really working (not answered in a blink) ...
    assert answer["took"] > 0.3 and len(latencies) >= 3, (answer, latencies)
    # ... and none waited for it. The worst probe, not a mean: a client sees the worst one.
    assert max(latencies) < PROBE_LIMIT_S, f"/healthz took up to {max(latencies) * 1e3:.0f} ms while a " \
                                           f"{answer['took']:.2f} s request ran ({len(latencies)} probes)"
