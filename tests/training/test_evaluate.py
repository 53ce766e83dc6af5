"""training/evaluate.py's whole-review memory figure: measured in a fresh process, per call, and it grows with the
text where the work does (diagnostics keep every token's states; plain scoring does not)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from training.evaluate import long_review_memory

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "exported" / "imdb-lstm"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_diagnostics_memory_grows_with_the_review_and_plain_scoring_stays_small():
    sentence = "The acting was good but the story was a little slow in the middle . "
    long_text = (sentence * 400)[:20_000]
    short, long = long_review_memory(SHIPPED, sentence), long_review_memory(SHIPPED, long_text)
    assert "memory_error" not in long, long
    assert long["loaded_rss_mb"] > 50  # the model really was loaded in the child
    # a 20,000-character review: every token's hidden states and gates are materialised for diagnostics
    assert long["diagnostics_peak_mb"] > 4 * long["plain_peak_mb"] > 0
    assert long["diagnostics_peak_mb"] > short["diagnostics_peak_mb"] + 30
    assert long["diagnostics_kept_mb"] <= long["diagnostics_peak_mb"]


def test_a_child_that_fails_reports_why(tmp_path):
    got = long_review_memory(tmp_path / "no-such-model", "text")
    assert set(got) == {"memory_error"} and got["memory_error"]
