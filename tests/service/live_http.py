"""`live(app)`: the app under a real uvicorn server on a loopback port, in a thread of the test process, for tests
that drive the service with real protocol clients (tritonclient, huggingface_hub) or real concurrent load.

(tests/reliability/conftest.py has the same for its own model root; this one takes any app.)
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn


@contextmanager
def live(app, startup_timeout: float = 60) -> Iterator[str]:
    """Yields the base URL once the lifespan has run (models loaded); stops the server on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # log_config=None: leave logging to pytest (caplog), do not let uvicorn reconfigure it.
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="live-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the live server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "the live server did not stop"
