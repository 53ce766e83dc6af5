"""Hostile clients against a real server (RELIABILITY.md, "Hostile clients"): no request stalls the others, no
client without a valid key can make the server hold memory or sockets, an abandoned upload is not a server error,
diagnostics stop when their client leaves, and the contract holds at its edges.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

# The slowest text to tokenize that we know of (the old `<br` pattern aside): every character a token or an entity
# prefix, 20,000 characters (the default limit), ~30 ms of tokenizer work each on this machine (the test sends 32).
HOSTILE_TEXT = "&#39" * 5_000
PROBE_LIMIT_S = 0.100


def _probe_healthz_while(url: str, busy: threading.Thread, pause_s: float = 0.25) -> list[float]:
    """/healthz latencies from a second connection, a few a second for as long as `busy` runs. Spaced probes, not
    back-to-back ones: thousands of probes on a shared 2-core machine would mostly measure its scheduler, while a
    request that holds the event loop stalls every probe sent meanwhile."""
    latencies = []
    with httpx.Client(base_url=url, timeout=300) as c:
        c.get("/healthz")  # open the connection first: only the server's answer is timed
        while busy.is_alive():
            start = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(pause_s)
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
    assert max(latencies) < PROBE_LIMIT_S, (
        f"/healthz took up to {max(latencies) * 1e3:.0f} ms while a {answer['took']:.2f} s request ran ({len(latencies)} probes)"
    )


# -- 2, 3: heads, slow sockets, bodies of keyless clients, the body budget ---------------------------------------
KEY = "hostile-test-key-0123"


def _connect(port: int, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (or the socket's timeout passes)."""
    data = b""
    try:
        while part := sock.recv(65536):
            data += part
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def _send_until_refused(sock: socket.socket, head: bytes, line: bytes, most: int) -> tuple[int, bytes]:
    """Sends `head`, then `line` again and again (up to `most` bytes) until the server answers; returns the bytes
    sent and the answer."""
    sent = 0
    sock.sendall(head)
    try:
        while sent < most:
            sock.sendall(line)
            sent += len(line)
            ready, _, _ = select.select([sock], [], [], 0)
            if ready:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent, _read_all(sock)


def test_endless_headers_get_431_and_the_connection_closed(live_server):
    with live_server(max_header_bytes=8192, max_headers=50, api_keys=[KEY]) as srv:
        head = b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\n"
        # Endless short header lines (uvicorn's httptools kept them all: 1 GB for 5 such connections).
        with _connect(srv.port) as sock:
            sent, answer = _send_until_refused(sock, head, b"X-Filler: " + b"a" * 90 + b"\r\n", 50_000_000)
        assert answer.startswith(b"HTTP/1.1 431") and b'"headers_too_large"' in answer, answer[:300]
        assert sent < 1_000_000, sent  # refused early (the kernel's socket buffers hold what is in flight)
        # One header value that never ends: no line for the parser to hand over, counted as it arrives.
        with _connect(srv.port) as sock:
            sent, answer = _send_until_refused(sock, head + b"X-Filler: ", b"a" * 4096, 50_000_000)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:300]
        # Too many lines, each small.
        with _connect(srv.port) as sock:
            sock.sendall(head + b"".join(b"X-%d: 1\r\n" % i for i in range(60)) + b"\r\n")
            assert _read_all(sock).startswith(b"HTTP/1.1 431")
        # The server goes on.
        assert httpx.post(f"{srv.url}/v1/sentiment", json={"text": "fine"}, headers={"x-api-key": KEY}).status_code == 200


def test_idle_and_slow_sockets_are_closed(live_server):
    with live_server(header_timeout_s=0.5, body_timeout_s=0.5, keep_alive_s=0.5) as srv:
        socks = {
            "idle (no byte)": _connect(srv.port),
            "half a request line": _connect(srv.port),
            "a head that never ends": _connect(srv.port),
            "a body that stalls": _connect(srv.port),
            "keep-alive, idle after a response": _connect(srv.port),
        }
        socks["half a request line"].sendall(b"GET /heal")
        socks["a head that never ends"].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n")
        socks["a body that stalls"].sendall(
            b'POST /v1/sentiment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"text": "a'
        )
        socks["keep-alive, idle after a response"].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        answers = {name: _read_all(sock) for name, sock in socks.items()}  # each returns when the server closes
        took = time.monotonic() - start
        for sock in socks.values():
            sock.close()
        assert took < 8, took  # closed by the server (a socket timeout would be 10 s)
        assert answers["idle (no byte)"].startswith(b"HTTP/1.1 408")
        assert answers["half a request line"].startswith(b"HTTP/1.1 408")
        assert answers["a head that never ends"].startswith(b"HTTP/1.1 408")
        assert answers["a body that stalls"] == b""  # closed; the app saw a disconnect
        assert answers["keep-alive, idle after a response"].startswith(b"HTTP/1.1 200")
        assert httpx.get(f"{srv.url}/healthz").status_code == 200


