"""Speed and memory of the service, all measured in one run on one machine; writes benchmarks/results.json and the
README's Benchmarks table.

    make bench                                   # or: python -m benchmarks.bench
    BENCH_MODEL_ROOT=/tmp/exp-smoke make bench   # another artifact (or folder of them) than exported/

What is measured (one onnxruntime thread and one torch thread, as the service runs by default):
1. onnxruntime vs PyTorch eager on the same weights: a RecurrentClassifier with the shipped model's config and random
   weights, exported with training.export.export_model, at batch 1 and 32. The shipped artifact(s) are timed with
   onnxruntime too (same config, so the same speed: a check that the export is the one benchmarked).
2. HTTP: a real `sentiment-serve` on loopback, an httpx async client at concurrency 1 and 32: p50/p99 and
   throughput; that throughput as a share of direct batched onnxruntime (tokenize + score in batches of 32).
3. Diagnostics overhead: a diagnostics request vs a plain one (HTTP, concurrency 1), and the runtime call alone.
4. Service RSS (resident memory of the server process) after the load, and its peak.
The reviews are synthetic: words drawn from the model's vocabulary by frequency rank, lengths log-normal around
230 tokens like IMDB reviews (some longer than max_tokens, so truncation happens as in real traffic).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

from service.artifacts import discover
from service.runtime import ModelRuntime

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results.json"
README = REPO / "README.md"
BARS = {"ort_vs_torch_batch1": 2.0, "http_c32_share_of_direct": 0.60, "diagnostics_overhead": 1.5, "rss_mb": 250}
N_TEXTS, HTTP_C1, HTTP_C32, DIAG_N = 256, 200, 1000, 100


def synthetic_reviews(tokenizer_json: Path, n: int, seed: int = 0) -> list[str]:
    vocab = json.loads(tokenizer_json.read_text())["model"]["vocab"]
    words = [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if not w.startswith("[")]
    weights = 1.0 / np.arange(1, len(words) + 1)  # Zipf: the vocabulary is ordered by frequency
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(230), 0.6, n), 10, 1200).astype(int)
    return [" ".join(rng.choice(words, size=k, p=weights / weights.sum())) for k in lengths]


def median_seconds(fns: list, items, repeats: int = 1) -> list[float]:
    """Median time of each function over the items; the functions take turns on each item, so a machine whose load
    drifts during the run (a shared one) slows them alike."""
    for item in items[:3]:
        for fn in fns:
            fn(item)  # warm-up
    times = [[] for _ in fns]
    for item in items:
        for _ in range(repeats):
            for fn, out in zip(fns, times):
                start = time.perf_counter()
                fn(item)
                out.append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items) - size + 1, size)]


# -- 1. onnxruntime vs torch ----------------------------------------------------------------------------------------
def torch_vs_ort(rt: ModelRuntime, texts: list[str]) -> dict:
    import torch

    from training.config import ModelConfig, TrainConfig
    from training.export import export_model
    from training.models import RecurrentClassifier

    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = rt.manifest
    fields = {k: v for k, v in m["model"].items() if k in ModelConfig.__dataclass_fields__}
    model = RecurrentClassifier(ModelConfig(**fields)).eval()
    train_cfg = TrainConfig(max_tokens=m["max_tokens"], truncation=m["truncation"]["strategy"],
                            head_tokens=m["truncation"]["head_tokens"], model=model.cfg)
    with tempfile.TemporaryDirectory() as tmp:
        # The shipped metrics only fill the throwaway artifact's model card; nothing reads them.
        export_model(model, (rt.directory / "tokenizer.json").read_text(), Path(tmp) / "random", name="bench-random",
                     version="0", train_cfg=train_cfg, metrics=dict(m.get("metrics", {})),
                     temperature=float(m.get("temperature", 1.0)))
        ort_rt = ModelRuntime(Path(tmp) / "random", intra_op_threads=1, inter_op_threads=1)
    temperature = float(m.get("temperature", 1.0))

    def torch_run(encoded):
        feed = ort_rt.pad(encoded)
        with torch.inference_mode():
            logits = model(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["lengths"]))
            return torch.softmax(logits / temperature, dim=-1).numpy()

    encoded = ort_rt.encode(texts)
    singles = [[e] for e in encoded[:60]]
    b32 = batches(encoded, 32)[:4]
    parity = max(float(np.abs(torch_run(b) - ort_rt.run_batch(b)).max()) for b in b32[:2])
    out = {"config": {k: fields[k] for k in ("cell", "hidden_size", "num_layers", "bidirectional", "pooling",
                                             "embedding_dim")},
           "max_abs_diff_torch_vs_ort": parity}
    for label, items in (("batch1", singles), ("batch32", b32)):
        t_torch, t_ort = median_seconds([torch_run, ort_rt.run_batch], items, repeats=1 if label == "batch1" else 2)
        out[label] = {"torch_ms": t_torch * 1e3, "ort_ms": t_ort * 1e3, "speedup": t_torch / t_ort}
    return out


def shipped_ort(runtimes: list[ModelRuntime], texts: list[str]) -> dict:
    out = {}
    for rt in runtimes:
        encoded = rt.encode(texts)
        out[rt.name] = {"batch1_ms": median_seconds([rt.run_batch], [[e] for e in encoded[:60]])[0] * 1e3,
                        "batch32_ms": median_seconds([rt.run_batch], batches(encoded, 32)[:4], repeats=2)[0] * 1e3}
    return out


def direct_batched(rt: ModelRuntime, texts: list[str]) -> float:
    """Texts per second: tokenize and score in batches of 32, arrival order (what the service does, minus HTTP)."""
    rt.run_batch(rt.encode(texts[:32]))
    start = time.perf_counter()
    for chunk in batches(texts, 32):
        rt.run_batch(rt.encode(chunk))
    return len(batches(texts, 32)) * 32 / (time.perf_counter() - start)


def diagnostics_direct(rt: ModelRuntime, texts: list[str]) -> dict:
    encoded = rt.encode(texts[:40])
    pairs = list(zip(texts[:40], encoded))
    plain, diag = median_seconds([lambda p: rt.run_batch([p[1]]), lambda p: rt.diagnose(p[0], p[1])], pairs)
    return {"plain_ms": plain * 1e3, "diagnostics_ms": diag * 1e3, "ratio": diag / plain}


# -- 2-4. HTTP --------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    value = lambda key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024  # noqa: E731
    return {"rss_mb": value("VmRSS"), "peak_rss_mb": value("VmHWM")}


async def post(client: httpx.AsyncClient, body: dict, errors: list) -> None:
    """One request; a dropped connection (a keep-alive closed under the client's feet) is retried once and counted."""
    try:
        response = await client.post("/v1/sentiment", json=body)
    except httpx.TransportError as exc:
        errors.append(repr(exc))
        response = await client.post("/v1/sentiment", json=body)
    response.raise_for_status()


async def load(base: str, texts: list[str], model: str, concurrency: int, n: int) -> dict:
    latencies, next_index, errors = [], 0, []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        async def worker():
            nonlocal next_index
            while next_index < n:
                text = texts[next_index % len(texts)]
                next_index += 1
                start = time.perf_counter()
                await post(client, {"text": text, "model": model}, errors)
                latencies.append(time.perf_counter() - start)

        for text in texts[:10]:  # warm the connection and the server's first-call paths
            await post(client, {"text": text, "model": model}, errors)
        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - start
    lat = np.array(latencies) * 1e3
    return {"requests": n, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "throughput_rps": n / wall, "retried_connection_errors": errors}


async def diagnostics_vs_plain(base: str, texts: list[str], model: str, n: int) -> dict:
    """Concurrency 1, the same texts, plain and diagnostics requests taking turns."""
    latencies, errors = {False: [], True: []}, []
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for i in range(n):
            for diagnostics in (False, True):
                start = time.perf_counter()
                await post(client, {"text": texts[i % len(texts)], "model": model, "diagnostics": diagnostics}, errors)
                latencies[diagnostics].append(time.perf_counter() - start)
    p50 = {k: float(np.median(v)) * 1e3 for k, v in latencies.items()}
    return {"requests": n, "plain_p50_ms": p50[False], "diagnostics_p50_ms": p50[True],
            "ratio": p50[True] / p50[False], "retried_connection_errors": errors}


def http_bench(model_root: Path, model: str, texts: list[str]) -> dict:
    port = free_port()
    env = {**os.environ, "SENTIMENT_MODEL_ROOT": str(model_root)}
    proc = subprocess.Popen([sys.executable, "-m", "service.server", "--port", str(port), "--log-level", "warning"],
                            env=env, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.2)
        out = {"rss_after_start": rss_mb(proc.pid)}
        out["c1"] = asyncio.run(load(base, texts, model, 1, HTTP_C1))
        out["c32"] = asyncio.run(load(base, texts, model, 32, HTTP_C32))
        out["diagnostics_vs_plain_c1"] = asyncio.run(diagnostics_vs_plain(base, texts, model, DIAG_N))
        out["rss_after_load"] = rss_mb(proc.pid)
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


# -- report -----------------------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import onnxruntime
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0],
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def summarize(r: dict) -> dict:
    primary = r["primary_model"]
    http, direct = r["http"], r["direct_batched_texts_per_s"]
    return {
        "ort_vs_torch_batch1": r["torch_vs_ort"]["batch1"]["speedup"],
        "ort_vs_torch_batch32": r["torch_vs_ort"]["batch32"]["speedup"],
        "http_c32_share_of_direct": http["c32"]["throughput_rps"] / direct,
        "diagnostics_overhead": http["diagnostics_vs_plain_c1"]["ratio"],
        "diagnostics_overhead_runtime_only": r["diagnostics_runtime"]["ratio"],
        "rss_mb": http["rss_after_load"]["rss_mb"],
        "model": primary,
    }


