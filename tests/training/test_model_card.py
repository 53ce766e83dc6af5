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


def test_the_card_says_what_the_mix_was_fitted_on(tiny_artifact):
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    manifest["metrics"]["mix"] = [0.4, 0.6, 0.03]
    manifest["model"]["ngram_buckets"] = 101
    crops = "logistic regression on validation reviews and one sentence crop of each"
    assert crops not in render(manifest) and "logistic regression on validation (temperature 1)" in render(manifest)
    manifest["training"]["config"]["mix_on_crops"] = True
    card = render(manifest)
    assert crops in card and "fitted on validation reviews and one sentence crop of each." in card
