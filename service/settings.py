"""Every service setting, in one pydantic-settings class: read from `SENTIMENT_*` environment variables (or passed
in), validated at start-up so a bad value stops the server instead of surfacing under load.

    SENTIMENT_MODEL_ROOT=exported SENTIMENT_PROVIDERS=cuda,cpu SENTIMENT_API_KEYS=k1,k2 sentiment-serve
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL_ROOT = Path(__file__).resolve().parents[1] / "exported"

# Comma-separated in the environment ("cuda,cpu"), not JSON: NoDecode hands the raw string to the validator.
CsvList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SENTIMENT_", extra="ignore", frozen=True)

    model_root: Path = Field(DEFAULT_MODEL_ROOT, description="an artifact directory, or a folder of them")
    default_model: str | None = Field(None, description="model used when a request names none (default: imdb-lstm "
                                                        "when served, else the first by name)")
    providers: CsvList = Field(default_factory=list, description="execution providers in priority order, e.g. cuda,cpu; "
                                                                 "empty: CUDA when onnxruntime offers it, else CPU")
    # One thread per call by default: a recurrent step is a small matmul that threads barely speed up, and the
    # event loop (HTTP parsing, tokenizing) needs a core of its own. 0 lets onnxruntime use every core.
    intra_op_threads: int = Field(1, ge=0, description="onnxruntime threads per operator (0: one per core)")
    inter_op_threads: int = Field(1, ge=0)
    max_text_chars: int = Field(20_000, gt=0, description="longer texts get 413 (tokens past the model's max are "
                                                            "truncated, this only bounds the work per request)")
    max_batch_items: int = Field(64, gt=0, description="items per batch request, and per micro-batched onnxruntime call")
    max_batch_tokens: int = Field(16_384, gt=0, description="padded tokens (items x longest) per onnxruntime call")
    max_wait_ms: float = Field(2.0, ge=0, le=1000, description="how long the first queued text waits for company")
    queue_size: int = Field(1024, gt=0, description="texts waiting for the model; past it requests get 503")
    max_body_bytes: int = Field(4_000_000, gt=0, description="request bodies over this get 413 before parsing")
    max_hidden_values: int = Field(65_536, gt=0, description="cap on raw hidden-state numbers per diagnostics response")
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with 503")
    api_keys: CsvList = Field(default_factory=list, description="when set, /v1/* needs X-API-Key or a Bearer token")
    cors_origins: CsvList = Field(default_factory=list)

    @field_validator("providers", "api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_csv(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _check_keys(self):
        if any(len(key) < 8 for key in self.api_keys):
            raise ValueError("api_keys: every key needs at least 8 characters")
        return self
