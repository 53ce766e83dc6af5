"""Are the per-token diagnostics faithful? ERASER-style deletion tests (DeYoung et al. 2020) on validation reviews.

    python -m training.faithfulness --model-dir exported/imdb-lstm-ngram --reviews 300

For each review, each method ranks the tokens by how much they pushed towards the predicted class; then
- comprehensiveness: delete the top 10% of tokens and re-score: the drop in the predicted class's log-odds
  (higher = the method found what the verdict rests on);
- sufficiency: keep only the top 10%: the drop from the full review's log-odds (lower = those tokens alone suffice).
Methods: `contribution` (the diagnostics graph's exact decomposition), `running_delta` (change of the running
log-odds at each token), `leave_one_out` (each token's own deletion effect: the expensive reference, one model run
per token) and `random` (the floor). Everything is scored through the service's own runtime (no torch).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from service.runtime import ModelRuntime
from service.tokenization import Encoded
from training.config import TrainConfig
from training.data import grouped_split, load_labeled

METHODS = ("contribution", "running_delta", "leave_one_out", "random")


def logodds(rt: ModelRuntime, rows: list[np.ndarray], batch_tokens: int = 16_384) -> np.ndarray:
    """Positive log-odds of (non-empty) token-id sequences, in length-sorted batches of bounded padded size."""
    out = np.empty(len(rows))

    def flush(chunk: list[int]) -> None:
        enc = [Encoded(rows[i], [], len(rows[i]), False) for i in chunk]
        out[chunk] = rt.logodds(rt.session.run(["logits"], rt.pad(enc))[0])

    chunk: list[int] = []
    for i in sorted(range(len(rows)), key=lambda i: len(rows[i])):
        if chunk and (len(chunk) >= 64 or (len(chunk) + 1) * len(rows[i]) > batch_tokens):
            flush(chunk)
            chunk = []
        chunk.append(i)
    if chunk:
        flush(chunk)
    return out


def method_scores(rt: ModelRuntime, ids: np.ndarray, rng: np.random.Generator) -> tuple[dict, dict]:
    """Per-token scores towards "positive" for every method, and the seconds each took."""
    seconds, scores = {}, {}
    t0 = time.perf_counter()
    outputs = dict(zip(rt.diagnostic_outputs, rt.diagnostics_session.run(None, rt.pad([Encoded(ids, [], len(ids), False)]))))
    seconds["contribution"] = seconds["running_delta"] = time.perf_counter() - t0
    if "contribution" in outputs:
        scores["contribution"] = outputs["contribution"][0, : len(ids)].astype(np.float64)
        running = outputs["running_logodds"][0, : len(ids)].astype(np.float64)
        scores["running_delta"] = np.diff(np.concatenate([[0.0], running]))
    t0 = time.perf_counter()
    full = rt.logodds(outputs["logits"])[0]
    scores["leave_one_out"] = full - logodds(rt, [np.delete(ids, i) for i in range(len(ids))])
    seconds["leave_one_out"] = time.perf_counter() - t0
    scores["random"] = rng.standard_normal(len(ids))
    seconds["random"] = 0.0
    return scores, seconds


def evaluate(rt: ModelRuntime, texts: list[str], share: float = 0.1, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    sums: dict[str, dict[str, float]] = {m: {"comprehensiveness": 0.0, "sufficiency": 0.0, "seconds": 0.0} for m in METHODS}
    counted = dict.fromkeys(METHODS, 0)
    for enc in rt.encode(texts):
        ids = enc.ids
        if len(ids) < 10:
            continue
        full = logodds(rt, [ids])[0]
        sign = 1.0 if full >= 0 else -1.0
        k = max(1, math.ceil(share * len(ids)))
        scores, seconds = method_scores(rt, ids, rng)
        for method, values in scores.items():
            top = np.argsort(-sign * values, kind="stable")[:k]
            kept = np.ones(len(ids), bool)
            kept[top] = False
            without, only = logodds(rt, [ids[kept], ids[~kept]])
            sums[method]["comprehensiveness"] += sign * (full - without)
            sums[method]["sufficiency"] += sign * (full - only)
            sums[method]["seconds"] += seconds[method]
            counted[method] += 1
    report = {
        m: {k: round(v / counted[m], 4) for k, v in sums[m].items()} | {"reviews": counted[m]} for m in METHODS if counted[m]
    }
    if "contribution" in report and "leave_one_out" in report:
        report["contribution_vs_leave_one_out"] = round(
            report["contribution"]["comprehensiveness"] / report["leave_one_out"]["comprehensiveness"], 3
        )
    return report


def validation_texts(data: str, n: int, seed: int = 0) -> list[str]:
    """The first n reviews (in a seeded shuffle) of the grouped validation split that training used."""
    cfg = TrainConfig()
    _, val = grouped_split(load_labeled(data), cfg.val_fraction, cfg.seed)
    order = np.random.default_rng(seed).permutation(len(val))[:n]
    return [val[i].text for i in order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.faithfulness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--data", default=TrainConfig().data)
    parser.add_argument("--reviews", type=int, default=300)
    parser.add_argument("--out", help="write the report as JSON here")
    args = parser.parse_args(argv)
    rt = ModelRuntime(args.model_dir, intra_op_threads=1)
    report = {"model": rt.name, "version": rt.version, "share": 0.1, **evaluate(rt, validation_texts(args.data, args.reviews))}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