def test_a_request_without_a_valid_key_gets_401_before_its_body_is_read(live_server):
    with live_server(api_keys=[KEY]) as srv:
        for key_header in (b"", b"X-API-Key: wrong-key-000000\r\n"):
            for framing in (b"Content-Length: 3999999\r\n", b"Transfer-Encoding: chunked\r\n"):
                with _connect(srv.port, timeout=5) as sock:
                    # The head only: a server that waited for (or buffered) the body would not answer.
                    sock.sendall(
                        b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        + key_header
                        + framing
                        + b"\r\n"
                    )
                    answer = _read_all(sock)
                assert answer.startswith(b"HTTP/1.1 401"), (key_header, framing, answer[:200])
                assert b"connection: close" in answer.lower()
        assert httpx.post(f"{srv.url}/v1/sentiment", json={"text": "fine"}, headers={"x-api-key": KEY}).status_code == 200


def test_request_bodies_in_flight_share_one_budget(live_server):
    with live_server(max_body_bytes=100_000, max_buffered_body_bytes=250_000, body_timeout_s=2) as srv:
        head = b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        socks = []
        for _ in range(3):  # 3 x 90 kB held: over the 250 kB budget
            sock = _connect(srv.port)
            sock.sendall(head + b"x" * 90_000)
            socks.append(sock)
        answers = [_read_all(sock) for sock in socks]
        for sock in socks:
            sock.close()
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        assert len(refused) == 1 and b"retry-after: 1" in refused[0].lower(), [a[:100] for a in answers]
        assert answers.count(b"") == 2  # the other two stalled until the body timeout closed them
        # Every byte was given back: a body that fits the whole budget is taken again.
        ok = httpx.post(f"{srv.url}/v1/sentiment/batch", json={"items": [{"text": "fine " * 3_600}] * 5})
        assert ok.status_code == 200, ok.text


# -- 4: an abandoned upload is the client's doing, not a server error -------------------------------------------
def _requests_total(url: str, status: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "sentiment_requests_total" and s.labels.get("status") == status
    )


def test_a_client_that_leaves_mid_body_counts_as_499_not_500(live_server, caplog):
    caplog.set_level(logging.INFO, logger="sentiment")
    with live_server() as srv:
        for _ in range(3):
            with _connect(srv.port) as sock:
                sock.sendall(
                    b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b'Content-Length: 1000\r\n\r\n{"text": "half a bo'
                )
        deadline = time.monotonic() + 10
        while _requests_total(srv.url, "499") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the server notices the closed sockets on its own schedule
        assert _requests_total(srv.url, "499") == 3
        assert _requests_total(srv.url, "500") == 0
    left = [r for r in caplog.records if "left before its request body was complete" in r.getMessage()]
    assert len(left) == 3 and all(r.levelno == logging.INFO for r in left)


