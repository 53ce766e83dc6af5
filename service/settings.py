"""Every service setting, in one pydantic-settings class: read from `SENTIMENT_*` environment variables (or passed
in), validated at start-up so a bad value stops the server instead of surfacing under load.

    SENTIMENT_MODEL_ROOT=exported SENTIMENT_PROVIDERS=cuda,cpu SENTIMENT_API_KEYS=k1,k2 sentiment-serve
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.contract import DEFAULT_MODEL_ROOT
from service.runtime import CALL_TOKENS
from service.trust import WARN_MIN_TOKENS, WARN_UNKNOWN_SHARE

# Comma-separated in the environment ("cuda,cpu"), not JSON: NoDecode hands the raw string to the validator.
CsvList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SENTIMENT_", extra="ignore", frozen=True)

    model_root: Path = Field(DEFAULT_MODEL_ROOT, description="an artifact directory, or a folder of them")
    default_model: str | None = Field(
        None, description="model used when a request names none (default: imdb-lstm when served, else the first by name)"
    )
    providers: CsvList = Field(
        default_factory=list,
        description="execution providers in priority order, e.g. cuda,cpu; empty: CUDA when onnxruntime offers it, else CPU",
    )
    # One thread per call by default: a recurrent step is a small matmul that threads barely speed up, and the
    # event loop (HTTP parsing, tokenizing) needs a core of its own. 0 lets onnxruntime use every core.
    intra_op_threads: int = Field(1, ge=0, description="onnxruntime threads per operator (0: one per core)")
    inter_op_threads: int = Field(1, ge=0)
    # A diagnostics call scores one text, so it cannot batch: it is latency-bound, and a second thread halves its
    # matrix products (the gate read-out, the prefix readings). Measured on a 263-token review: 6.8 -> 5.0 ms.
    diagnostics_threads: int = Field(
        2, ge=0, description="onnxruntime threads per operator of a diagnostics call (0: one per core)"
    )
    # Processes behind the one port (service/workers.py); each has its own sessions and batchers. None: one per
    # usable core (affinity and cgroup quota), since one Python process caps at about one core of HTTP work.
    workers: int | None = Field(None, ge=1, le=64, description="worker processes (default: one per usable core)")
    max_text_chars: int = Field(
        20_000,
        gt=0,
        description="longer texts get 413 (tokens past the model's max are truncated, this only bounds the work per request)",
    )
    max_batch_items: int = Field(64, gt=0, description="items per batch request, and per micro-batched onnxruntime call")
    max_batch_tokens: int = Field(CALL_TOKENS, gt=0, description="padded tokens (items x longest) per onnxruntime call")
    max_wait_ms: float = Field(0.0, ge=0, le=1000, description="how long the first queued text waits for company")
    queue_size: int = Field(1024, gt=0, description="texts waiting for the model; past it requests get 503")
    max_body_bytes: int = Field(4_000_000, gt=0, description="request bodies over this get 413 before parsing")
    # What a client can make the server hold before the app judges its request (service/http_limits.py). Together
    # they bound what clients without a valid key can cost: heads are capped and time out, bodies of keyless
    # requests are never read, and all buffered bodies share one budget.
    max_header_bytes: int = Field(
        16_384, ge=1024, description="request line + headers; past it 431 and the connection is closed (h11's cap too)"
    )
    max_headers: int = Field(100, gt=0, description="header lines per request; past it 431")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a request head not complete this long after the connection (or its first byte) gets 408 and is closed",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a request body not complete this long after its head: "
        "the connection is closed (4 MB at 1 Mbit/s takes 32 s)",
    )
    keep_alive_s: float = Field(5.0, gt=0, description="idle keep-alive connections are closed after this")
    fast_lane: bool = Field(
        True, description="answer well-formed POST /v1/sentiment requests in one ASGI layer (service/fast_lane.py)"
    )
    max_buffered_body_bytes: int = Field(
        32_000_000, gt=0, description="request bodies buffered at once, all connections together; past it 503"
    )
    max_hidden_values: int = Field(65_536, gt=0, description="cap on raw hidden-state numbers per diagnostics response")
    max_attribution_texts: int = Field(
        4, gt=0, description="texts in occlusion attribution at once (each costs T model rows of T tokens); past it 503"
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with 503")
    # How far an answer can be trusted (service/trust.py): every result carries unknown_share and warnings.
    warn_unknown_share: float = Field(
        WARN_UNKNOWN_SHARE, ge=0, le=1, description="warning mostly_unknown_tokens at or above this share of [UNK] tokens"
    )
    warn_min_tokens: int = Field(WARN_MIN_TOKENS, ge=0, description="warning very_short below this many tokens")
    abstain_unknown_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="label null (abstained: mostly_unknown_tokens) at or above this share of [UNK]; unset: never",
    )
    api_keys: CsvList = Field(default_factory=list, description="when set, /v1/* needs X-API-Key or a Bearer token")
    cors_origins: CsvList = Field(default_factory=list)

    @field_validator("providers", "api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_csv(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _empty_is_default(cls, value):
        return None if isinstance(value, str) and not value.strip() else value  # compose's SENTIMENT_WORKERS=""

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, keys: list[str]) -> list[str]:
        # A field validator, so the error names SENTIMENT_API_KEYS (a model validator's error has no field).
        if any(len(key) < 8 for key in keys):
            raise ValueError("every key needs at least 8 characters")
        return keys

    @model_validator(mode="after")
    def _check_body_budget(self):
        if self.max_buffered_body_bytes < self.max_body_bytes:
            raise ValueError(
                f"SENTIMENT_MAX_BUFFERED_BODY_BYTES ({self.max_buffered_body_bytes}) is below "
                f"SENTIMENT_MAX_BODY_BYTES ({self.max_body_bytes}): a body at the limit could never be "
                f"accepted"
            )
        return self
