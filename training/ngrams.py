"""The hashed n-gram branch: which table rows a token's n-grams use, and the NBSVM fit of their weights.

Position t of a review owns the n-grams that *end* at t: its unigram, (t-1, t) and (t-2, t-1, t). Keys are exact
integers (id_{t-n+1} * V^{n-1} + ... + id_t with V = vocab_size + 1, the extra id marking "before the text"), reduced
modulo a prime bucket count per order. The ONNX export does the same integer arithmetic in the graph
(`export.ngram_rows`), so serving needs no Python-side hashing. Because each position's score depends only on tokens
up to it, the branch's sum over a prefix is exactly the branch's answer for that prefix.

The weights are fitted apart from the network, as Wang & Manning's NBSVM (2012): features scaled by the naive-Bayes
log-count ratio r, then an L2 logistic regression; the table stores coef * r, so scoring is a plain lookup-and-sum.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def ngram_rows(ids: torch.Tensor, vocab_size: int, buckets: int, order: int) -> torch.Tensor:
    """Table rows [B, T, order] for right-padded ids [B, T] (rows at padded positions are meaningless: mask them)."""
    v1, steps = vocab_size + 1, ids.shape[1]
    padded = F.pad(ids, (order - 1, 0), value=vocab_size)  # vocab_size = "before the text"
    rows, key = [ids], ids
    for n in range(2, order + 1):
        earlier = padded[:, order - n: order - n + steps]  # id_{t-n+1}
        key = earlier * v1 ** (n - 1) + key
        rows.append(v1 + (n - 2) * buckets + key % buckets)
    return torch.stack(rows, dim=-1)


def _doc_rows(ids: np.ndarray, vocab_size: int, buckets: int, order: int) -> np.ndarray:
    t = torch.from_numpy(np.asarray(ids, np.int64))[None, :]
    return ngram_rows(t, vocab_size, buckets, order)[0].reshape(-1).numpy()


def count_matrix(docs: list[np.ndarray], vocab_size: int, buckets: int, order: int):
    """Sparse [docs, table rows] n-gram counts."""
    from scipy.sparse import csr_matrix

    size = (vocab_size + 1) + (order - 1) * buckets
    indptr, indices = [0], []
    for ids in docs:
        rows = _doc_rows(ids, vocab_size, buckets, order) if len(ids) else np.zeros(0, np.int64)
        indices.append(rows)
        indptr.append(indptr[-1] + len(rows))
    col = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    m = csr_matrix((np.ones(len(col), np.float32), col, np.array(indptr)), shape=(len(docs), size))
    m.sum_duplicates()
    return m


def fit_nbsvm(train_ids: list[np.ndarray], labels: list[int], vocab_size: int, buckets: int, order: int,
              c: float, alpha: float = 1.0) -> tuple[np.ndarray, float]:
    """Table weights (coef * r per row) and the intercept of an NB-scaled logistic regression on n-gram counts."""
    from sklearn.linear_model import LogisticRegression

    x = count_matrix(train_ids, vocab_size, buckets, order)
    y = np.asarray(labels)
    binary = x.copy()
    binary.data[:] = 1.0
    p = alpha + np.asarray(binary[y == 1].sum(0)).ravel()
    q = alpha + np.asarray(binary[y == 0].sum(0)).ravel()
    r = (np.log(p / p.sum()) - np.log(q / q.sum())).astype(np.float32)
    clf = LogisticRegression(C=c, max_iter=1000, solver="liblinear")
    clf.fit(x.multiply(r).tocsr(), y)
    weights = (clf.coef_[0] * r).astype(np.float32)
    log.info("n-gram branch: %d rows, %d non-zero", len(weights), int(np.count_nonzero(weights)))
    return weights, float(clf.intercept_[0])
