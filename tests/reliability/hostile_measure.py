"""Measures what hostile clients cost a real `sentiment-serve` (the figures in RELIABILITY.md, "Hostile clients").
Not a test: a script, run by hand, because its attacks take minutes and gigabytes when the limits are missing.

    .venv/bin/python tests/reliability/hostile_measure.py [--repo DIR] [--only NAME ...]

`--repo` runs the server from another checkout (e.g. `git archive <commit> | tar -x -C /tmp/before`) with this
checkout's venv and models, for before/after figures. Each attack gets a fresh server on a loopback port; RSS is the
server's VmRSS from /proc, sampled every 0.1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
KEY = "measure-key-0123456789"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server:
    def __init__(self, repo: Path, env: dict):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.server",
                "--port",
                str(self.port),
                "--model-dir",
                str(REPO / "exported"),
                "--log-level",
                "warning",
            ],
            cwd=repo,
            env={**os.environ, "PYTHONPATH": str(repo), **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        self.peak = self.idle = rss_mb(self.proc.pid)
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.proc.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.1)

    def rss(self) -> float:
        return rss_mb(self.proc.pid)

    def close(self):
        self._stop.set()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    return sock


def still_open(sock: socket.socket) -> bool:
    """False once the server closed it (an answer such as 408 first is read and dropped)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def header_flood(srv: Server) -> dict:
    """5 connections, endless 1 kB `X-Filler:` header lines, up to 200 MB each."""
    line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    refused, sent = [], []

    def one():
        total = 0
        with connect(srv.port) as sock:
            try:
                sock.sendall(b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\n")
                while total < 200_000_000:
                    sock.sendall(line * 64)
                    total += len(line) * 64
            except OSError:
                refused.append(True)
            sent.append(total)

    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(2)
    return {"sent_mb": round(sum(sent) / 1e6, 1), "connections_cut_off": len(refused), "rss_after_close_mb": srv.rss()}


def slow_uploads(srv: Server, n: int = 250, keyed: bool = False, chunked: bool = False, wait_s: float = 40) -> dict:
    """`n` connections that send most of a 3,999,999-byte body (or chunked 3.9 MB), then stall."""
    socks = []
    for _ in range(n):
        sock = connect(srv.port)
        framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: 3999999\r\n"
        try:
            sock.sendall(b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + framing + b"\r\n")
            for _ in range(39):
                piece = b"a" * 100_000
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        except OSError:
            pass
        socks.append(sock)
    held_rss = srv.rss()
    start = time.monotonic()
    while time.monotonic() - start < wait_s and any(still_open(s) for s in socks):
        time.sleep(1)
    open_after = sum(still_open(s) for s in socks)
    for s in socks:
        s.close()
    return {
        "rss_while_held_mb": held_rss,
        f"open_after_{wait_s:.0f}s": open_after,
        "all_closed_after_s": round(time.monotonic() - start, 1) if not open_after else None,
    }


def idle_sockets(srv: Server, n: int = 2000, wait_s: float = 15) -> dict:
    """`n` sockets: half idle (no byte), half with an unfinished request head."""
    socks = []
    for i in range(n):
        sock = connect(srv.port)
        if i % 2:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        socks.append(sock)
    held_rss = srv.rss()
    start = time.monotonic()
    while time.monotonic() - start < wait_s and any(still_open(s) for s in socks):
        time.sleep(1)
    open_after = sum(still_open(s) for s in socks)
    for s in socks:
        s.close()
    return {"rss_while_held_mb": held_rss, f"open_after_{wait_s:.0f}s": open_after}


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def probe_healthz_during(srv: Server, request) -> dict:
    """/healthz latencies from a second connection while `request()` runs in a thread."""
    answer = {}

    def run():
        start = time.perf_counter()
        answer["status"] = request()
        answer["took_s"] = round(time.perf_counter() - start, 2)

    thread = threading.Thread(target=run)
    thread.start()
    lat = []
    with httpx.Client(base_url=srv.url, timeout=300) as c:
        c.get("/healthz")
        while thread.is_alive():
            start = time.perf_counter()
            c.get("/healthz")
            lat.append(time.perf_counter() - start)
    thread.join()
    lat.sort()
    return {
        **answer,
        "probes": len(lat),
        "healthz_p50_ms": round(lat[len(lat) // 2] * 1e3, 1) if lat else None,
        "healthz_max_ms": round(lat[-1] * 1e3, 1) if lat else None,
    }


def hostile_batch(srv: Server) -> dict:
    """One batch of 64 x 20,000-character texts that are slow to tokenize ("&#39" repeated)."""
    body = {"items": [{"text": "&#39" * 5_000}] * 64}
    return probe_healthz_during(srv, lambda: httpx.post(f"{srv.url}/v1/sentiment/batch", json=body, timeout=600).status_code)


def batch_250k(srv: Server) -> dict:
    """A batch of 250,000 one-letter items (3.25 MB): how long until its 413."""
    body = b'{"items":[' + b",".join([b'{"text":"a"}'] * 250_000) + b"]}"
    return probe_healthz_during(
        srv,
        lambda: (
            httpx.post(
                f"{srv.url}/v1/sentiment/batch", content=body, timeout=600, headers={"content-type": "application/json"}
            ).status_code
        ),
    )


def attribution_flood(srv: Server, n: int = 60, settle_s: float = 30) -> dict:
    """`n` attribution requests on 20,000-character reviews, each socket closed as soon as it is sent; the server's
    CPU seconds over the next `settle_s`, and plain-request latency meanwhile."""
    words = "a wonderful film with a terrible ending and some brilliant acting but dull music ".split()
    text = " ".join(words[i % len(words)] for i in range(3_400))[:20_000]
    data = json.dumps({"text": text, "attribution": True}).encode()
    before = cpu_s(srv.proc.pid)
    for _ in range(n):
        with connect(srv.port) as sock:
            sock.sendall(
                b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
            )
    lat, start = [], time.monotonic()
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        while time.monotonic() - start < settle_s:  # 5 plain requests a second: their own CPU is ~1 s in all
            t = time.perf_counter()
            c.post("/v1/sentiment", json={"text": "a fine film"})
            lat.append(time.perf_counter() - t)
            time.sleep(max(0.0, 0.2 - (time.perf_counter() - t)))
    lat.sort()
    return {
        "server_cpu_s": round(cpu_s(srv.proc.pid) - before, 1),
        "plain_requests": len(lat),
        "plain_p50_ms": round(lat[len(lat) // 2] * 1e3, 1),
        "plain_max_ms": round(lat[-1] * 1e3, 1),
    }


ATTACKS = {
    "hostile_batch": ({}, hostile_batch),
    "batch_250k": ({}, batch_250k),
    "attribution_flood": ({}, attribution_flood),
    "header_flood": ({}, header_flood),
    "header_flood_keyed": ({"SENTIMENT_API_KEYS": KEY}, header_flood),
    "slow_uploads": ({}, slow_uploads),
    "slow_uploads_keyed_chunked": ({"SENTIMENT_API_KEYS": KEY}, lambda s: slow_uploads(s, 100, keyed=True, chunked=True)),
    "idle_sockets": ({}, idle_sockets),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--only", nargs="*", default=list(ATTACKS))
    args = parser.parse_args()
    for name in args.only:
        env, attack = ATTACKS[name]
        srv = Server(args.repo, env)
        try:
            result = {"idle_rss_mb": srv.idle, **attack(srv)}
            result["peak_rss_mb"] = srv.peak
            result["peak_over_idle_mb"] = srv.peak - srv.idle
            result["healthz_after"] = httpx.get(f"{srv.url}/healthz", timeout=30).status_code
        finally:
            srv.close()
        print(
            json.dumps({"attack": name, **{k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}}), flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
