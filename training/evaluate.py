"""Evaluate an exported artifact and write the evaluation into its MODEL_CARD.md (and the manifest's checksums).

    python -m training.evaluate --model-dir exported/imdb-lstm --run runs/lstm

Sections: the methods compared (parts of this model alone, the TF-IDF baseline on the same split, earlier shipped
models from their manifests), the probe suite's pass rates (tests/quality/probes.jsonl), the diagnostics'
faithfulness (training/faithfulness.py) and scoring speed/memory on whole reviews. Slow steps are cached as JSON in
the run folder, so re-running only re-renders.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from service.artifacts import file_entry
from service.runtime import ModelRuntime
from training import faithfulness, model_card
from training.baselines import tfidf_baseline
from training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def _cached(path: Path, compute):
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    path.write_text(json.dumps(value, indent=2) + "\n")
    return value


def probes(rt: ModelRuntime) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.quality.probes import run_probes

    report = run_probes(rt)
    return {"overall": report["overall"], "categories": report["categories"], "failures": report["failures"][:20]}


def long_review_memory(model_dir: Path, text: str) -> dict:
    """Peak memory of scoring one long text, plain and with diagnostics, above the loaded process (Linux only),
    measured in a fresh process by benchmarks/long_review_memory.py."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.long_review_memory", str(model_dir), f.name],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
    if done.returncode != 0:
        return {"memory_error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout)


def speed(rt: ModelRuntime, texts: list[str]) -> dict:
    """Batched whole-review throughput, and one 20,000-character review's latency (plain and diagnostics)."""
    enc = rt.encode(texts)
    t0 = time.perf_counter()
    rt.predict(enc)
    batched = len(texts) / (time.perf_counter() - t0)
    long_text = " ".join(texts)[:20_000]
    long_enc = rt.encode([long_text])
    timings = {}
    for name, fn in (("plain_ms", lambda: rt.predict(long_enc)), ("diagnostics_ms", lambda: rt.diagnose(long_text, long_enc[0]))):
        fn()
        start = time.perf_counter()
        for _ in range(3):
            fn()
        timings[name] = round((time.perf_counter() - start) / 3 * 1000, 1)
    return {
        "reviews_per_s": round(batched, 1),
        "reviews": len(texts),
        "mean_tokens": round(sum(e.num_tokens for e in enc) / len(enc), 1),
        "long_review_tokens": long_enc[0].num_tokens,
        **timings,
        **long_review_memory(rt.directory, long_text),
    }


def render(metrics: dict, baseline: dict, probe: dict, faith: dict, spd: dict, others: list[dict]) -> str:
    rows = [("this model (network + n-gram branch)", metrics["val_accuracy"])]
    if "val_accuracy_rnn" in metrics:
        rows += [
            ("its recurrent network alone", metrics["val_accuracy_rnn"]),
            ("its n-gram branch alone (NBSVM)", metrics["val_accuracy_ngram"]),
        ]
    rows.append((baseline["method"], baseline["val_accuracy"]))
    rows += [(f"{o['name']} {o['version']} (earlier shipped: {o['arch']})", o["val_accuracy"]) for o in others]
    out = ["## Methods compared (grouped validation split, same reviews)", "", "| method | accuracy |", "|---|---|"]
    out += [f"| {name} | {acc:.4f} |" for name, acc in rows]
    out += [
        "",
        "## Probe suite (tests/quality, CheckList-style minimum functionality)",
        "",
        f"Overall **{probe['overall']['pass_rate']:.1%}** ({probe['overall']['passed']}/{probe['overall']['total']}).",
        "",
        "| category | pass rate | n |",
        "|---|---|---|",
    ]
    out += [f"| {name} | {c['pass_rate']:.1%} | {c['total']} |" for name, c in probe["categories"].items()]
    out += [
        "",
        "Command: `python -m tests.quality.probes --model-dir exported/<name>`.",
        "",
        "## Diagnostics faithfulness (ERASER, top 10% of tokens, log-odds of the predicted class)",
        "",
        f"{faith['contribution']['reviews'] if 'contribution' in faith else '?'} validation reviews. Higher "
        "comprehensiveness and lower sufficiency are better; seconds are per review.",
        "",
        "| method | comprehensiveness | sufficiency | seconds |",
        "|---|---|---|---|",
    ]
    out += [
        f"| {m} | {faith[m]['comprehensiveness']:.3f} | {faith[m]['sufficiency']:.3f} | {faith[m]['seconds']:.4f} |"
        for m in faithfulness.METHODS
        if m in faith
    ]
    if "contribution_vs_leave_one_out" in faith:
        out += [
            "",
            f"Contributions reach **{faith['contribution_vs_leave_one_out']:.2f}x** leave-one-out's "
            "comprehensiveness, from the one diagnostics run instead of one run per token.",
        ]
    out += [
        "",
        "Command: `python -m training.faithfulness --model-dir exported/<name> --reviews 300`.",
        "",
        "## Speed and memory on whole reviews (this 2-core machine, shared)",
        "",
        f"- Batched scoring: {spd['reviews_per_s']} reviews/s ({spd['reviews']} validation reviews, mean "
        f"{spd['mean_tokens']} tokens, whole reviews).",
        f"- One 20,000-character review ({spd['long_review_tokens']} tokens): {spd['plain_ms']} ms plain, "
        f"{spd['diagnostics_ms']} ms with diagnostics.",
    ]
    if "plain_peak_mb" in spd:
        out.append(
            f"- Its memory (a fresh process, {spd['loaded_rss_mb']} MB RSS with the model loaded; peak during the call"
            f" above the RSS before it, then what stays): plain +{spd['plain_peak_mb']} MB (keeps "
            f"{spd['plain_kept_mb']} MB), then with diagnostics +{spd['diagnostics_peak_mb']} MB (keeps "
            f"{spd['diagnostics_kept_mb']} MB, its session included)."
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--run", required=True, help="the training run folder (caches go here)")
    parser.add_argument("--data", default=TrainConfig().data)
    parser.add_argument("--reviews", type=int, default=300, help="validation reviews for faithfulness and speed")
    parser.add_argument("--compare", nargs="*", default=[], help="other artifact dirs to list in the comparison")
    args = parser.parse_args(argv)
    run, art = Path(args.run), Path(args.model_dir)
    rt = ModelRuntime(art, intra_op_threads=1)
    texts = faithfulness.validation_texts(args.data, args.reviews)
    baseline = _cached(run / "baseline.json", lambda: tfidf_baseline(args.data))
    probe = probes(rt)
    (run / "probes.json").write_text(json.dumps(probe, indent=2) + "\n")
    faith = _cached(run / "faithfulness.json", lambda: faithfulness.evaluate(rt, texts))
    spd = _cached(run / "speed.json", lambda: speed(rt, texts))
    manifest_path = art / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    others = []
    for other in args.compare:
        m = json.loads((Path(other) / "manifest.json").read_text())
        arch = f"{'bi' if m['model'].get('bidirectional') else 'uni'}directional {m['model']['cell'].upper()}"
        others.append({"name": m["name"], "version": m["version"], "arch": arch, "val_accuracy": m["metrics"]["val_accuracy"]})
    notes = render(manifest["metrics"], baseline, probe, faith, spd, others)
    (run / "evaluation.md").write_text(notes)
    model_card.write(art, manifest, notes=run / "evaluation.md")
    card = art / "MODEL_CARD.md"
    manifest["files"]["MODEL_CARD.md"] = file_entry(card)
    manifest["evaluation"] = {
        "probes": probe["overall"],
        "probe_categories": {k: v["pass_rate"] for k, v in probe["categories"].items()},
        "faithfulness": faith,
        "baseline": baseline,
        "speed": spd,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
