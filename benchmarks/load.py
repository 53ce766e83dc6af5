"""Load test of the HTTP service: N concurrent clients for a fixed time against a `sentiment-serve` it starts itself
on a free loopback port; prints (and with --out writes) a JSON report.

    make load                                                       # 64 clients x 30 s, the shipped model
    python -m benchmarks.load --clients 64 --duration 30 --model-dir /tmp/exp-smoke --out load.json
    python -m benchmarks.load --clients 16 --duration 5 --warmup 1   # the short run CI makes

Bounded by construction: loopback only (127.0.0.1), every client stops sending at the deadline, each request has a
timeout, and the server is stopped with SIGTERM at the end (its exit code is reported). The clients share the
machine with the server, so on a small machine the figures include their CPU too.

Traffic: short reviews (3-30 words) and long ones (300-1,200 words, past the model's max_tokens, so truncated),
plus a share of diagnostics requests (occlusion attribution on every other one) and of batch requests (8 short
items). Words are drawn from the model's own vocabulary by frequency rank (Zipf), with a few made-up ones.
A 503 is answered by waiting its Retry-After, as a well-behaved client would.

Reported: requests and throughput after warm-up, latency p50/p90/p99/max (all and by kind), counts by status,
transport errors, and the server's RSS sampled every 0.5 s - after start, after a priming round of every request
kind (see `prime`), after warm-up vs at the end, peak, and the slope over the measured phase. Exit status 1 when a
response was neither 200 nor the documented 503 (overloaded), a connection failed, the server did not exit 0, or
RSS grew more than --max-rss-growth-mb after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np

from benchmarks.procfs import rss_kib

REPO = Path(__file__).resolve().parents[1]
KINDS = ("short", "long", "diagnostics", "batch")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.load", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clients", type=int, default=64, help="concurrent clients (connections)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of traffic, warm-up included")
    p.add_argument("--warmup", type=float, default=5.0, help="first seconds left out of latency and RSS growth")
    p.add_argument("--model-dir", default=str(REPO / "exported"), help="artifact directory or folder of them")
    p.add_argument("--model", help="model name to score with (default: the server's default)")
    p.add_argument("--long-share", type=float, default=0.3, help="share of single requests with a long review")
    p.add_argument("--diagnostics-share", type=float, default=0.05, help="share of diagnostics requests")
    p.add_argument("--batch-share", type=float, default=0.05, help="share of batch requests (8 items)")
    p.add_argument("--queue-size", type=int, help="SENTIMENT_QUEUE_SIZE for the server (default: its own)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    p.add_argument("--max-rss-growth-mb", type=float, default=50.0, help="allowed RSS growth after warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the JSON report here")
    args = p.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or not 0 <= args.warmup < args.duration:
        p.error("need --clients >= 1, --duration > 0 and 0 <= --warmup < --duration")
    return args


# -- traffic -----------------------------------------------------------------------------------------------------
def vocabulary(model_dir: Path, model: str | None) -> list[str]:
    """Words of the served model's tokenizer, most frequent first."""
    candidates = (
        [model_dir] if (model_dir / "manifest.json").is_file() else sorted(p.parent for p in model_dir.glob("*/manifest.json"))
    )
    if not candidates:
        raise SystemExit(f"load: no model artifacts under {model_dir} (pass --model-dir)")
    chosen = next(
        (c for c in candidates if model in (c.name, json.loads((c / "manifest.json").read_text())["name"])), candidates[0]
    )
    vocab = json.loads((chosen / "tokenizer.json").read_text())["model"]["vocab"]
    return [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if not w.startswith("[")]


class Traffic:
    def __init__(self, words: list[str], args: argparse.Namespace):
        weights = 1.0 / np.arange(1, len(words) + 1)
        self.words, self.p = np.array(words + ["qzxv", "blorft"]), np.append(weights, [weights[-1]] * 2)
        self.p /= self.p.sum()
        self.args = args
        self.rng = np.random.default_rng(args.seed)

    def text(self, lo: int, hi: int) -> str:
        return " ".join(self.rng.choice(self.words, size=int(self.rng.integers(lo, hi + 1)), p=self.p))

    def pools(self, n: int = 200) -> dict[str, list[str]]:
        """Pre-made texts, so the clients spend their CPU on HTTP, not on making words up."""
        return {"short": [self.text(3, 30) for _ in range(n)], "long": [self.text(300, 1200) for _ in range(n // 4)]}


def next_request(rng: random.Random, pools: dict, args: argparse.Namespace) -> tuple[str, str, dict]:
    model = {"model": args.model} if args.model else {}
    roll = rng.random()
    if roll < args.diagnostics_share:
        text = rng.choice(pools["short"] + pools["long"][:10])
        return "diagnostics", "/v1/sentiment", {"text": text, "diagnostics": True, "attribution": rng.random() < 0.5, **model}
    if roll < args.diagnostics_share + args.batch_share:
        return (
            "batch",
            "/v1/sentiment/batch",
            {"items": [{"id": str(i), "text": rng.choice(pools["short"])} for i in range(8)], **model},
        )
    kind = "long" if rng.random() < args.long_share else "short"
    return kind, "/v1/sentiment", {"text": rng.choice(pools[kind]), **model}


# -- server ------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        return rss_kib(pid) / 1024
    except (OSError, RuntimeError):  # the server has exited
        return None


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, **({"SENTIMENT_QUEUE_SIZE": str(args.queue_size)} if args.queue_size else {})}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model-dir",
            args.model_dir,
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"load: the server did not become ready (exit status {proc.poll()})")
        time.sleep(0.2)


# -- the run -----------------------------------------------------------------------------------------------------
def percentiles(seconds: list[float]) -> dict:
    if not seconds:
        return {"n": 0}
    ms = np.array(seconds) * 1e3
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
    }


