"""How far an answer can be trusted, from what the model actually read: the share of unknown tokens, the number of
tokens and truncation. Every interface (HTTP, TEI/OIP aside, the batch CLI) adds the same `unknown_share` and
`warnings` to each result, and may abstain (`label: null`) past a threshold.

Why: text the model cannot read (another language, another script, emoji) is almost all [UNK] tokens, and the model
still answers a confident-looking label for it. The warnings say so; abstaining, when switched on, withholds the label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.tokenization import Encoded

MOSTLY_UNKNOWN, VERY_SHORT, TRUNCATED = "mostly_unknown_tokens", "very_short", "truncated"

# Defaults of the settings of the same names (service/settings.py), chosen on the shipped model's vocabulary. Measured
# on imdb-lstm 2.0.0: 2,500 English validation reviews reach at most 0.168 unknown (99th percentile 0.068), the 254
# short probe texts at most 0.143; German and Spanish sentences read 0.45 (their punctuation and a few shared words
# are known), French 0.5, Japanese, Chinese or emoji-only text 1.0. 0.25 warns on all of those and on no English text.
WARN_UNKNOWN_SHARE = 0.25
WARN_MIN_TOKENS = 3


@dataclass(frozen=True)
class TrustPolicy:
    warn_unknown_share: float = WARN_UNKNOWN_SHARE  # mostly_unknown_tokens at or above this share of [UNK]
    warn_min_tokens: int = WARN_MIN_TOKENS  # very_short below this many tokens
    abstain_unknown_share: float | None = None  # label withheld at or above this share; None: never

    @classmethod
    def from_settings(cls, settings) -> TrustPolicy:
        return cls(settings.warn_unknown_share, settings.warn_min_tokens, settings.abstain_unknown_share)

    def assess(self, enc: Encoded, unk_id: int) -> tuple[float, list[str], str | None]:
        """(unknown share, warnings, abstention reason or None) of one encoded text."""
        share = round(float(np.count_nonzero(enc.ids == unk_id)) / enc.num_tokens, 6) if enc.num_tokens else 0.0
        warnings = []
        if share >= self.warn_unknown_share:
            warnings.append(MOSTLY_UNKNOWN)
        if enc.num_tokens < self.warn_min_tokens:
            warnings.append(VERY_SHORT)
        if enc.truncated:
            warnings.append(TRUNCATED)
        abstain = self.abstain_unknown_share is not None and share >= self.abstain_unknown_share
        return share, warnings, MOSTLY_UNKNOWN if abstain else None

    def apply(self, result: dict, enc: Encoded, unk_id: int) -> dict:
        """Adds unknown_share and warnings to a result (label, score, ...); abstaining sets label to None and says why
        in `abstained` (score and probabilities stay: they are what the model computed)."""
        share, warnings, reason = self.assess(enc, unk_id)
        result["unknown_share"] = share
        result["warnings"] = warnings
        if reason is not None:
            result["label"] = None
            result["abstained"] = reason
        return result
