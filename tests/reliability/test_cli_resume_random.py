"""`sentiment-score` killed at random points and resumed gives output identical to an uninterrupted run.

Each round scores one file in a subprocess, kills it at a random moment - a random time after start (start-up
included), or a random moment inside the chunk after a random checkpoint - with SIGKILL, SIGTERM or SIGINT, resumes
with `--resume`, and repeats (up to MAX_KILLS times) until a run finishes. The final output must equal the
uninterrupted run's (bytes for JSONL/CSV, table and row groups for Parquet); after any kill, OUTPUT is either
absent or already complete, never partial; no temporary file is left behind.

The kill schedule comes from a seeded RNG (printed on failure); where the kill lands also depends on timing, which
is the point. (tests/service/test_cli.py has the deterministic cases: Ctrl-C at a chunk boundary, one SIGKILL.)
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROWS, CHUNK = 3000, 150
MAX_KILLS = 4
SIGNALS = [signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGINT]
WORDS = [
    "great",
    "awful",
    "film",
    "plot",
    "acting",
    "boring",
    "loved",
    "the",
    "a",
    "cast",
    "superb",
    "dull",
    "caf\u00e9",
    "\U0001f600",
    "\u05d4\u05e1\u05e8\u05d8",
    "qzxv",
]


def write_input(path: Path, seed: int) -> Path:
    rng = random.Random(seed)
    lines = []
    for i in range(ROWS):
        row = {"id": f"r{i}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 80)))}
        if i % 97 == 5:
            row["text"] = "   "  # bad rows are part of the output too
        lines.append(json.dumps(row, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def cli(model: Path, src: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            str(src),
            "-o",
            str(out),
            "--model-dir",
            str(model),
            "--chunk-size",
            str(CHUNK),
            "--quiet",
            "--threads",
            "1",
            *extra,
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def checkpoint_rows(out: Path) -> int:
    try:
        return json.loads(Path(f"{out}.checkpoint.json").read_text())["tally"]["rows"]
    except (OSError, ValueError, KeyError):
        return 0


def same_output(a: Path, b: Path, fmt: str) -> bool:
    if fmt != "parquet":
        return a.read_bytes() == b.read_bytes()
    import pyarrow.parquet as pq

    return (
        pq.read_table(a).equals(pq.read_table(b))
        and pq.ParquetFile(a).metadata.num_row_groups == pq.ParquetFile(b).metadata.num_row_groups
    )


@pytest.mark.parametrize("fmt, seed", [("jsonl", 1), ("csv", 2), ("parquet", 3)])
def test_killed_at_random_points_and_resumed_equals_an_uninterrupted_run(model_root, tmp_path, fmt, seed):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    model, rng = model_root / "tiny-lstm", random.Random(seed)
    src = write_input(tmp_path / "in.jsonl", seed)
    whole, out = tmp_path / f"whole.{fmt}", tmp_path / f"out.{fmt}"
    started = time.monotonic()
    reference = cli(model, src, whole)
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()
    full_run_s = time.monotonic() - started
    per_chunk_s = full_run_s / (ROWS / CHUNK)

    history = []  # (how, signal, exit status, rows checkpointed) per attempt: the failure message
    for attempt in range(MAX_KILLS + 1):
        proc = cli(model, src, out, "--resume")
        if attempt < MAX_KILLS:
            sig = rng.choice(SIGNALS)
            if rng.random() < 0.5:  # anywhere in the run, start-up included
                how = f"after {rng.uniform(0, full_run_s):.2f} s"
                deadline = time.monotonic() + float(how.split()[1])
                while time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.005)
            else:  # somewhere inside the chunk after a random checkpoint
                target, extra = rng.randrange(CHUNK, ROWS, CHUNK), rng.uniform(0, per_chunk_s)
                how = f"{extra:.3f} s after row {target}"
                deadline = time.monotonic() + 120
                while checkpoint_rows(out) < target and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.002)
                time.sleep(extra)
            if proc.poll() is None:
                proc.send_signal(sig)
        code = proc.wait(timeout=300)
        stderr = proc.stderr.read().decode()
        history.append(
            (how if attempt < MAX_KILLS else "not killed", sig.name if attempt < MAX_KILLS else "-", code, checkpoint_rows(out))
        )
        if code == 0 and not Path(f"{out}.checkpoint.json").exists():
            break
        assert code != 0 or attempt < MAX_KILLS, (history, stderr)
        # Killed: OUTPUT is absent, or (killed between the final rename and removing the checkpoint) complete.
        assert not out.exists() or same_output(out, whole, fmt), history
    print(f"{fmt}: {full_run_s:.1f} s uninterrupted; attempts: {history}")  # shown with -s
    assert code == 0, (history, stderr)
    assert same_output(out, whole, fmt), history
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.jsonl", whole.name, out.name]), history