async def prime(url: str, pools: dict, args: argparse.Namespace) -> None:
    """Every kind of request once or a few times at once, the most expensive included (attribution on the longest
    reviews), before the clock starts: onnxruntime's memory arenas grow to their working size on first use, and that
    one-time growth is not what the RSS comparison is after."""
    model = {"model": args.model} if args.model else {}
    longest = sorted(pools["long"], key=len)[-4:]
    bodies = (
        [("/v1/sentiment", {"text": t, "attribution": True, **model}) for t in longest]
        + [("/v1/sentiment", {"text": t, **model}) for t in longest + pools["short"][:16]]
        + [("/v1/sentiment/batch", {"items": [{"text": t} for t in pools["short"][:8]], **model})] * 4
    )
    async with httpx.AsyncClient(base_url=url, timeout=max(args.timeout, 60)) as c:
        for response in await asyncio.gather(*[c.post(path, json=body) for path, body in bodies]):
            response.raise_for_status()


async def drive(url: str, pid: int, args: argparse.Namespace, pools: dict) -> dict:
    rss_start = rss_mb(pid) or float("nan")
    await prime(url, pools, args)
    start = time.monotonic()
    warm_end, end = start + args.warmup, start + args.duration
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: Counter = Counter()
    unexpected: list[str] = []
    transport_errors: list[str] = []
    rss: list[tuple[float, float]] = []

    async def client(i: int, c: httpx.AsyncClient) -> None:
        rng = random.Random(args.seed * 1000 + i)
        while time.monotonic() < end:
            kind, path, body = next_request(rng, pools, args)
            sent = time.monotonic()
            try:
                response = await c.post(path, json=body)
            except httpx.TransportError as exc:
                transport_errors.append(f"{time.monotonic() - start:.1f} s {path}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.1)
                continue
            statuses[response.status_code] += 1
            if response.status_code == 200 and sent >= warm_end:
                latencies[kind].append(time.monotonic() - sent)
            elif response.status_code == 503:
                await asyncio.sleep(float(response.headers.get("retry-after", 1)) * rng.uniform(0.5, 1.0))
            elif response.status_code != 200 and len(unexpected) < 10:
                unexpected.append(f"{response.status_code} {path}: {response.text[:200]}")

    async def sample_rss() -> None:
        while time.monotonic() < end:
            value = rss_mb(pid)
            if value is not None:
                rss.append((time.monotonic() - start, value))
            await asyncio.sleep(0.5)

    # Idle connections are dropped well before the server's keep-alive timeout (uvicorn: 5 s), so a request never
    # goes out on a connection the server is closing at that moment (a client-side race, not a server error).
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=args.timeout) as c:
        await asyncio.gather(sample_rss(), *[client(i, c) for i in range(args.clients)])
    finished = time.monotonic()
    rss.append((finished - start, rss_mb(pid) or float("nan")))

    measured = [t for kind in KINDS for t in latencies[kind]]
    after = [(t, v) for t, v in rss if t >= args.warmup]
    slope = float(np.polyfit(*zip(*after), 1)[0] * 60) if len(after) >= 3 else None
    return {
        "requests": sum(statuses.values()),
        "measured_requests": len(measured),
        "throughput_rps": round(len(measured) / max(args.duration - args.warmup, 1e-9), 1),
        "latency": {"all": percentiles(measured), **{kind: percentiles(latencies[kind]) for kind in KINDS}},
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "unexpected_examples": unexpected,
        "transport_errors": len(transport_errors),
        "transport_error_examples": transport_errors[:5],
        "rss_mb": {
            "after_start": round(rss_start, 1),
            "after_priming": round(rss[0][1], 1),
            "after_warmup": round(after[0][1], 1) if after else None,
            "end": round(rss[-1][1], 1),
            "peak": round(max(v for _, v in rss), 1),
            "growth_after_warmup": round(rss[-1][1] - after[0][1], 1) if after else None,
            "slope_mb_per_min_after_warmup": round(slope, 2) if slope is not None else None,
            "samples": [[round(t, 1), round(v, 1)] for t, v in rss],
        },
        "wall_s": round(finished - start, 2),
    }


def run(args: argparse.Namespace) -> dict:
    pools = Traffic(vocabulary(Path(args.model_dir), args.model), args).pools()
    load_start = os.getloadavg()
    proc, url = start_server(args)
    try:
        report = asyncio.run(drive(url, proc.pid, args, pools))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed after 30 s"
    config = {k: v for k, v in vars(args).items() if k != "out"}
    report = {
        "config": config,
        "machine": {"cores": os.cpu_count(), "load_average_start": load_start, "load_average_end": os.getloadavg()},
        **report,
        "server_exit_code": code,
    }
    problems = []
    bad = {s: n for s, n in report["status_counts"].items() if s not in ("200", "503")}
    if bad:
        problems.append(f"unexpected statuses {bad}")
    if report["transport_errors"]:
        problems.append(f"{report['transport_errors']} transport errors")
    if code != 0:
        problems.append(f"server exit status {code}")
    growth = report["rss_mb"]["growth_after_warmup"]
    if growth is not None and growth > args.max_rss_growth_mb:
        problems.append(f"RSS grew {growth} MB after warm-up (limit {args.max_rss_growth_mb})")
    if not report["measured_requests"]:
        problems.append("no request completed after warm-up")
    report["ok"], report["problems"] = not problems, problems
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
