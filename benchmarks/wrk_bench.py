"""HTTP throughput and latency measured with wrk (a C load generator, `make bench-tools` installs it), against
direct batched scoring of the same texts; part of `make bench`, which stores the figures in results.json.

    python -m benchmarks.wrk_bench               # prints the JSON report; BENCH_SECONDS=3 for a quick look

A Python client shares the 2 cores with the server and tops out before it does, so it measures itself; wrk with one
thread costs a few percent of a core. Loads: IMDB reviews (the train archive when present, else synthetic reviews)
and short snippets (their first ~18 words), each at concurrency 1, 32 and 128, every request a different text
(benchmarks/wrk_post.lua). The request bodies are written to a temporary file, never into the repository.

"Direct" is the same texts through `ModelRuntime.encode` + `predict` (length-sorted calls of at most 64 texts and
4,096 padded tokens) in one process, with the threads the server is given (`SENTIMENT_INTRA_OP_THREADS`, default
1) and with one per core; the ratio uses the better of the two, so it is the engine's best on this machine, not a
strawman.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

from service.runtime import ModelRuntime

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "aclImdb_train.tar.gz"
LUA = REPO / "benchmarks" / "wrk_post.lua"
REVIEW = re.compile(r"aclImdb/train/(pos|neg)/\d+_\d+\.txt$")
CONCURRENCY = (1, 32, 128)
SNIPPET_WORDS = 18


class WrkMissing(RuntimeError):
    """wrk is not installed."""


def imdb_reviews(tarball: Path, n: int, seed: int = 0) -> list[str]:
    """n labelled train reviews, a seeded sample over the whole archive (it lists one label, then the other)."""
    texts = []
    with tarfile.open(tarball) as tar:
        for member in tar:
            if REVIEW.match(member.name):
                texts.append(tar.extractfile(member).read().decode("utf-8"))
    random.Random(seed).shuffle(texts)
    return texts[:n]


def snippet(text: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", text).split()[:SNIPPET_WORDS])


def bench_texts(model_dir: Path, n: int) -> tuple[list[str], list[str], str]:
    """(long reviews, short snippets, where they came from)."""
    if DATA.is_file():
        long, source = imdb_reviews(DATA, n), f"IMDB train reviews ({DATA.name}, seeded sample of {n})"
    else:
        from benchmarks.bench import synthetic_reviews

        long, source = synthetic_reviews(model_dir / "tokenizer.json", n), f"synthetic reviews ({n}; no {DATA.name})"
    return long, [snippet(t) for t in long], source


# -- direct batched scoring ------------------------------------------------------------------------------------------
def direct_rate(model_dir: Path, texts: list[str], threads: int, batch_size: int = 64, min_seconds: float = 1.0) -> dict:
    """Texts/s of tokenize + score in length-sorted batches, in this process, over as many passes as fill
    min_seconds (short snippets go fast); tokenizing and onnxruntime rates apart."""
    rt = ModelRuntime(model_dir, intra_op_threads=threads, inter_op_threads=1)
    rt.predict(rt.encode(texts[:batch_size]), batch_size)
    encode_s = ort_s = 0.0
    passes = 0
    while passes == 0 or encode_s + ort_s < min_seconds:
        start = time.perf_counter()
        encoded = rt.encode(texts)
        middle = time.perf_counter()
        rt.predict(encoded, batch_size)
        encode_s, ort_s, passes = encode_s + middle - start, ort_s + time.perf_counter() - middle, passes + 1
    n = len(texts) * passes
    return {
        "threads": threads,
        "texts_per_s": n / (encode_s + ort_s),
        "tokenize_per_s": n / encode_s,
        "onnxruntime_per_s": n / ort_s,
        "passes": passes,
        "mean_tokens": sum(e.num_tokens for e in encoded) / len(encoded),
    }


def direct_best(model_dir: Path, texts: list[str]) -> dict:
    server_threads = int(os.environ.get("SENTIMENT_INTRA_OP_THREADS", 1)) or (os.cpu_count() or 1)
    runs = [direct_rate(model_dir, texts, t) for t in sorted({server_threads, os.cpu_count() or 1})]
    best = max(runs, key=lambda r: r["texts_per_s"])
    return {"runs": runs, "texts_per_s": best["texts_per_s"], "threads": best["threads"], "mean_tokens": best["mean_tokens"]}


# -- the server and wrk ----------------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """pid and every process below it (the children of all its threads, recursively)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in children.read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                pass
    return out


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all below it (several workers, when the server runs them)."""
    return worker_memory_mb(pid)["total_rss"]


def worker_memory_mb(pid: int) -> dict:
    """Per-process memory of a server: the largest worker's RSS and PSS (PSS shares each library page among the
    processes that map it, so it is what one more worker costs), the supervisor's RSS and the total RSS."""
    rows = []
    for p in descendants(pid):
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        values = {k: int(v) / 1024 for k, v in re.findall(r"^(Rss|Pss):\s+(\d+) kB", rollup, re.M)}
        rows.append((p, b"spawn_main" in cmdline, values.get("Rss", 0.0), values.get("Pss", 0.0)))
    workers = [r for r in rows if r[1]] or [r for r in rows if r[0] == pid]
    return {
        "worker_rss_max": round(max(r[2] for r in workers), 1),
        "worker_pss_max": round(max(r[3] for r in workers), 1),
        "workers": len(workers),
        "supervisor_rss": round(next((r[2] for r in rows if r[0] == pid), 0.0), 1),
        "total_rss": round(sum(r[2] for r in rows), 1),
    }


