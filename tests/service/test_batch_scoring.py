"""service/batch/scoring.py: the per-chunk scoring both engines share. With diagnostics each text runs the
diagnostics graph once and nothing else; the scores it gives are the scoring graph's."""

from __future__ import annotations

import pytest

from service.batch.scoring import score_texts
from service.runtime import ModelRuntime

TEXTS = [
    "A wonderful, moving film. The cast is superb.",
    "Terrible and boring, a waste of time.",
    "",
    None,
    "The plot was dull but the acting was brilliant<br /><br />I loved it!",
]


@pytest.fixture(scope="module")
def rt(tiny_artifact) -> ModelRuntime:
    return ModelRuntime(tiny_artifact, intra_op_threads=1)


def test_diagnostics_run_the_diagnostics_graph_once_per_row_and_nothing_else(rt, monkeypatch):
    plain = score_texts(rt, TEXTS, batch_size=2)
    calls = []
    diagnose = ModelRuntime.diagnose

    def counted(self, text, enc, *args, **kwargs):
        calls.append(text)
        return diagnose(self, text, enc, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("the scoring graph ran as well")

    monkeypatch.setattr(ModelRuntime, "diagnose", counted)
    monkeypatch.setattr(ModelRuntime, "predict", refuse)
    with_diagnostics = score_texts(rt, TEXTS, batch_size=2, diagnostics=True)
    assert calls == [t for t in TEXTS if t]  # each scorable text once, in order
    for a, b in zip(plain, with_diagnostics):
        assert a.get("error") == b.get("error")
        if "error" not in a:
            assert (a["label"], a["num_tokens"], a["truncated"]) == (b["label"], b["num_tokens"], b["truncated"])
            assert b["score"] == pytest.approx(a["score"], abs=1e-6)
            assert 0 < b["mean_forget_gate"] < 1 and isinstance(b["top_positive"], list)
