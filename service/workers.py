"""Several `sentiment-serve` worker processes behind one port (`--workers N`, `SENTIMENT_WORKERS`).

The supervisor (the process `sentiment-serve` starts as) binds the listening socket once and starts N workers with
the `spawn` method, so each is a fresh interpreter with its own onnxruntime sessions, micro-batchers and event loop,
all accepting on that one inherited socket. It then only watches them:

- SIGTERM/SIGINT: every worker gets SIGTERM and drains (uvicorn stops accepting, in-flight requests finish within
  --graceful-timeout, then the lifespan stops the batchers); the supervisor exits 0 when all exited cleanly.
- SIGHUP: passed to every worker, each hot-reloads its models (service/reload.py).
- A worker that dies after it was ready is logged and replaced; one that dies before it was ever ready (a start
  that cannot work, e.g. out of memory) stops the whole server with exit status 1 rather than a restart loop.
- Prometheus metrics: each worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (prometheus-client's
  multiprocess mode), so /metrics on any worker reports all of them; a dead worker's live gauges are dropped.
- Readiness: one shared byte per worker, set when its lifespan has started and cleared by the supervisor when it
  dies; /readyz on any worker answers 503 until every worker is ready (`WorkerApp`).

Workers are in their own process group, so a terminal's Ctrl-C reaches the supervisor only (a second SIGINT would
make uvicorn skip the drain), and each one stops by itself if the supervisor is gone (SIGKILLed).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

log = logging.getLogger("sentiment.workers")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A worker's slot in the shared readiness array: it goes 0 -> 1 when its lifespan has started, 1 -> 2 when it stops.
NOT_STARTED, READY, STOPPING = 0, 1, 2
WORKER_HEADER = b"x-sentiment-worker"  # the answering worker's pid: shows the load spread (and tests use it)


def usable_cores() -> int:
    """CPUs this process may run on: its affinity mask, bounded by a cgroup v2 CPU quota (a container's --cpus)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))  # a 1.5-CPU quota still gets 2 workers
    except (OSError, ValueError):
        pass
    return max(1, cores)


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening address, bound (not yet listening: until a worker is ready, connections are refused, not held).
    Raises OSError (address in use, no permission) before anything else starts."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@dataclass(frozen=True)
class WorkerOptions:
    """What a worker needs to rebuild the app the supervisor checked (picklable: it crosses a spawn)."""

    overrides: dict
    log_level: str
    graceful_timeout: float
    workers: int


class WorkerApp:
    """ASGI wrapper in each worker: marks the worker ready in the shared slots once its lifespan has started, answers
    /readyz with 503 until every worker is, and names the answering worker in a header."""

    def __init__(self, app, index: int, ready, retry_after_s: int):
        self.app, self.index, self.ready, self.retry_after_s = app, index, ready, retry_after_s
        self.pid_header = (WORKER_HEADER, str(os.getpid()).encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, self._lifespan_receive(receive), self._lifespan_send(send))
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # (Read only for /readyz: the shared flags sit behind a lock between processes.)
        if scope["path"] == "/readyz" and (waiting := sum(1 for flag in self.ready[:] if flag != READY)):
            body = json.dumps(
                {"error": {"code": "not_ready", "message": f"{waiting} of {len(self.ready)} workers not ready yet"}}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", str(self.retry_after_s).encode()),
                        self.pid_header,
                    ],
                }
            )
            return await send({"type": "http.response.body", "body": body})

        async def named_send(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.pid_header]}
            await send(message)

        await self.app(scope, receive, named_send)

    def _lifespan_send(self, send):
        async def lifespan_send(message):
            if message["type"] == "lifespan.startup.complete":
                self.ready[self.index] = READY
            await send(message)

        return lifespan_send

    def _lifespan_receive(self, receive):
        async def lifespan_receive():
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                self.ready[self.index] = STOPPING
            return message

        return lifespan_receive


def _watch_parent(server, parent: int) -> None:
    # Not the supervisor's child any more (it was SIGKILLed): stop like on SIGTERM instead of serving orphaned.
    while not server.should_exit:
        if os.getppid() != parent:
            log.warning("supervisor %d is gone; stopping", parent)
            server.should_exit = True
        time.sleep(1.0)


