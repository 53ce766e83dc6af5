"""Residual training (training/residual.py): folds follow films, a review's n-gram log-odds come from a fit that did
not see it, the offset moves exactly the log-odds, the loss is taken on network + offset, and a run trains with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.adversarial import adversarial_step
from training.config import ModelConfig
from training.models import RecurrentClassifier
from training.residual import MIXED, film_folds, fold_fits, offsets, raw_scores, shifted
from training.train import train

SMALL = ModelConfig(vocab_size=400, embedding_dim=8, hidden_size=6, bidirectional=False, ngram_buckets=101)


def test_folds_follow_films_and_are_stable():
    films = [f"tt{i % 37:05d}" for i in range(500)]
    folds = film_folds(films)
    assert set(folds.tolist()) == {0, 1, 2, 3, 4}
    by_film: dict[str, set[int]] = {}
    for film, fold in zip(films, folds):
        by_film.setdefault(film, set()).add(int(fold))
    assert all(len(f) == 1 for f in by_film.values())  # every review of a film in one fold
    assert (film_folds(list(reversed(films))) == folds[::-1]).all()  # from the id alone, not the order


def test_raw_scores_take_the_own_fold_or_the_mean_for_mixed_rows():
    from scipy.sparse import csr_matrix

    counts = csr_matrix(np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
    weights = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])  # 3 fits over 2 table rows
    intercepts = np.array([0.0, 0.5, 1.0])
    got = raw_scores(counts, weights, intercepts, np.array([0, 2, MIXED]))
    assert got.tolist() == pytest.approx([1.0, 61.0, np.mean([11.0, 22.5, 34.0])])


def _films_with_own_words(n_films=60, per_film=4, seed=0):
    """Reviews whose words are their film's alone, with random labels: nothing generalises across films, so a fit
    scores a review well only if it saw that review (or its film)."""
    rng = np.random.default_rng(seed)
    ids, labels, films = [], [], []
    for f in range(n_films):
        own = rng.choice(np.arange(5 + 6 * f, 11 + 6 * f), size=6, replace=False)
        for _ in range(per_film):
            ids.append(rng.choice(own, size=5).astype(np.int64))
            labels.append(int(rng.integers(2)))
            films.append(f"tt{f:04d}")
    return ids, labels, films


class _Cfg:
    ngram_c = 1.0


def test_out_of_fold_scores_carry_no_memory_of_the_review(tmp_path):
    """In-sample, an NBSVM fit reproduces random labels; the out-of-fold scores the network is trained against must
    not (chance level), or the network would learn that the branch is always right."""
    from training.ngrams import fit_nbsvm

    ids, labels, films = _films_with_own_words()
    y = np.asarray(labels)
    weights, intercept = fit_nbsvm(ids, labels, SMALL, 1.0)
    tables = np.repeat(weights[None], 5, axis=0)
    from training.ngrams import count_matrix

    in_sample = raw_scores(count_matrix(ids, SMALL), tables, np.full(5, intercept), np.zeros(len(ids), np.int64))
    assert ((in_sample > 0) == (y == 1)).mean() > 0.75
    folds = film_folds(films)
    fits = fold_fits(_Cfg, SMALL, ids, labels, folds, tmp_path)
    out_of_fold = offsets(fits, SMALL, ids, folds, scale=1.0).numpy()
    assert abs(((out_of_fold > 0) == (y == 1)).mean() - 0.5) < 0.15
    assert np.abs(out_of_fold).max() < 0.5  # and Platt scaling shrinks scores that carry nothing towards 0
    assert list(tmp_path.glob("ngram_folds_*.npz"))  # cached for a resumed run
    again = fold_fits(_Cfg, SMALL, ids, labels, folds, tmp_path)
    assert np.array_equal(again["weights"], fits["weights"]) and again["platt"] == pytest.approx(fits["platt"])


def test_offsets_scale_linearly(tmp_path):
    ids, labels, films = _films_with_own_words()
    folds = film_folds(films)
    fits = fold_fits(_Cfg, SMALL, ids, labels, folds, tmp_path)
    full, half = offsets(fits, SMALL, ids, folds, 1.0), offsets(fits, SMALL, ids, folds, 0.5)
    assert torch.allclose(half, full / 2)


def test_shifted_moves_the_log_odds_by_the_offset_and_nothing_else():
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.5]])
    offset = torch.tensor([1.5, -4.0])
    moved = shifted(logits, offset)
    assert torch.allclose((moved[:, 1] - moved[:, 0]) - (logits[:, 1] - logits[:, 0]), offset)
    assert shifted(logits, None) is logits


def test_an_offset_that_is_already_right_leaves_nothing_to_learn():
    """The loss is on network + offset: when the branch's log-odds already settle every label, the network's
    gradient vanishes; when they contradict it, it grows."""
    torch.manual_seed(0)
    model = RecurrentClassifier(ModelConfig(vocab_size=40, embedding_dim=8, hidden_size=6, bidirectional=False)).eval()
    ids, lengths, y = torch.tensor([[3, 7, 9, 2, 5], [4, 8, 0, 0, 0]]), torch.tensor([5, 2]), torch.tensor([1, 0])

    def head_grad(offset):
        model.zero_grad()
        adversarial_step(model, ids, lengths, y, eps=1.0, offset=offset)
        return model.head.weight.grad.norm().item()

    plain = head_grad(None)
    assert head_grad(torch.tensor([30.0, -30.0])) < 1e-6 * plain
    assert head_grad(torch.tensor([-5.0, 5.0])) > plain
    model.zero_grad()
    logits, loss, _ = adversarial_step(model, ids, lengths, y, eps=0.0, offset=torch.tensor([2.0, -2.0]))
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item())  # logits returned include the offset


def test_a_run_with_residual_training_resumes_with_the_setting(imdb_fixture_dir, tiny_config_factory, tmp_path):
    config, _ = tiny_config_factory
    out = tmp_path / "residual"
    model = {"bidirectional": False, "ngram_buckets": 101}
    train(config(imdb_fixture_dir, out, model=model, ngram_c=1.0, epochs=1))
    cfg = config(imdb_fixture_dir, out, model=model, ngram_c=1.0, epochs=2)
    cfg.ngram_offset = 1.0
    metrics = train(cfg, resume=True)
    assert metrics["epochs_run"] == 2 and len(metrics["history"]) == 2
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    assert saved["train_config"].ngram_offset == 1.0
    assert list(out.glob("ngram_folds_*.npz"))  # the fold fits were made (and are kept for a resume)
    # The films are kept with the prepared data, so a later stage needs neither the data file nor a re-read.
    from training.train import residual_setup, split_examples

    prepared = torch.load(out / "prepared.pt", weights_only=False)
    assert prepared["train_films"] == [e.group for e in split_examples(cfg)[0]]
    cfg.data = tmp_path / "gone.tar.gz"
    setup = residual_setup(cfg, prepared, out)
    assert (setup["folds"] == film_folds(prepared["train_films"])).all()
    again = offsets(setup["fits"], cfg.model, prepared["train"][0], setup["folds"], cfg.ngram_offset)
    assert torch.equal(setup["train"], again)  # the per-epoch offsets start from the reviews' own, computed once
