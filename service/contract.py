"""The artifact contract: the one thing training and serving share. training/export.py writes an artifact
directory through it and service/artifacts.py reads one through it; neither side spells a file name, a manifest
key or a truncation choice of its own.

An artifact directory holds FILES (the two ONNX graphs, their shared weights, the tokenizer, the model card) and
manifest.json, a `Manifest`: the model's identity and labels, its config, the tokenizer and truncation policy,
the calibration temperature, what its diagnostics graph can claim, and the sha256 of every file. Fields this
schema does not name (metrics, evaluation, quantization, ...) are allowed and kept: they are information for
people and tools, not for the service. Bump SCHEMA_VERSION only for a change an older reader would misread.

This module imports nothing heavy (no torch, no onnxruntime), so both sides can import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"  # scoring graph: calibrated probabilities only
DIAGNOSTICS_FILE = "diagnostics.onnx"  # the same network plus per-token states, gates and the running score
WEIGHTS_FILE = "weights.bin"  # the two graphs' shared weights (ONNX external data)
TOKENIZER_FILE = "tokenizer.json"
MODEL_CARD_FILE = "MODEL_CARD.md"
REQUIRED_FILES = (MODEL_FILE, DIAGNOSTICS_FILE, TOKENIZER_FILE)  # the runtime cannot start without these

# Which tokens a text longer than max_tokens keeps (service/tokenization.py: kept_positions).
Truncation = Literal["head", "tail", "head_tail"]
TRUNCATIONS: tuple[str, ...] = get_args(Truncation)

# The model served (and scored by `sentiment-score`) when none is named, if present; and where artifacts live.
DEFAULT_MODEL_NAME = "imdb-lstm"
DEFAULT_MODEL_ROOT = Path(__file__).resolve().parents[1] / "exported"


class _Open(BaseModel):
    """Unknown keys are kept, not refused: newer exporters may add information an older service does not read."""

    model_config = ConfigDict(extra="allow")


class TokenizerInfo(_Open):
    file: str = TOKENIZER_FILE
    vocab_size: int | None = None
    pad_id: int = 0
    unk_token: str = "[UNK]"


class TruncationPolicy(_Open):
    strategy: Truncation
    head_tokens: int = Field(ge=0)
    note: str | None = None


class DiagnosticsContract(_Open):
    """What the diagnostics graph can claim: `running_score` "exact" (unidirectional: the score of every prefix) or
    null; `contribution` the method of the per-token contributions (e.g. "state_change+ngram", "occlusion")."""

    running_score: str | None = None
    contribution: str | None = None
    note: str | None = None


class FileEntry(_Open):
    sha256: str | None = None
    bytes: int | None = None


class Manifest(_Open):
    """manifest.json. `model` is the training-side ModelConfig (plus `directions` and `gates`), kept as a dict so
    new architecture fields (ngram_order, ngram_buckets, ...) need no change here."""

    schema_version: Literal[1]
    name: str
    version: str
    created: str | None = None
    labels: list[str] = Field(min_length=2)
    model: dict[str, Any]
    tokenizer: TokenizerInfo
    max_tokens: int = Field(ge=1)
    truncation: TruncationPolicy
    temperature: float | None = 1.0
    diagnostics: DiagnosticsContract | None = None
    onnx: dict[str, Any] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    history: list[Any] = Field(default_factory=list)
    training: dict[str, Any] | None = None
    files: dict[str, FileEntry]

    def to_dict(self) -> dict:
        """The manifest as JSON-ready Python values: the fields set, in the order above (extras after them)."""
        return self.model_dump(exclude_unset=True)
