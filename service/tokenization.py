"""The one tokenization path, shared by training and serving.

Cleaning (HTML line breaks and tags, entities, NFKC, lower-casing) is part of `tokenizer.json`'s normalizer, so
loading that file reproduces it byte for byte; offsets point into the text exactly as submitted. This module adds
only the truncation policy recorded in the manifest (head, tail or head+tail), which `tokenizers` cannot express.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from service.contract import Truncation

__all__ = ["Encoded", "TextTokenizer", "Truncation", "kept_positions"]
PAD, UNK = "[PAD]", "[UNK]"


@dataclass
class Encoded:
    ids: np.ndarray  # int64 token ids actually scored
    offsets: list[tuple[int, int]]  # character spans in the submitted text
    total_tokens: int  # tokens before truncation
    truncated: bool

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


def kept_positions(n: int, max_tokens: int, truncation: Truncation, head_tokens: int) -> list[int]:
    """Indices of the tokens kept from a review of `n` tokens."""
    if n <= max_tokens:
        return list(range(n))
    if truncation == "head":
        return list(range(max_tokens))
    if truncation == "tail":
        return list(range(n - max_tokens, n))
    head = min(head_tokens, max_tokens)
    return list(range(head)) + list(range(n - (max_tokens - head), n))


class TextTokenizer:
    """`tokenizer.json` plus the manifest's truncation policy."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int, truncation: Truncation = "head_tail", head_tokens: int = 100):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.truncation = truncation
        self.head_tokens = head_tokens
        pad_id, unk_id = tokenizer.token_to_id(PAD), tokenizer.token_to_id(UNK)
        if pad_id != 0 or unk_id is None:
            raise ValueError("tokenizer must define [PAD] as id 0 and an [UNK] token")
        self.pad_id: int = pad_id
        self.unk_id: int = unk_id

    @classmethod
    def from_file(cls, path: str | Path, **policy) -> TextTokenizer:
        return cls(Tokenizer.from_file(str(path)), **policy)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def _finish(self, enc, truncation: Truncation | None) -> Encoded:
        ids = np.asarray(enc.ids, dtype=np.int64)
        offsets = enc.offsets  # each attribute access rebuilds the whole list: read it once, not once per token
        n = len(ids)
        if n <= self.max_tokens:  # the usual case: everything is kept, no per-token Python work
            return Encoded(ids, offsets, n, False)
        keep = kept_positions(n, self.max_tokens, truncation or self.truncation, self.head_tokens)
        return Encoded(ids[keep], [offsets[i] for i in keep], n, True)

    def encode(self, text: str, truncation: Truncation | None = None) -> Encoded:
        return self._finish(self.tokenizer.encode(text, add_special_tokens=False), truncation)

    def encode_batch(self, texts: list[str], truncation: Truncation | None = None) -> list[Encoded]:
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [self._finish(e, truncation) for e in encs]

    def tokens(self, text: str) -> list[str]:
        """Normalised word pieces before vocabulary lookup (what word2vec trains on)."""
        normalized = self.tokenizer.normalizer.normalize_str(text)
        return [w for w, _ in self.tokenizer.pre_tokenizer.pre_tokenize_str(normalized)]
