"""Self-training on the 50,000 unlabeled reviews of train/unsup: the model trained so far labels them once, then

- the n-gram branch's NBSVM fit sees them with *soft* labels (each review twice: positive with weight p, negative
  with weight 1 - p), which distils the whole model (network + n-grams) into the linear branch and gives rare
  n-grams evidence that 22,500 labeled reviews lack;
- fine-tuning epochs add a fresh sample of the confidently labeled ones (|p - 0.5| >= `pseudo_margin`) with hard
  labels each epoch, so the network reads three times as many reviews.

Unlabeled films never overlap the labeled ones (IMDB's design; `training.data` groups by film), so validation stays
unseen. The labels are cached in the run folder (`pseudo.pt`) with the epoch whose model made them: a resumed run
reuses them, and changing the labeling model means deleting that file.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from training.data import load_unlabeled

log = logging.getLogger(__name__)


def pseudo_labels(cfg, model, state: dict, prepared: dict, out: Path) -> dict:
    """{"ids": token ids per unlabeled review, "positive": P(positive) by the best model so far, "epoch"}."""
    from training.train import predict_logits

    cache = out / "pseudo.pt"
    if cache.exists():
        return torch.load(cache, weights_only=False)
    if state.get("best_state") is None:
        raise ValueError("self-training needs a trained model to label the unlabeled reviews: use it with --resume")
    texts = load_unlabeled(cfg.data)
    if not texts:
        raise ValueError(f"{cfg.data}: no unlabeled reviews (train/unsup) for self-training")
    ids = encode_unlabeled(texts, prepared["tokenizer_json"], cfg)
    current = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state["best_state"])  # the network with its n-gram branch and mix, as it would ship
    # predict_logits returns rows in its own (length-bucketed) order; the "labels" it carries are the row indices.
    logits, order = predict_logits(model, ids, list(range(len(ids))))
    model.load_state_dict(current)
    positive = np.empty(len(ids), np.float32)
    positive[order.numpy()] = logits.softmax(1)[:, 1].numpy()
    best_epoch = max(state["history"], key=lambda r: r["val_accuracy"])["epoch"]
    labels = {"ids": ids, "positive": positive, "epoch": best_epoch}
    torch.save(labels, cache)
    log.info(
        "self-training: %d unlabeled reviews labeled by epoch %d (%.1f%% positive, %.1f%% within the margin)",
        len(ids),
        best_epoch,
        100 * float((positive > 0.5).mean()),
        100 * float((np.abs(positive - 0.5) >= cfg.pseudo_margin).mean()),
    )
    return labels


def encode_unlabeled(texts: list[str], tokenizer_json: str, cfg) -> list[np.ndarray]:
    """Token ids of the unlabeled reviews, as the run's tokenizer and truncation give them; empty ones dropped.
    Shared by self-training and language-model pretraining (training/pretrain.py)."""
    from training.train import make_text_tokenizer

    tokenizer = make_text_tokenizer(Tokenizer.from_str(tokenizer_json), cfg)
    ids = [np.asarray(enc.ids, np.int64) for enc in tokenizer.encode_batch(texts)]
    return [row for row in ids if len(row)]


def epoch_sample(labels: dict, margin: float, count: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """Up to `count` confidently labeled reviews (|p - 0.5| >= margin) for one epoch, with hard labels."""
    confident = [i for i, p in enumerate(labels["positive"]) if abs(float(p) - 0.5) >= margin]
    random.Random(seed).shuffle(confident)
    chosen = confident[:count]
    return [labels["ids"][i] for i in chosen], [int(labels["positive"][i] > 0.5) for i in chosen]


def soft_examples(labels: dict) -> tuple[list[np.ndarray], list[int], np.ndarray]:
    """Every unlabeled review twice, as (ids, label, weight): positive with weight p, negative with 1 - p."""
    p = np.asarray(labels["positive"], np.float64)
    ids = list(labels["ids"])
    return ids + ids, [1] * len(ids) + [0] * len(ids), np.concatenate([p, 1 - p])
