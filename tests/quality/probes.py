"""Runs the probe suite (tests/quality/probes.jsonl) through the service's own scoring path, `ModelRuntime`
(onnxruntime, no torch), and reports the pass rate per category and overall, with every failure.

    .venv/bin/python -m tests.quality.probes                                   # the service's default model
    .venv/bin/python -m tests.quality.probes --model-dir exported/imdb-gru --json gru.json
    .venv/bin/python -m tests.quality.probes --bare      # the probes typed without their final "." / "!" / "?"

A probe passes when the model's most probable label is the probe's label.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from service.artifacts import ArtifactError
from service.registry import ModelRegistry
from service.runtime import ModelRuntime
from service.settings import Settings

PROBES_FILE = Path(__file__).with_name("probes.jsonl")


def load_probes(path: Path = PROBES_FILE) -> list[dict]:
    """The probes, one JSON object a line: {"category", "label", "text"}."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def default_runtime(settings: Settings | None = None) -> ModelRuntime:
    """The model the service answers with when a request names none (SENTIMENT_DEFAULT_MODEL, else the shipped
    default), resolved by the service's registry."""
    return ModelRegistry.load(settings or Settings()).get(None)


def without_final_punctuation(probes: list[dict]) -> list[dict]:
    """The probes as users often type them: without the final "." / "!" / "?" (or a run of them)."""
    return [dict(p, text=re.sub(r"[.!?]+\s*$", "", p["text"])) for p in probes]


def verdict_changes(before: dict, after: dict) -> int:
    """How many probes two reports of the same probes (in the same order, e.g. with and without final punctuation)
    label differently: with two labels, a probe's verdict changes exactly when its pass/fail does."""
    return sum(a != b for a, b in zip(before["passed"], after["passed"]))


def _rate(passed: int, total: int) -> dict:
    return {"passed": passed, "total": total, "pass_rate": passed / total if total else 0.0}


def run_probes(runtime: ModelRuntime, probes: list[dict] | None = None) -> dict:
    """Scores every probe; returns {"model", "version", "overall", "categories": {name: {passed, total, pass_rate}},
    "failures": [{category, label, predicted, positive, text}], "passed": [bool per probe]}, categories in the probe
    file's order."""
    probes = load_probes() if probes is None else probes
    probs = runtime.predict(runtime.encode([p["text"] for p in probes]))
    counts: dict[str, list[int]] = {}
    failures, passed_each = [], []
    for probe, row in zip(probes, probs):
        predicted = runtime.labels[int(row.argmax())]
        tally = counts.setdefault(probe["category"], [0, 0])
        tally[1] += 1
        passed_each.append(predicted == probe["label"])
        if passed_each[-1]:
            tally[0] += 1
        else:
            failures.append(
                {
                    "category": probe["category"],
                    "label": probe["label"],
                    "predicted": predicted,
                    "positive": round(float(row[runtime.positive]), 4),
                    "text": probe["text"],
                }
            )
    passed = sum(c[0] for c in counts.values())
    return {
        "model": runtime.name,
        "version": runtime.version,
        "overall": _rate(passed, len(probes)),
        "categories": {name: _rate(*c) for name, c in counts.items()},
        "failures": failures,
        "passed": passed_each,  # per probe, in the file's order
    }


def format_table(report: dict) -> str:
    rows = [(name, r) for name, r in report["categories"].items()] + [("overall", report["overall"])]
    width = max(len(name) for name, _ in rows)
    lines = [f"{report['model']} {report['version']}", f"{'category':<{width}}  passed  total  pass rate"]
    lines += [f"{name:<{width}}  {r['passed']:>6}  {r['total']:>5}  {r['pass_rate']:>9.1%}" for name, r in rows]
    return "\n".join(lines)


def format_failures(report: dict) -> str:
    return "\n".join(
        f"  [{f['category']}] expected {f['label']}, got {f['predicted']} (positive {f['positive']:.3f}): {f['text']}"
        for f in report["failures"]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.quality.probes", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="an artifact directory (default: the service's default model)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the full report (failures included) here")
    parser.add_argument("--failures", action="store_true", help="print every failed probe after the table")
    parser.add_argument(
        "--bare", action="store_true", help="score the probes without their final punctuation; count changed verdicts"
    )
    args = parser.parse_args(argv)
    try:
        runtime = ModelRuntime(args.model_dir) if args.model_dir else default_runtime()
    except ArtifactError as exc:
        print(f"probes: error: {exc}", file=sys.stderr)
        return 2
    probes = load_probes()
    report = run_probes(runtime, probes)
    if args.bare:
        bare = run_probes(runtime, without_final_punctuation(probes))
        changed = verdict_changes(report, bare)
        report = bare
    print(format_table(report))
    if args.bare:
        print(f"without final punctuation: {changed} of {len(report['passed'])} verdicts change")
    if args.failures and report["failures"]:
        print("failures:\n" + format_failures(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