class Server:
    """A `sentiment-serve` on loopback for the duration of a `with` block; BENCH_SERVER_ARGS adds flags."""

    def __init__(self, model_root: Path, extra_args: list[str] | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.args = [
            sys.executable,
            "-m",
            "service.server",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *(extra_args if extra_args is not None else os.environ.get("BENCH_SERVER_ARGS", "").split()),
        ]
        self.env = {**os.environ, "SENTIMENT_MODEL_ROOT": str(model_root)}

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=REPO)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.base}/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("the server did not become ready")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def wrk(url: str, bodies: Path, connections: int, seconds: float) -> dict:
    exe = shutil.which("wrk")
    if exe is None:
        raise WrkMissing("wrk is not installed: run `make bench-tools` (apt-get install wrk)")
    cmd = [
        exe,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
        "--",
        str(bodies),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    return {
        "connections": connections,
        "requests": raw["requests"],
        "seconds": raw["duration_us"] / 1e6,
        "throughput_rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1e3,
        "p90_ms": raw["p90_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "max_ms": raw["max_us"] / 1e3,
        "errors": raw["errors"],
        "error_count": sum(raw["errors"].values()),
    }


def http_loads(server: Server, model: str, loads: dict[str, list[str]], seconds: float) -> dict:
    """Every load at every concurrency against one running server; a short warm-up run before each load."""
    url = f"{server.base}/v1/sentiment"
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="wrk-bodies-") as tmp:
        for name, texts in loads.items():
            bodies = Path(tmp) / f"{name}.jsonl"
            bodies.write_text("".join(json.dumps({"text": t, "model": model}) + "\n" for t in texts))
            wrk(url, bodies, 32, 1)  # warm-up: first-call paths, connection set-up, allocator
            out[name] = {f"c{c}": wrk(url, bodies, c, seconds) for c in CONCURRENCY}
            print(
                f"  wrk {name}: "
                + ", ".join(
                    f"c{c} {r['throughput_rps']:.0f} req/s p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms"
                    for c, r in zip(CONCURRENCY, out[name].values())
                ),
                file=sys.stderr,
            )
    return out


def run(model_root: Path, model_dir: Path, model: str, n_texts: int, seconds: float) -> dict:
    long, short, source = bench_texts(model_dir, n_texts)
    report: dict = {
        "texts_source": source,
        "texts": len(long),
        "seconds_per_run": seconds,
        "client": "wrk -t1 (one client thread on the same machine)",
    }
    # Direct before and after the HTTP runs, averaged: on a shared machine the load drifts between them.
    before = {"long": direct_best(model_dir, long), "short": direct_best(model_dir, short)}
    with Server(model_root) as server:
        report["server_args"] = server.args[2:]
        report["rss_mb_after_start"] = tree_rss_mb(server.proc.pid)
        report["http"] = http_loads(server, model, {"long": long, "short": short}, seconds)
        report["rss_mb_after_load"] = tree_rss_mb(server.proc.pid)
    after = {"long": direct_best(model_dir, long), "short": direct_best(model_dir, short)}
    report["direct"] = {
        k: {"before": before[k], "after": after[k], "texts_per_s": (before[k]["texts_per_s"] + after[k]["texts_per_s"]) / 2}
        for k in before
    }
    report["ratios"] = {
        f"{k}_c{c}": report["http"][k][f"c{c}"]["throughput_rps"] / report["direct"][k]["texts_per_s"]
        for k in report["http"]
        for c in CONCURRENCY
    }
    return report


def main() -> int:
    from service.artifacts import discover, load_manifest

    root = Path(os.environ.get("BENCH_MODEL_ROOT", REPO / "exported"))
    dirs = discover(root)
    name = os.environ.get("BENCH_MODEL", "imdb-lstm")
    model_dir = next((d for d in dirs if load_manifest(d, verify=False)["name"] == name), dirs[0])
    try:
        report = run(
            root,
            model_dir,
            load_manifest(model_dir, verify=False)["name"],
            int(os.environ.get("BENCH_TEXTS", 1000)),
            float(os.environ.get("BENCH_SECONDS", 8)),
        )
    except WrkMissing as exc:
        print(f"wrk_bench: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
