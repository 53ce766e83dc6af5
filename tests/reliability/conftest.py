"""Fixtures for the reliability and security tests (RELIABILITY.md lists what each test shows).

model_root     a model root holding a copy of the session's trained `tiny-lstm` (tests may break their own copies)
make_settings  Settings over `model_root`, one onnxruntime thread, overridable
live_server    context manager: the real app under a real uvicorn server on a loopback port, in a thread of this
               process (so tests can reach into `server.state` and monkeypatch the runtime); stops on exit
serve_process  context manager: `sentiment-serve` as a subprocess on a free loopback port, ready when it yields;
               RELIABILITY_SERVE_ARGS (e.g. "--workers 2") adds arguments to each plain one (not to a `command`
               such as slow_serve.py, whose patches live in its own process), so the subprocess tests run
               against several workers: RELIABILITY_SERVE_ARGS="--workers 2" pytest tests/reliability
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from service.app import create_app
from service.http_limits import uvicorn_config
from service.routes import ServiceState
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny-lstm"


def free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with free_socket() as sock:
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def model_root(tiny_artifact, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reliability_models")
    shutil.copytree(tiny_artifact, root / MODEL)
    return root


@pytest.fixture(scope="session")
def make_settings(model_root):
    def make(**overrides) -> Settings:
        return Settings(**{"model_root": model_root, "intra_op_threads": 1, "inter_op_threads": 1, **overrides})

    return make


@dataclass
class LiveServer:
    url: str
    port: int
    app: object
    server: uvicorn.Server

    @property
    def state(self) -> ServiceState:
        return self.app.state.service

    def batcher(self, model: str = MODEL):
        return self.state.batchers[model]


@pytest.fixture(scope="session")
def live_server(make_settings):
    @contextmanager
    def run(**overrides):
        settings = make_settings(**overrides)
        app = create_app(settings)
        sock = free_socket()
        port = sock.getsockname()[1]
        # log_config=None: leave logging to pytest (caplog), do not let uvicorn reconfigure it. The limits on heads,
        # timeouts and WebSocket are sentiment-serve's (service/http_limits.py).
        config = uvicorn_config(app, settings, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=5)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="live-uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the live server did not start"
            time.sleep(0.02)
        try:
            yield LiveServer(f"http://127.0.0.1:{port}", port, app, server)
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()
            assert not thread.is_alive(), "the live server did not stop"

    return run


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.stdout.read().decode() if proc.stdout and proc.poll() is not None else ""
            raise AssertionError(f"the server did not become ready (exit {proc.poll()}): {out}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def serve_process(model_root):
    """serve_process(*args, env={}, command=None) -> (url, Popen): `sentiment-serve --model-dir <model_root>` (or
    `command`, an argv prefix) on a free loopback port; SIGKILLed on exit if it is still running."""

    @contextmanager
    def run(*args: str, env: dict | None = None, command: list[str] | None = None):
        port = free_port()
        argv = (command or [sys.executable, "-m", "service.server"]) + [
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model-dir",
            str(model_root),
            "--log-level",
            "warning",
            *([] if command else shlex.split(os.environ.get("RELIABILITY_SERVE_ARGS", ""))),
            *args,
        ]
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, "SENTIMENT_INTRA_OP_THREADS": "1", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, proc)
            yield url, proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
            proc.stdout.close()

    return run