def readme_section(r: dict) -> str:
    s, t, h, m = r["summary"], r["torch_vs_ort"], r["http"], r["machine"]
    ok = lambda key, value, higher=True: "yes" if (value >= BARS[key] if higher else value <= BARS[key]) else "**no**"  # noqa: E731
    rows = [
        ("onnxruntime vs PyTorch eager, batch 1", f"{t['batch1']['ort_ms']:.2f} ms vs {t['batch1']['torch_ms']:.2f} ms "
         f"= **{s['ort_vs_torch_batch1']:.2f}x**", f">= {BARS['ort_vs_torch_batch1']}x",
         ok("ort_vs_torch_batch1", s["ort_vs_torch_batch1"])),
        ("onnxruntime vs PyTorch eager, batch 32", f"{t['batch32']['ort_ms']:.1f} ms vs {t['batch32']['torch_ms']:.1f} ms "
         f"= **{s['ort_vs_torch_batch32']:.2f}x**", "", ""),
        ("HTTP, concurrency 1", f"p50 {h['c1']['p50_ms']:.1f} ms, p99 {h['c1']['p99_ms']:.1f} ms, "
         f"{h['c1']['throughput_rps']:.0f} req/s", "", ""),
        ("HTTP, concurrency 32", f"p50 {h['c32']['p50_ms']:.1f} ms, p99 {h['c32']['p99_ms']:.1f} ms, "
         f"{h['c32']['throughput_rps']:.0f} req/s", "", ""),
        ("HTTP c32 throughput / direct batched onnxruntime", f"{h['c32']['throughput_rps']:.0f} / "
         f"{r['direct_batched_texts_per_s']:.0f} texts/s = **{s['http_c32_share_of_direct']:.0%}**",
         f">= {BARS['http_c32_share_of_direct']:.0%}", ok("http_c32_share_of_direct", s["http_c32_share_of_direct"])),
        ("Diagnostics vs plain request (HTTP p50, c1)", f"{h['diagnostics_vs_plain_c1']['diagnostics_p50_ms']:.1f} ms vs "
         f"{h['diagnostics_vs_plain_c1']['plain_p50_ms']:.1f} ms = **{s['diagnostics_overhead']:.2f}x** (runtime call alone: "
         f"{s['diagnostics_overhead_runtime_only']:.2f}x)", f"<= {BARS['diagnostics_overhead']}x",
         ok("diagnostics_overhead", s["diagnostics_overhead"], higher=False)),
        ("Service RSS after the load (peak)", f"**{s['rss_mb']:.0f} MB** ({h['rss_after_load']['peak_rss_mb']:.0f} MB)",
         f"<= {BARS['rss_mb']} MB", ok("rss_mb", s["rss_mb"], higher=False)),
    ]
    cfg = t["config"]
    lines = [
        "## Benchmarks", "",
        f"`make bench` (benchmarks/bench.py) measured everything below in one run on {m['cores']} cores of an "
        f"{m['cpu']} (load average {m['load_average_at_start']:.1f} at the start: the machine was shared), "
        f"onnxruntime {m['onnxruntime']}, torch {m['torch']}, one inference thread each, {m['date'][:10]}. "
        f"Model: `{s['model']}` ({cfg['cell']}, {'bi' if cfg['bidirectional'] else 'uni'}directional, hidden "
        f"{cfg['hidden_size']}, {cfg['num_layers']} layer(s), {cfg['pooling']} pooling) from `{r['model_root']}`; "
        f"synthetic reviews of {r['mean_tokens']:.0f} tokens on average. Raw figures: `benchmarks/results.json`.", "",
        "| Measure | Result | Bar | Met |", "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows], "",
        "PyTorch and onnxruntime run the same random weights (exported with `training.export.export_model`; "
        f"max |difference| {t['max_abs_diff_torch_vs_ort']:.1e}); the served artifact(s) timed with onnxruntime: "
        + ", ".join(f"`{k}` {v['batch1_ms']:.2f} ms at batch 1, {v['batch32_ms']:.1f} ms at batch 32"
                    for k, v in r["shipped_ort"].items()) + ". "
        "The HTTP client runs on the same cores as the server, so HTTP figures include its cost.",
    ]
    return "\n".join(lines)


