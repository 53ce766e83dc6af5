"""What one epoch's batches are made of: length-bucketed padded batches of token ids, and the sentence crops that
teach the network short texts."""

from __future__ import annotations

import json
import random

import numpy as np
import torch


def sentence_crops(
    ids: list[np.ndarray], labels: list[int], enders: np.ndarray, share: float, seed: int, min_tokens: int = 3
) -> tuple[list[np.ndarray], list[int], list[int]]:
    """1-3 consecutive sentences from a random `share` of the reviews, each with its review's label; and the index
    of the review each crop came from."""
    rng = np.random.default_rng(seed)
    out_ids, out_y, sources = [], [], []
    for i in np.flatnonzero(rng.random(len(ids)) < share):
        row = ids[i]
        ends = np.flatnonzero(np.isin(row, enders)) + 1
        bounds = np.unique(np.concatenate([[0], ends, [len(row)]]))
        if len(bounds) < 3:
            continue
        k = int(rng.integers(1, 4))
        start = int(rng.integers(0, max(1, len(bounds) - 1 - k) + 1))
        crop = row[bounds[start] : bounds[min(start + k, len(bounds) - 1)]]
        if len(crop) >= min_tokens:
            out_ids.append(crop)
            out_y.append(labels[i])
            sources.append(int(i))
    return out_ids, out_y, sources


def drop_final_enders(ids: list[np.ndarray], enders: np.ndarray, share: float, seed: int) -> list[np.ndarray]:
    """The texts with their final sentence punctuation ("." or a run like "!!!") removed from a random `share` of
    those that end with some and keep two tokens or more without it. A share of 0 draws nothing, so earlier recipes'
    examples stay exactly the same."""
    if share <= 0 or not ids:
        return ids
    drop = np.random.default_rng(seed).random(len(ids)) < share
    out = []
    for row, d in zip(ids, drop):
        end = len(row)
        while d and end > 0 and np.isin(row[end - 1], enders):
            end -= 1
        out.append(row[:end] if 2 <= end < len(row) else row)
    return out


def sentence_enders(tokenizer_json: str) -> np.ndarray:
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    return np.array([vocab[p] for p in (".", "!", "?") if p in vocab], dtype=np.int64)


def batches(ids: list[np.ndarray], labels: list[int], batch_size: int, seed: int | None, max_batch_tokens: int = 64 * 400):
    """Length-bucketed batches: shuffled (when seeded) then sorted inside chunks so a batch has similar lengths;
    long reviews come in smaller batches (at most `max_batch_tokens` padded tokens) so memory stays flat."""
    order = list(range(len(ids)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    chunk = batch_size * 50
    groups = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: len(ids[i]))
        group: list[int] = []
        for i in part:
            if group and (len(group) >= batch_size or (len(group) + 1) * len(ids[i]) > max_batch_tokens):
                groups.append(group)
                group = []
            group.append(i)
        if group:
            groups.append(group)
    if seed is not None:
        random.Random(seed + 1).shuffle(groups)
    for group in groups:
        lengths = torch.tensor([max(1, len(ids[i])) for i in group])
        x = torch.zeros(len(group), int(lengths.max()), dtype=torch.long)
        for row, i in enumerate(group):
            x[row, : len(ids[i])] = torch.from_numpy(ids[i])
        yield x, lengths, torch.tensor([labels[i] for i in group])
