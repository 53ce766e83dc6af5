"""The hashed n-gram branch: which table rows a token's n-grams use, and the NBSVM fit of their weights.

Position t of a review owns the n-grams that *end* at t: its unigram, (t-1, t) and (t-2, t-1, t). Inside a
negation's scope (a negator such as "not" / "never" / "didn't" among the previous `negation_window` tokens, with no
punctuation or "but" in between) the unigram is a different feature, "NOT_word" (Das & Chen 2001; Pang et al. 2002):
"not bad" and "never boring" then learn their own weights instead of inheriting "bad" and "boring". Keys are exact
integers (id_{t-n+1} * V^{n-1} + ... + id_t with V = vocab_size + 1, the extra id marking "before the text"), reduced
modulo a prime bucket count per order. The ONNX export does the same integer arithmetic in the graph
(`GraphExporter._ngram_weights` in training/graph.py), so serving needs no Python-side hashing. Because each
position's score depends only on tokens up to it, the branch's sum over a prefix is exactly its answer for that prefix.

The weights are fitted apart from the network, as Wang & Manning's NBSVM (2012): features scaled by the naive-Bayes
log-count ratio r, then an L2 logistic regression; the table stores coef * r, so scoring is a plain lookup-and-sum.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


NEGATORS = (
    "not",
    "no",
    "never",
    "n't",
    "nothing",
    "nobody",
    "none",
    "neither",
    "nor",
    "without",
    "hardly",
    "don't",
    "doesn't",
    "didn't",
    "isn't",
    "wasn't",
    "aren't",
    "weren't",
    "can't",
    "cannot",
    "couldn't",
    "won't",
    "wouldn't",
    "shouldn't",
    "haven't",
    "hasn't",
    "hadn't",
    "ain't",
    "dont",
    "didnt",
    "doesnt",
    "isnt",
    "wasnt",
    "cant",
    "wont",
)
SCOPE_BREAKERS = (".", ",", "!", "?", ";", ":", "(", ")", "but", "however", "although", "though")


def negation_ids(vocab: dict[str, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Ids of the negators and of the tokens that end a negation's scope, in this vocabulary."""
    return (
        tuple(sorted(vocab[w] for w in NEGATORS if w in vocab)),
        tuple(sorted(vocab[w] for w in SCOPE_BREAKERS if w in vocab)),
    )


def negation_scope(ids: torch.Tensor, cfg) -> torch.Tensor:
    """[B, T] bool: token t follows a negator within cfg.negation_window tokens, no scope breaker in between."""

    def flags(wanted) -> torch.Tensor:
        table = torch.zeros(cfg.vocab_size + 1, dtype=torch.bool)
        table[list(wanted)] = True
        return table[ids]

    neg, brk = flags(cfg.negation_ids), flags(cfg.scope_break_ids)
    scope = torch.zeros_like(neg)
    clear = torch.ones_like(neg)  # no breaker at t-1 .. t-j+1
    for j in range(1, cfg.negation_window + 1):
        scope |= F.pad(neg, (j, 0))[:, : ids.shape[1]] & clear
        clear = clear & ~F.pad(brk, (j, 0))[:, : ids.shape[1]]
    return scope


def ngram_rows(ids: torch.Tensor, cfg) -> torch.Tensor:
    """Table rows [B, T, order] for right-padded ids [B, T] (rows at padded positions are meaningless: mask them).
    `cfg` is the ModelConfig (vocab_size, ngram_buckets, ngram_order, negation settings)."""
    vocab_size, buckets, order = cfg.vocab_size, cfg.ngram_buckets, cfg.ngram_order
    v1, steps = vocab_size + 1, ids.shape[1]
    padded = F.pad(ids, (order - 1, 0), value=vocab_size)  # vocab_size = "before the text"
    unigram = ids
    if cfg.negation_window:
        unigram = torch.where(negation_scope(ids, cfg), ids + v1 + (order - 1) * buckets, ids)
    rows, key = [unigram], ids
    for n in range(2, order + 1):
        earlier = padded[:, order - n : order - n + steps]  # id_{t-n+1}
        key = earlier * v1 ** (n - 1) + key
        rows.append(v1 + (n - 2) * buckets + key % buckets)
    return torch.stack(rows, dim=-1)


def count_matrix(docs: list[np.ndarray], cfg):
    """Sparse [docs, table rows] n-gram counts."""
    from scipy.sparse import csr_matrix

    indptr, indices = [0], []
    for ids in docs:
        t = torch.from_numpy(np.asarray(ids, np.int64))[None, :]
        rows = ngram_rows(t, cfg)[0].reshape(-1).numpy() if len(ids) else np.zeros(0, np.int64)
        indices.append(rows)
        indptr.append(indptr[-1] + len(rows))
    col = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    m = csr_matrix((np.ones(len(col), np.float32), col, np.array(indptr)), shape=(len(docs), cfg.ngram_table_size))
    m.sum_duplicates()
    return m


def fit_nbsvm(
    train_ids: list[np.ndarray],
    labels: list[int],
    cfg,
    c: float,
    alpha: float = 1.0,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Table weights (coef * r per row) and the intercept of an NB-scaled logistic regression on n-gram counts.
    `sample_weight` weighs examples in both the ratio and the regression (soft labels: training/pseudo.py)."""
    return fit_nbsvm_counts(count_matrix(train_ids, cfg), labels, c, alpha, sample_weight)


def fit_nbsvm_counts(
    x, labels, c: float, alpha: float = 1.0, sample_weight: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """fit_nbsvm on a count matrix already built (the fold fits reuse one matrix for all their folds)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(labels)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    binary = x.copy()
    binary.data[:] = 1.0
    p = alpha + np.asarray(binary.T @ (w * (y == 1))).ravel()
    q = alpha + np.asarray(binary.T @ (w * (y == 0))).ravel()
    r = (np.log(p / p.sum()) - np.log(q / q.sum())).astype(np.float32)
    clf = LogisticRegression(C=c, max_iter=1000, solver="liblinear")
    clf.fit(x.multiply(r).tocsr(), y, sample_weight=sample_weight)
    weights = (clf.coef_[0] * r).astype(np.float32)
    log.info("n-gram branch: %d rows, %d non-zero", len(weights), int(np.count_nonzero(weights)))
    return weights, float(clf.intercept_[0])