def worker_main(index: int, sock: socket.socket, options: WorkerOptions, ready, parent: int) -> None:
    """One worker: build the app from the settings, serve on the inherited socket until SIGTERM."""
    import sys

    import uvicorn

    from service.app import create_app
    from service.http_limits import uvicorn_config
    from service.registry import ModelRegistry
    from service.settings import Settings

    os.setpgid(0, 0)
    logging.basicConfig(
        level=options.log_level.upper(), format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s"
    )
    settings = Settings(**options.overrides)
    app = create_app(settings, ModelRegistry.load(settings))
    config = uvicorn_config(
        WorkerApp(app, index, ready, settings.retry_after_s),
        settings,
        log_level=options.log_level,
        lifespan="on",
        timeout_graceful_shutdown=options.graceful_timeout,
        access_log=False,
    )
    server = uvicorn.Server(config)
    for sig in (signal.SIGINT, signal.SIGTERM):  # see server.main: a clean stop exits 0, not by the signal
        signal.signal(sig, lambda *_: None)
    threading.Thread(target=_watch_parent, args=(server, parent), daemon=True, name="watch-supervisor").start()
    try:
        server.run(sockets=[sock])
    except SystemExit:  # uvicorn's exit when the lifespan failed
        sys.exit(1)
    sys.exit(0 if server.started else 1)


class Supervisor:
    """Starts, watches, replaces and stops the workers (see the module docstring)."""

    def __init__(self, sock: socket.socket, options: WorkerOptions):
        self.sock, self.options, self.count = sock, options, options.workers
        self.ctx = multiprocessing.get_context("spawn")
        self.ready = self.ctx.Array("b", self.count, lock=False)
        self.procs: list = [None] * self.count
        self.stopping = False
        self.metrics_dir, self.own_metrics_dir = _metrics_dir()

    def _start(self, index: int) -> None:
        self.ready[index] = NOT_STARTED
        proc = self.ctx.Process(
            target=worker_main, name=f"sentiment-worker-{index}", args=(index, self.sock, self.options, self.ready, os.getpid())
        )
        proc.start()
        self.procs[index] = proc
        log.info("worker %d started (pid %d)", index, proc.pid)

    def _signal_all(self, sig: int) -> None:
        for proc in self.procs:
            if proc is not None and proc.is_alive():
                os.kill(proc.pid, sig)

    def _on_stop(self, *_):
        if not self.stopping:
            self.stopping = True
            log.info("stopping: draining %d worker(s)", self.count)
            self._signal_all(signal.SIGTERM)
            # The listening socket closes once the workers have closed their copies too: new connections are then
            # refused instead of waiting in a backlog that nobody accepts from any more.
            self.sock.close()

    def run(self) -> int:
        from prometheus_client import multiprocess

        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, lambda *_: self._signal_all(signal.SIGHUP))
        status = 0
        try:
            for index in range(self.count):
                self._start(index)
            while any(p.is_alive() for p in self.procs):
                wait([p.sentinel for p in self.procs if p.is_alive()], timeout=0.5)
                for index, proc in enumerate(self.procs):
                    if isinstance(proc, _Exited) or proc.is_alive():
                        continue
                    multiprocess.mark_process_dead(proc.pid, str(self.metrics_dir))  # its live gauges go
                    was_ready, self.ready[index] = self.ready[index] != NOT_STARTED, NOT_STARTED
                    if self.stopping or not was_ready:
                        if not self.stopping:
                            log.error(
                                "worker %d (pid %d) exited with %s before it was ready; stopping",
                                index,
                                proc.pid,
                                _how(proc.exitcode),
                            )
                            self._on_stop()
                        status = status or (0 if proc.exitcode == 0 and was_ready else 1)
                        self.procs[index] = _Exited(proc.exitcode)
                        continue
                    log.warning("worker %d (pid %d) exited with %s; starting a new one", index, proc.pid, _how(proc.exitcode))
                    self._start(index)
        finally:
            self.sock.close()
            if self.own_metrics_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
        log.info("all workers stopped")
        return status


class _Exited:
    """A finished worker's slot once the supervisor is stopping (never restarted)."""

    def __init__(self, exitcode: int):
        self.exitcode = exitcode

    def is_alive(self) -> bool:
        return False


def _how(exitcode: int) -> str:
    return f"signal {signal.Signals(-exitcode).name}" if exitcode < 0 else f"status {exitcode}"


def _metrics_dir() -> tuple[Path, bool]:
    """PROMETHEUS_MULTIPROC_DIR for the workers: the operator's (emptied of a previous run's files, as
    prometheus-client requires) or a fresh temporary one, removed on exit. Set before any worker starts, since
    prometheus-client picks its value storage when it is imported."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return path, False
    path = Path(tempfile.mkdtemp(prefix="sentiment-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path, True