# -- 5: diagnostics stop when their client leaves, and attribution is bounded ------------------------------------
def _raw_post(port: int, path: str, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    sock = _connect(port)
    sock.sendall(
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (path.encode(), len(data), data)
    )
    return sock


def _wait_for(condition, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_diagnostics_stop_when_the_client_leaves_and_attribution_is_bounded(live_server):
    gate = threading.Event()
    with live_server(max_attribution_texts=2) as srv:
        rt = srv.state.registry.get(None)
        real, calls = rt.diagnose, []

        def stuck(*args, **kwargs):  # every diagnostics text hangs until the gate opens
            calls.append(args[0])
            gate.wait(30)
            return real(*args, **kwargs)

        rt.diagnose = stuck
        try:
            # Two attribution texts fill the bound; a third is refused at once, while they are still stuck.
            held = [_raw_post(srv.port, "/v1/sentiment", {"text": f"great {i}", "attribution": True}) for i in range(2)]
            _wait_for(lambda: srv.state.attributing == 2, "two texts in attribution")
            refused = httpx.post(f"{srv.url}/v1/sentiment", json={"text": "great", "attribution": True}, timeout=5)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "overloaded" and "attribution" in refused.json()["error"]["message"]
            gate.set()
            assert all(_read_all(sock).startswith(b"HTTP/1.1 200") for sock in held)
            for sock in held:
                sock.close()
            # A batch of 6 texts with diagnostics; its client leaves while the first text is in the model.
            gate.clear()
            calls.clear()
            leaving = _raw_post(
                srv.port, "/v1/sentiment/batch", {"items": [{"text": f"a fine film {i}"} for i in range(6)], "diagnostics": True}
            )
            _wait_for(lambda: len(calls) == 1, "the first diagnostics text")
            leaving.close()
            gate.set()
            _wait_for(lambda: _requests_total(srv.url, "499") == 1, "the abandoned batch to count as 499")
        finally:
            gate.set()
        # The abandoned batch stopped after its first text: the rest never reached the model. One text of slack: on a
        # loaded machine the server may learn of the disconnect just after the gate lets the first text finish.
        assert calls[:1] == ["a fine film 0"] and len(calls) <= 2, calls
        assert srv.state.diagnosing == 0 and srv.state.attributing == 0


# -- 6: the contract at its edges ---------------------------------------------------------------------------------
def test_a_huge_integer_anywhere_is_invalid_json(live_server):
    with live_server() as srv:
        for body in (b'{"text": "fine", "model": ' + b"9" * 5_000 + b"}", b"[" + b"1" * 4_301 + b"]"):
            response = httpx.post(f"{srv.url}/v1/sentiment", content=body, headers={"content-type": "application/json"})
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "invalid_json"


def test_a_250000_item_batch_gets_its_413_without_validating_every_item(live_server, monkeypatch):
    from service import schemas

    validated = []
    real = schemas._unicode
    monkeypatch.setattr(schemas, "_unicode", lambda text: validated.append(1) or real(text))
    with live_server() as srv:
        body = b'{"items":[' + b",".join([b'{"text":"a"}'] * 250_000) + b"]}"  # 3.25 MB: under the body limit
        response = httpx.post(
            f"{srv.url}/v1/sentiment/batch", content=body, timeout=60, headers={"content-type": "application/json"}
        )
        assert response.status_code == 413 and response.json()["error"]["code"] == "batch_too_large", response.text
        assert "250000 items" in response.json()["error"]["message"]
    assert validated == []  # counted, not validated item by item


def test_websocket_upgrades_are_refused_quietly(live_server, caplog):
    caplog.set_level(logging.DEBUG)
    with live_server() as srv:
        for path in (b"/", b"/v1/sentiment", b"/ws"):
            with _connect(srv.port) as sock:
                sock.sendall(
                    b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                )
                answer = _read_all(sock)
            assert answer.startswith(b"HTTP/1.1 400") and b'"upgrade_not_supported"' in answer, answer[:300]
        assert httpx.get(f"{srv.url}/healthz").status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_security_headers_on_every_response(live_server):
    with live_server() as srv:
        responses = {
            "page": httpx.get(f"{srv.url}/"),
            "api": httpx.post(f"{srv.url}/v1/sentiment", json={"text": "ok"}),
            "error": httpx.post(f"{srv.url}/v1/sentiment", json={}),
            "probe": httpx.get(f"{srv.url}/healthz"),
            "404": httpx.get(f"{srv.url}/nothing-here"),
            "docs": httpx.get(f"{srv.url}/docs"),
            "413": httpx.post(f"{srv.url}/v1/sentiment", content=b"x" * 5_000_000),
        }
        with _connect(srv.port) as sock:  # answered by the protocol itself, before any app runs
            sock.sendall(b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 200 + b"\r\n")
            raw_431 = _read_all(sock)
    for name, response in responses.items():
        assert response.headers.get("x-content-type-options") == "nosniff", name
        assert response.headers.get("x-frame-options") == "DENY", name
        assert "frame-ancestors 'none'" in response.headers.get("content-security-policy", ""), name
    assert b"x-content-type-options: nosniff" in raw_431.lower()
    page_csp = responses["page"].headers["content-security-policy"]
    assert "script-src 'self'" in page_csp and "default-src 'self'" in page_csp
    assert "http-equiv" not in responses["page"].text.lower()  # the header replaces the meta tag
    assert "script-src 'self'" not in responses["docs"].headers["content-security-policy"]  # Swagger UI's CDN assets
