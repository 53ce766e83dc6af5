"""Initial embedding matrices: random, a GloVe-format text file, or word2vec trained on the in-domain reviews
(train + the 50k unlabeled `train/unsup` reviews: no downloads are possible, so this is our stand-in for GloVe)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def coverage_matrix(vocab: dict[str, int], lookup, dim: int, seed: int) -> tuple[np.ndarray, float]:
    """Rows for known words come from `lookup(word)` (None when missing); others stay small random.
    Returns the matrix and the share of the vocabulary that was covered."""
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0, 0.1, (len(vocab), dim)).astype(np.float32)
    hits = 0
    for word, idx in vocab.items():
        vec = lookup(word)
        if vec is not None:
            matrix[idx] = vec
            hits += 1
    matrix[0] = 0.0  # [PAD]
    return matrix, hits / max(1, len(vocab))


def load_glove(path: str | Path, vocab: dict[str, int], dim: int, seed: int) -> tuple[np.ndarray, float]:
    vectors: dict[str, np.ndarray] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.rstrip().split(" ")
            if len(parts) != dim + 1:
                if n == 1 and len(parts) == 2:  # word2vec text header "count dim"
                    continue
                raise ValueError(f"{path}:{n}: expected a word and {dim} numbers (set --embedding-dim to match)")
            if parts[0] in vocab:
                vectors[parts[0]] = np.asarray(parts[1:], dtype=np.float32)
    return coverage_matrix(vocab, vectors.get, dim, seed)


def train_word2vec(
    sentences: list[list[str]], vocab: dict[str, int], dim: int, epochs: int, seed: int, workers: int = 1
) -> tuple[np.ndarray, float]:
    """One worker by default: with two, the order in which the threads update the shared vectors varies from run to
    run, so `make train` gave a different model each time (measured: 0.9152-0.9184 against 0.9192-0.9228 over the
    first four epochs of two runs of the same recipe). It costs about a minute: 150 s against 80 s with two."""
    from gensim.models import Word2Vec

    log.info("word2vec: %d reviews, dim %d, %d epochs", len(sentences), dim, epochs)
    model = Word2Vec(
        sentences, vector_size=dim, window=5, min_count=3, sg=0, negative=5, epochs=epochs, workers=workers, seed=seed
    )
    kv = model.wv
    # Scale to the spread torch's own init would have, so pretrained rows don't dominate the random ones.
    scale = 0.5 / max(1e-6, float(np.std(kv.vectors)))
    return coverage_matrix(vocab, lambda w: kv[w] * scale if w in kv.key_to_index else None, dim, seed)
