"""The end-of-job accounting both engines share: the running `Tally` (rows, errors, labels, the first error
examples), the summary dict (`--summary-json`) and its one-paragraph form on stderr."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MAX_ERROR_EXAMPLES = 10


@dataclass
class Tally:
    rows: int = 0
    errors: int = 0
    labels: Counter = field(default_factory=Counter)
    error_examples: list = field(default_factory=list)

    def scored(self, label: str) -> None:
        self.rows += 1
        self.labels[label] += 1

    def failed(self, example: dict) -> None:
        """A bad row; `example` ({"where", "error"} and the row or id) is kept if it is among the first few."""
        self.rows += 1
        self.errors += 1
        if len(self.error_examples) < MAX_ERROR_EXAMPLES:
            self.error_examples.append(example)

    def state(self) -> dict:
        return {"rows": self.rows, "errors": self.errors, "labels": dict(self.labels), "error_examples": self.error_examples}

    @classmethod
    def from_state(cls, state: dict) -> Tally:
        return cls(state["rows"], state["errors"], Counter(state["labels"]), state["error_examples"])


def summary(
    job,
    manifest: dict,
    directory: Path,
    tally: Tally,
    rows_this_run: int,
    elapsed: float,
    resumed_from: int = 0,
    engine: str = "local",
    **extra,
) -> dict:
    return {
        "status": "done",
        "engine": engine,
        "input": job.input,
        "output": job.output,
        "model": {"name": manifest["name"], "version": manifest["version"], "directory": str(directory)},
        "rows": tally.rows,
        "scored": tally.rows - tally.errors,
        "errors": tally.errors,
        "labels": {label: tally.labels.get(label, 0) for label in manifest["labels"]},
        "error_examples": tally.error_examples,
        "resumed_from_row": resumed_from,
        "rows_this_run": rows_this_run,
        "elapsed_s": round(elapsed, 3),
        "rows_per_s": round(rows_this_run / elapsed, 1) if elapsed > 0 else None,
        **extra,
    }


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def print_summary(s: dict) -> None:
    labels = ", ".join(f"{label} {n:,}" for label, n in s["labels"].items())
    if s["rows_this_run"]:  # the rate from the counts, not the rounded `rows_per_s` (3 rows in 90 s round to 0.0)
        per_s = s["rows_this_run"] / s["elapsed_s"] if s["elapsed_s"] else 0.0
        rate = f"{per_s:,.{1 if per_s >= 1 else 3}f} rows/s" if per_s else _plural(s["rows_this_run"], "row") + " this run"
    else:
        rate = "no rows left to score this run"
    resumed = f" (resumed after row {s['resumed_from_row']:,})" if s["resumed_from_row"] else ""
    print(
        f"sentiment-score: {_plural(s['rows'], 'row')}{resumed}, {_plural(s['errors'], 'error')}; {labels}; {rate}, "
        f"{s['elapsed_s']:.1f} s -> {s['output'] if s['output'] != '-' else 'stdout'}",
        file=sys.stderr,
    )
    shown = s["error_examples"][:3]
    for example in shown:
        print(f"  {example['where']}: {example['error']}", file=sys.stderr)
    if s["errors"] > len(shown):
        listed = len(s["error_examples"])
        more = f" (the first {listed:,} in --summary-json)" if listed > len(shown) else ""
        print(f"  +{s['errors'] - len(shown):,} more{more}", file=sys.stderr)
