"""`sentiment-serve --workers 2` as a real subprocess: both workers answer on the one port, /metrics sums them, a
SIGKILLed worker is logged and replaced (and /readyz says not ready until it is), SIGTERM drains an in-flight
request and exits 0."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
HEADER = "x-sentiment-worker"


class Server:
    """The subprocess with its log read line by line, so tests wait for a log line instead of sleeping."""

    def __init__(self, root: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "SENTIMENT_INTRA_OP_THREADS": "1", "SENTIMENT_DEFAULT_MODEL": "tiny-lstm"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.server",
                "--workers",
                "2",
                "--port",
                str(self.port),
                "--model-dir",
                str(root),
                "--log-level",
                "info",
                "--graceful-timeout",
                "20",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.rstrip())
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_log(self, pattern: str, timeout: float = 60, count: int = 1) -> list[re.Match]:
        """The first `count` log lines matching `pattern`, waiting for them."""

        def found():
            return [m for m in map(re.compile(pattern).search, self.lines) if m]

        with self.changed:
            ok = self.changed.wait_for(lambda: len(found()) >= count or self.proc.poll() is not None, timeout)
            assert ok and len(found()) >= count, f"no {pattern!r} in the log:\n" + "\n".join(self.lines[-40:])
            return found()[:count]

    def wait_ready(self) -> None:
        self.wait_log(r"ready: \d+ model", count=2)  # both workers' lifespans started
        assert httpx.get(f"{self.url}/readyz", timeout=10).status_code == 200

    def pids_answering(self, requests: int = 64) -> list[str]:
        """Worker pids of `requests` GET /healthz, each on a new connection, 8 at a time."""

        def one(_):
            response = httpx.get(f"{self.url}/healthz", headers={"connection": "close"}, timeout=10)
            assert response.status_code == 200
            return response.headers[HEADER]

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(requests)))

    def worker_pids(self) -> dict[int, str]:
        return {int(m[1]): m[2] for m in map(re.compile(r"worker (\d) started \(pid (\d+)\)").search, self.lines) if m}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            for pid in self.worker_pids().values():  # the workers stop by themselves (supervisor gone); be sure
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


@contextmanager
def two_workers(root: Path):
    server = Server(root)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(serving_root):
    with two_workers(serving_root) as s:
        yield s


def requests_total(url: str, route: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf'^sentiment_requests_total{{method="GET",route="{re.escape(route)}",status="200"}} (\S+)$', text, re.M)
    return float(match[1]) if match else 0.0


def test_both_workers_answer_on_the_one_port(server):
    pids = set(server.pids_answering())
    assert pids == set(server.worker_pids().values()) and len(pids) == 2


def test_metrics_sum_the_requests_of_every_worker(server):
    before = requests_total(server.url, "/healthz")
    pids = server.pids_answering(40)
    assert len(set(pids)) == 2  # both counted below, so one worker's own count would be short
    assert requests_total(server.url, "/healthz") - before == 40
    text = httpx.get(f"{server.url}/metrics").text
    assert re.search(
        r'^sentiment_model_info{model="tiny-lstm",provider="CPUExecutionProvider",version="[^"]+"} 1\.0$', text, re.M
    ), "a model served by both workers is listed once"


def test_a_killed_worker_is_logged_and_replaced(server):
    old = server.worker_pids()[1]
    os.kill(int(old), signal.SIGKILL)
    server.wait_log(rf"worker 1 \(pid {old}\) exited with signal SIGKILL; starting a new one")
    # Not ready while the replacement loads: /readyz on the surviving worker says so.
    response = httpx.get(f"{server.url}/readyz")
    assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
    new = server.wait_log(r"worker 1 started \(pid (\d+)\)", count=2)[1][1]
    server.wait_log(r"ready: \d+ model", count=3)
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert set(server.pids_answering()) == {server.worker_pids()[0], new} and new != old


def test_sigterm_drains_an_in_flight_request_and_exits_0(serving_root):
    with two_workers(serving_root) as server:
        body = b'{"text": "a wonderful, moving film"}'
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
            conn.sendall(
                b"POST /v1/sentiment HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nexpect: 100-continue\r\n\r\n" % len(body)
            )
            # "100 Continue" comes when the app asks for the body: the request is in a worker, in flight.
            assert conn.recv(100).startswith(b"HTTP/1.1 100 Continue")
            server.proc.send_signal(signal.SIGTERM)
            server.wait_log(r"Shutting down", count=2)  # both workers are draining
            with pytest.raises(httpx.TransportError):  # nobody accepts new connections any more
                httpx.get(f"{server.url}/healthz", timeout=5)
            conn.sendall(body)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = conn.recv(65536)
                assert chunk, answer
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert b'"score":' in answer.replace(b" ", b"")
        assert server.proc.wait(timeout=30) == 0
        server.wait_log(r"all workers stopped")
