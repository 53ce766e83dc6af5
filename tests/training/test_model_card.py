"""MODEL_CARD.md (training/model_card.py) says how the shipped network was started."""

from __future__ import annotations

import copy
import json

from training.model_card import render


def test_the_card_names_language_model_pretraining_only_when_the_run_used_it(tiny_artifact):
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    assert "language model" not in render(manifest)
    pretrained = copy.deepcopy(manifest)
    pretrained["training"]["config"]["init_from"] = "runs/lstm/lm.pt"
    assert "pretrained as a language model" in render(pretrained)
