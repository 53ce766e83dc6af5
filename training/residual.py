"""Residual training of the network on top of the n-gram branch (`--ngram-offset`), the joint training of a
wide-and-deep model (Cheng et al. 2016) made to work with a linear branch that is fitted in closed form.

Trained alone, the network learns much of what the n-gram branch already knows, and the validation mix then finds
little new in it (measured: an LSTM+GRU+n-gram mix scored no better than LSTM+n-gram). Here each training example's
loss is taken on (network log-odds + s * n-gram log-odds), so the network's gradient comes from what the branch gets
wrong: long-range structure, negation scope, word order.

The branch's log-odds on a training review must not come from a fit that saw that review: an NBSVM fit reproduces
its own training labels almost perfectly, which would leave the network nothing to learn. So the training reviews
are split into `FOLDS` folds *by film* (an actor's name must not leak either), one NBSVM is fitted per fold on the
others, and a review (and its sentence crops) gets the log-odds of the fit that did not see it. Examples no fit saw
(pseudo-labeled reviews of other films) and counterfactual sentences mixed from several reviews get the mean of the
folds. Platt scaling on the out-of-fold scores turns them into calibrated log-odds, so s = 1 means "the branch as
it is". The shipped branch and the mix are still fitted afterwards on all the data (training/train.py fit_branch).
"""

from __future__ import annotations

import logging
import time
import zlib
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

FOLDS = 5
MIXED = -1  # fold code of an example that no single fit is out-of-sample for: gets the mean of the fold fits


def film_folds(groups: list[str], folds: int = FOLDS) -> np.ndarray:
    """A fold per review from its film id, stable across runs and machines."""
    return np.array([zlib.crc32(g.encode()) % folds for g in groups], np.int64)


def fold_fits(cfg, mc, train_ids: list[np.ndarray], train_y: list[int], folds: np.ndarray, out: Path) -> dict:
    """{"weights": [FOLDS, table rows], "intercepts": [FOLDS], "platt": (a, b)}; cached in the run folder."""
    from sklearn.linear_model import LogisticRegression

    from training.ngrams import count_matrix, fit_nbsvm_counts

    cache = out / f"ngram_folds_c{cfg.ngram_c:g}_neg{mc.negation_window}.npz"
    if cache.exists():
        saved = np.load(cache)
        return {"weights": saved["weights"], "intercepts": saved["intercepts"], "platt": tuple(saved["platt"])}
    start = time.time()
    y = np.asarray(train_y)
    counts = count_matrix(train_ids, mc)  # once: each fold fit takes its rows
    k = int(folds.max()) + 1
    weights, intercepts = [], []
    for f in range(k):
        keep = np.flatnonzero(folds != f)
        w, b = fit_nbsvm_counts(counts[keep], y[keep], cfg.ngram_c)
        weights.append(w)
        intercepts.append(b)
    weights, intercepts = np.stack(weights), np.array(intercepts, np.float32)
    raw = raw_scores(counts, weights, intercepts, folds)
    platt = LogisticRegression(C=1e4).fit(raw[:, None], y)
    fits = {"weights": weights, "intercepts": intercepts, "platt": (float(platt.coef_[0][0]), float(platt.intercept_[0]))}
    acc = float(((raw > 0) == (y == 1)).mean())
    took = time.time() - start
    log.info("residual training: %d fold fits in %.0f s, out-of-fold accuracy %.4f, Platt %s", k, took, acc, fits["platt"])
    np.savez(cache, weights=weights, intercepts=intercepts, platt=np.array(fits["platt"]))
    return fits


def raw_scores(counts, weights: np.ndarray, intercepts: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Each row's NBSVM score under its own fold's fit (MIXED rows: the mean over fits)."""
    all_folds = np.asarray(counts @ weights.T) + intercepts[None, :]  # [docs, FOLDS]
    mean = all_folds.mean(axis=1)
    own = all_folds[np.arange(len(folds)), np.clip(folds, 0, None)]
    return np.where(folds == MIXED, mean, own).astype(np.float32)


def offsets(fits: dict, mc, ids: list[np.ndarray], folds: np.ndarray, scale: float) -> torch.Tensor:
    """scale * calibrated out-of-fold n-gram log-odds per example."""
    from training.ngrams import count_matrix

    a, b = fits["platt"]
    raw = raw_scores(count_matrix(ids, mc), fits["weights"], fits["intercepts"], folds)
    return torch.from_numpy(scale * (a * raw + b)).float()


def shifted(logits: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """Logits whose log-odds (positive minus negative) are moved by `offset`."""
    if offset is None:
        return logits
    return logits + torch.stack([torch.zeros_like(offset), offset], dim=1)