def write_readme(section: str) -> None:
    text = README.read_text()
    start, end = "<!-- section:bench -->", "<!-- /section:bench -->"
    if start not in text or end not in text:
        print("README has no bench markers; table not written", file=sys.stderr)
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{start}\n{section}\n{end}{tail}")


def main() -> int:
    model_root = Path(os.environ.get("BENCH_MODEL_ROOT", REPO / "exported"))
    try:
        dirs = discover(model_root)
    except Exception as exc:
        print(f"bench: error: {exc} (export a model or set BENCH_MODEL_ROOT)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    runtimes = [ModelRuntime(d, intra_op_threads=1, inter_op_threads=1) for d in dirs]
    names = [rt.name for rt in runtimes]
    primary = next((rt for rt in runtimes if rt.name == os.environ.get("BENCH_MODEL", "imdb-lstm")), runtimes[0])
    texts = synthetic_reviews(primary.directory / "tokenizer.json", N_TEXTS)
    shown_root = model_root.relative_to(REPO) if model_root.is_relative_to(REPO) else model_root
    results = {"machine": machine(), "model_root": str(shown_root), "models": names, "primary_model": primary.name,
               "mean_tokens": float(np.mean([e.num_tokens for e in primary.encode(texts)]))}
    print(f"bench: {names}, primary {primary.name}, {len(texts)} texts ({results['mean_tokens']:.0f} tokens on average)")
    results["torch_vs_ort"] = torch_vs_ort(primary, texts)
    print("  torch vs ort:", json.dumps(results["torch_vs_ort"]))
    results["shipped_ort"] = shipped_ort(runtimes, texts)
    results["diagnostics_runtime"] = diagnostics_direct(primary, texts)
    # Direct batched throughput is measured just before and just after the HTTP runs and averaged: on a shared
    # machine the load drifts, and the share compares the two.
    before = direct_batched(primary, texts * 2)
    results["http"] = http_bench(model_root, primary.name, texts)
    after = direct_batched(primary, texts * 2)
    results["direct_batched_runs"] = [before, after]
    results["direct_batched_texts_per_s"] = (before + after) / 2
    results["summary"] = summarize(results)
    results["bars"] = BARS
    results["seconds"] = time.perf_counter() - started
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    write_readme(readme_section(results))
    print(json.dumps(results["summary"], indent=2))
    print(f"bench: wrote {RESULTS.relative_to(REPO)} and the README table in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
