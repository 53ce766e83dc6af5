"""Batch-scoring figures for the README: `sentiment-score` throughput against direct batched onnxruntime on the
25,000 labelled IMDB train reviews, and (--memory) the RSS of a 1,000,000-row job sampled at ~20% and ~90%.

    python -m benchmarks.cli_bench                  # part of `make bench`; writes benchmarks/cli_results.json
    python -m benchmarks.cli_bench --limit 2000     # a quick look
    python -m benchmarks.cli_bench --memory         # `make bench-memory`

Baseline ("direct"): the reviews already in memory, tokenized by `ModelRuntime.encode` and scored by
`ModelRuntime.predict` (length-sorted calls of at most 64 texts and 4,096 padded tokens) in this process: no file, no JSON,
no start-up; its tokenizing and onnxruntime times are also reported apart. The CLI run is a fresh process reading and writing
JSONL, timed from launch to exit (interpreter start, model load and checksums included). Both use every core; on a
shared machine the two alternate over slices of the reviews, so a burst of other load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from benchmarks.procfs import rss_kib
from service.cli import resolve_model
from service.runtime import ModelRuntime

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "cli_results.json"
DATA = REPO.parent / "shared" / "data" / "aclImdb_train.tar.gz"
REVIEW = re.compile(r"aclImdb/train/(pos|neg)/(\d+)_(\d+)\.txt$")


def load_reviews(tarball: Path) -> tuple[list[str], list[str]]:
    """The labelled train reviews (pos and neg, not unsup), read straight from the archive."""
    texts, labels = [], []
    with tarfile.open(tarball) as tar:
        for member in tar:
            match = REVIEW.match(member.name)
            if match:
                texts.append(tar.extractfile(member).read().decode("utf-8"))
                labels.append("positive" if match.group(1) == "pos" else "negative")
    return texts, labels


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", *args]


def throughput(args: argparse.Namespace, model_dir: Path) -> dict:
    """Alternate slices: the direct pass over slice k, then the CLI over the same reviews as a file, and so on, so
    that the other load of a shared machine falls on both alike. Each CLI run pays its own start-up."""
    with tempfile.TemporaryDirectory(prefix="cli-bench-") as tmp:
        texts, labels = load_reviews(args.data)
        rt = ModelRuntime(model_dir)
        order = list(range(len(texts)))
        random.Random(0).shuffle(order)  # the archive lists one label first: mix so that every slice is alike
        order = order[: args.limit] if args.limit else order
        size = -(-len(order) // args.slices)
        encode_s = ort_s = cli_s = 0.0
        correct = rows_out = 0
        for k in range(args.slices):
            part = order[k * size : (k + 1) * size]
            src, out = Path(tmp) / f"slice{k}.jsonl", Path(tmp) / f"scored{k}.jsonl"
            src.write_text("".join(json.dumps({"id": i, "text": texts[i]}) + "\n" for i in part), encoding="utf-8")
            start = time.perf_counter()
            encoded = rt.encode([texts[i] for i in part])
            middle = time.perf_counter()
            rt.predict(encoded, args.batch_size)
            encode_s, ort_s = encode_s + middle - start, ort_s + time.perf_counter() - middle
            del encoded
            start = time.perf_counter()
            subprocess.run(
                cli(str(src), "-o", str(out), "--model-dir", str(model_dir), "--quiet", "--batch-size", str(args.batch_size)),
                check=True,
                cwd=REPO,
            )
            cli_s += time.perf_counter() - start
            for line in out.open(encoding="utf-8"):
                row = json.loads(line)
                rows_out += 1
                correct += row["label"] == labels[row["id"]]
            print(
                f"slice {k + 1}/{args.slices}: {len(part)} reviews; so far direct {encode_s + ort_s:.0f} s "
                f"(tokenizing {encode_s:.0f} s), sentiment-score {cli_s:.0f} s",
                file=sys.stderr,
            )
    n = len(order)
    direct, tool = n / (encode_s + ort_s), n / cli_s
    return {
        "reviews": n,
        "batch_size": args.batch_size,
        "slices": args.slices,
        "direct_rows_per_s": round(direct, 1),
        "cli_rows_per_s": round(tool, 1),
        "cli_vs_direct": round(tool / direct, 3),
        "direct_seconds": round(encode_s + ort_s, 1),
        "direct_tokenize_seconds": round(encode_s, 1),
        "direct_onnxruntime_seconds": round(ort_s, 1),
        "onnxruntime_only_rows_per_s": round(n / ort_s, 1),
        "cli_seconds": round(cli_s, 1),
        "cli_accuracy": round(correct / rows_out, 4),
        "rows_out": rows_out,
    }


def memory(args: argparse.Namespace, model_dir: Path) -> dict:
    """One job over `args.rows` short rows; RSS read from /proc when the checkpoint passes 20% and 90%."""
    words = ["great", "awful", "film", "boring", "loved", "plot", "cast", "dull", "superb", "story", "waste"]
    with tempfile.TemporaryDirectory(prefix="cli-memory-") as tmp:
        src, out = Path(tmp) / "rows.jsonl", Path(tmp) / "scored.jsonl"
        with src.open("w") as fh:
            for i in range(args.rows):
                fh.write(f'{{"id": {i}, "text": "the {words[i % 11]} {words[(i * 7) % 11]} movie number {i}"}}\n')
        checkpoint = Path(f"{out}.checkpoint.json")
        start = time.perf_counter()
        proc = subprocess.Popen(cli(str(src), "-o", str(out), "--model-dir", str(model_dir), "--quiet"), cwd=REPO)
        samples: dict[str, dict] = {}
        marks = {"20%": args.rows // 5, "90%": args.rows * 9 // 10}
        while proc.poll() is None and len(samples) < len(marks):
            try:
                done = json.loads(checkpoint.read_text())["tally"]["rows"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                done = 0
            for name, rows in marks.items():
                if name not in samples and done >= rows:
                    samples[name] = {"rows_done": done, "rss_mib": round(rss_kib(proc.pid) / 1024, 1)}
            time.sleep(0.05)
        peak = rss_kib(proc.pid, "VmHWM") if proc.poll() is None else None
        if proc.wait() != 0 or len(samples) < len(marks):
            raise RuntimeError("the memory run failed or finished before both samples")
        elapsed = time.perf_counter() - start
        written = sum(1 for _ in out.open())
    return {
        "rows": args.rows,
        "rows_out": written,
        "seconds": round(elapsed, 1),
        "rows_per_s": round(args.rows / elapsed, 1),
        "samples": samples,
        "rss_growth_mib": round(samples["90%"]["rss_mib"] - samples["20%"]["rss_mib"], 1),
        "peak_rss_mib_at_90%": round(peak / 1024, 1) if peak else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", help="artifact (default: the CLI's own lookup in exported/)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--limit", type=int, help="score only this many reviews (default: all 25,000)")
    p.add_argument("--slices", type=int, default=5, help="alternate direct and CLI runs over this many slices")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--memory", action="store_true", help="run the 1,000,000-row memory check instead")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows for --memory")
    args = p.parse_args(argv)
    try:
        model_dir = resolve_model(args.model_dir, None)
    except ValueError as exc:
        print(f"cli_bench: {exc}", file=sys.stderr)
        return 2
    if not args.memory and not args.data.is_file():
        print(f"cli_bench: {args.data} not found (the IMDB train archive)", file=sys.stderr)
        return 2
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    rt = ModelRuntime(model_dir)
    context = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "model": f"{rt.name} {rt.version}",
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    del rt
    key = "memory" if args.memory else "throughput"
    results[key] = {**context, **(memory(args, model_dir) if args.memory else throughput(args, model_dir))}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results[key], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
