"""The short load run CI makes: `python -m benchmarks.load` with 16 clients for 5 s against the tiny model (its
own `sentiment-serve` on loopback). Zero errors - only 200s, or the documented 503 - latency reported, the server's
RSS not growing past warm-up, and a clean SIGTERM exit. `make load` runs the full 64 clients x 30 s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_short_load_run_has_no_errors_and_flat_memory(model_root, tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load",
            "--clients",
            "16",
            "--duration",
            "5",
            "--warmup",
            "1",
            "--model-dir",
            str(model_root),
            "--max-rss-growth-mb",
            "40",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and not report["problems"]
    assert set(report["status_counts"]) <= {"200", "503"} and report["transport_errors"] == 0
    assert report["status_counts"]["200"] > 50  # it really was load
    for kind in ("all", "short", "long"):
        latency = report["latency"][kind]
        assert latency["n"] > 0 and 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert report["latency"]["diagnostics"]["n"] + report["latency"]["batch"]["n"] > 0
    assert report["rss_mb"]["growth_after_warmup"] <= 40
    assert report["server_exit_code"] == 0
    assert report["wall_s"] < 5 + 30  # stopped by itself: the deadline plus at most one request timeout
