"""Self-training (training/pseudo.py): the unlabeled reviews are labeled once by the best model so far, fine-tuning
epochs draw confident ones, and the n-gram fit takes them all with soft labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import ModelConfig
from training.ngrams import fit_nbsvm
from training.pseudo import epoch_sample, soft_examples
from training.train import train


def _labels(positive):
    return {"ids": [np.array([i + 1], np.int64) for i in range(len(positive))], "positive": np.asarray(positive, np.float32)}


def test_epoch_sample_takes_only_confident_reviews_with_hard_labels():
    labels = _labels([0.95, 0.55, 0.1, 0.7, 0.85, 0.3])
    ids, ys = epoch_sample(labels, margin=0.3, count=10, seed=0)
    assert sorted(int(row[0]) for row in ids) == [1, 3, 5]  # 0.95, 0.1, 0.85: |p - 0.5| >= 0.3
    assert {int(row[0]): y for row, y in zip(ids, ys)} == {1: 1, 3: 0, 5: 1}
    assert len(epoch_sample(labels, margin=0.3, count=2, seed=0)[0]) == 2
    first = epoch_sample(labels, 0.3, 2, seed=1)
    assert [r.tolist() for r in first[0]] == [r.tolist() for r in epoch_sample(labels, 0.3, 2, seed=1)[0]]  # seeded


def test_soft_examples_are_each_review_twice_weighted_by_its_probability():
    ids, ys, weights = soft_examples(_labels([0.9, 0.2]))
    assert [int(r[0]) for r in ids] == [1, 2, 1, 2] and ys == [1, 1, 0, 0]
    assert weights.tolist() == pytest.approx([0.9, 0.2, 0.1, 0.8])


def test_nbsvm_sample_weights_act_like_repeated_examples():
    cfg = ModelConfig(vocab_size=50, ngram_buckets=31)
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, cfg.vocab_size, rng.integers(3, 12)) for _ in range(40)]
    labels = [int(d.sum() % 2) for d in docs]
    weights = np.array([2.0 if i % 3 == 0 else 1.0 for i in range(40)])
    repeated = [d for i, d in enumerate(docs) for _ in range(int(weights[i]))]
    repeated_y = [y for i, y in enumerate(labels) for _ in range(int(weights[i]))]
    w1, b1 = fit_nbsvm(docs, labels, cfg, c=1.0, sample_weight=weights)
    w2, b2 = fit_nbsvm(repeated, repeated_y, cfg, c=1.0)
    assert np.allclose(w1, w2, atol=1e-3) and b1 == pytest.approx(b2, abs=1e-3)


def test_self_training_needs_a_trained_run(imdb_fixture_dir, tiny_config_factory, tmp_path):
    config, _ = tiny_config_factory
    cfg = config(imdb_fixture_dir, tmp_path / "fresh", model={"bidirectional": False, "ngram_buckets": 101}, epochs=1)
    cfg.self_training = True
    with pytest.raises(ValueError, match="--resume"):
        train(cfg)


def test_a_resumed_run_labels_the_unlabeled_reviews_once_and_trains_on_them(imdb_fixture_dir, tiny_config_factory, tmp_path):
    config, _ = tiny_config_factory
    out = tmp_path / "self"
    base = config(imdb_fixture_dir, out, model={"bidirectional": False, "ngram_buckets": 101}, ngram_c=1.0, epochs=1)
    train(base)
    cfg = config(imdb_fixture_dir, out, model={"bidirectional": False, "ngram_buckets": 101}, ngram_c=1.0, epochs=2)
    cfg.self_training, cfg.pseudo_margin = True, 0.0
    metrics = train(cfg, resume=True)
    labels = torch.load(out / "pseudo.pt", weights_only=False)
    assert len(labels["ids"]) == 10 and labels["epoch"] == 1  # the fixture's 10 unlabeled reviews, by epoch 1
    assert ((labels["positive"] >= 0) & (labels["positive"] <= 1)).all()
    assert metrics["epochs_run"] == 2 and metrics["self_training"] is True
    assert len(list(out.glob("ngram_c1_neg*_self.npz"))) == 1  # the soft-label fit, cached beside the plain one
