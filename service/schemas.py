"""Request and response bodies of the HTTP API (they are also its OpenAPI docs at /docs).

Types are strict (`"diagnostics": "yes"` is a 422, not a silent True) and unknown fields are rejected, so a typo
like `"diagnostic": true` is reported instead of ignored. Size limits that come from settings (text length, batch
items) are checked in the routes, because they answer 413 rather than 422.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from service.contract import Truncation as Truncate


def _unicode(text: str) -> str:
    # JSON can carry lone surrogates ("\ud800"), which are not Unicode text: neither the tokenizer nor the UTF-8
    # response (an echoed id) can take them.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PydanticCustomError(
            "invalid_text", "not valid Unicode (a lone surrogate at character {position})", {"position": exc.start}
        ) from None
    return text


# Invisible format characters (category Cf: zero-width space, BOM, direction marks) count as blank, like whitespace.
# Cf exists only in planes 0, 1 and 14; one regex search runs in C, where a per-character Python check took 270 ms of
# the event loop for a batch of 64 hostile texts (19,999 zero-width spaces and a letter).
_FORMAT_CHARS = "".join(chr(c) for c in [*range(0x20000), *range(0xE0000, 0xE1000)] if unicodedata.category(chr(c)) == "Cf")
_VISIBLE = re.compile(f"[^\\s{re.escape(_FORMAT_CHARS)}]")


def _not_blank(text: str) -> str:
    if not _VISIBLE.search(text):
        raise PydanticCustomError("empty_text", "text is empty or only whitespace or invisible characters")
    return text


def text_problem(text: str) -> tuple[str, str] | None:
    """(code, message) of what makes `text` unscorable (the checks `Text` runs), or None: for batch items, whose
    problems are answered per item rather than failing the request."""
    try:
        _not_blank(_unicode(text))
    except PydanticCustomError as exc:
        return exc.type, exc.message()
    return None


Unicode = Annotated[str, AfterValidator(_unicode)]
Text = Annotated[str, AfterValidator(_unicode), AfterValidator(_not_blank)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SentimentRequest(_Request):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "A wonderful, moving film. The cast is superb.", "diagnostics": False}]}
    )

    text: Text = Field(description="review text; HTML line breaks and entities are cleaned")
    model: str | None = Field(None, description="model name from /v1/models (default: the service's default model)")
    diagnostics: bool = Field(False, description="add the per-token report of the recurrent state")
    include_hidden: bool = Field(False, description="with diagnostics: raw hidden vectors (size-capped); implies it")
    attribution: bool = Field(False, description="with diagnostics: occlusion importance per token; implies it")
    truncate: Truncate | None = Field(
        None, description="which tokens to keep past the model's max (default: the model's own policy)"
    )


class BatchItem(_Request):
    id: Unicode | int | None = Field(None, description="echoed back with the item's result, as given (string or integer)")
    text: str = Field(description="an empty, blank or over-long text gets an `error` in its result; the other items are scored")


class BatchRequest(_Request):
    items: list[BatchItem] = Field(min_length=1, description="scored together; results come back in this order")
    model: str | None = None
    diagnostics: bool = False
    truncate: Truncate | None = None


class ModelRef(BaseModel):
    name: str
    version: str


class Probabilities(BaseModel):
    negative: float
    positive: float


class _Report(BaseModel):
    """A part of the diagnostics report. Nullable fields stay in the response as null even though the routes drop
    unset values (`response_model_exclude_none`): a null running_score means "no such reading for this model",
    which clients must be able to tell from "not asked for". Unknown keys pass through."""

    model_config = ConfigDict(extra="allow")

    # No return annotation: with one, pydantic would document the serialized report as that type (Any), not as
    # the fields below.
    @model_serializer(mode="wrap")
    def _keep_nulls(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo):
        out = handler(self)
        if info.exclude_none and isinstance(out, dict):  # runs once per token: keep it cheap
            for name in self.model_fields_set:
                if name not in out and getattr(self, name) is None:
                    out[name] = None  # (after the others: JSON objects are unordered)
        return out


class TokenReport(_Report):
    index: int = Field(description="position among the tokens scored")
    text: str = Field(description="the token's span of the submitted text")
    start: int = Field(description="character offset of the span in the submitted text")
    end: int
    id: int = Field(description="vocabulary id")
    token: str | None = Field(description="the vocabulary entry")
    unknown: bool = Field(description="the token is [UNK] (not in the vocabulary)")
    running_score: float | None = Field(
        description="P(positive) of the text cut after this token; null for bidirectional models (no such reading exists)"
    )
    running_logodds: float | None = Field(description="the same in log-odds")
    score_delta: float | None = Field(description="running_score minus the previous one (0.5 before the first)")
    contribution: float | None = Field(
        description="signed share of the final log-odds (see summary.contribution_method); null when not computed"
    )
    attribution: float | None = Field(None, description="occlusion importance in log-odds (asked for with attribution)")


class TopToken(_Report):
    index: int
    text: str
    contribution: float


class DiagnosticsSummary(_Report):
    final_score: float = Field(description="P(positive) of the whole text (= score)")
    final_logodds: float
    running_score_method: str | None = Field(
        description='"exact"; "approximate" for int8 models (a prefix scored alone can differ by ~0.005); null when '
        "running_score is not available"
    )
    running_score_note: str | None = None
    contribution_method: str | None = Field(description='e.g. "state_change", "state_change+ngram", "occlusion"')
    contribution_baseline: float | None = Field(None, description="exact models: baseline + sum of contributions = final_logodds")
    contribution_note: str | None = None
    attribution_note: str | None = None
    top_positive: list[TopToken] = Field(description="tokens pushing most towards positive")
    top_negative: list[TopToken]
    unknown_share: float = Field(description="share of tokens that are [UNK]")
    gate_mean: dict[str, float] = Field(description="per gate: mean activation over the review, layers and units")
    gate_saturation: dict[str, float] = Field(description="per gate: share of activations < 0.1 or > 0.9")
    mean_forget_gate: float | None = None
    mean_update_gate: float | None = None


class LayerReport(_Report):
    layer: int
    direction: Literal["forward", "backward"]
    hidden_norm: list[float] = Field(description="per token: ||h_t||")
    delta_norm: list[float] = Field(description="per token: ||h_t - h_prev|| in this direction's reading order")
    gate_mean: dict[str, list[float]] = Field(description="per gate, per token: mean activation over units")
    gate_saturation: dict[str, list[float]]


class HiddenBlock(_Report):
    layer: int
    direction: Literal["forward", "backward"]
    units: list[int] = Field(description="which hidden units are listed (those that vary most when capped)")
    size: int = Field(description="hidden units in this layer and direction")
    values: list[list[float]] = Field(description="per token, the listed units' values")


class HiddenReport(_Report):
    layers: list[HiddenBlock]
    capped: bool
    max_values: int


class DiagnosticsReport(_Report):
    """The per-token report of the recurrent state (`"diagnostics": true`; definitions in service/diagnostics.py
    and the README's Diagnostics). Lists under `layers` are aligned with `tokens`."""

    cell: str | None = Field(description="rnn, lstm or gru")
    gates: list[str] = Field(description="the gates reported under layers[].gate_mean and gate_saturation")
    tokens: list[TokenReport]
    layers: list[LayerReport]
    summary: DiagnosticsSummary
    hidden: HiddenReport | None = Field(None, description="raw hidden vectors (include_hidden), size-capped")


class SentimentResponse(BaseModel):
    label: Literal["negative", "positive"] | None = Field(description="null when the service abstains (see abstained)")
    score: float = Field(description="P(positive), calibrated")
    probabilities: Probabilities
    model: ModelRef
    num_tokens: int = Field(description="tokens scored (after truncation)")
    truncated: bool = Field(description="the text had more tokens than the model reads; some were dropped")
    unknown_share: float = Field(description="share of the scored tokens that are [UNK] (not in the vocabulary)")
    warnings: list[Literal["mostly_unknown_tokens", "very_short", "truncated"]] = Field(
        description="reasons to trust this answer less (thresholds in the settings); empty when none"
    )
    abstained: Literal["mostly_unknown_tokens"] | None = Field(
        None, description="why label is null (only with SENTIMENT_ABSTAIN_UNKNOWN_SHARE)"
    )
    diagnostics: DiagnosticsReport | None = Field(None, description="per-token report (see the README's Diagnostics)")


class ErrorDetail(BaseModel):
    code: str
    message: str


class BatchResult(BaseModel):
    """One item's result: the fields of a single response, or only `error` (and the id) for an item that could not
    be scored."""

    id: str | int | None = None
    label: Literal["negative", "positive"] | None = None
    score: float | None = None
    probabilities: Probabilities | None = None
    model: ModelRef | None = None
    num_tokens: int | None = None
    truncated: bool | None = None
    unknown_share: float | None = None
    warnings: list[Literal["mostly_unknown_tokens", "very_short", "truncated"]] | None = None
    abstained: Literal["mostly_unknown_tokens"] | None = None
    diagnostics: DiagnosticsReport | None = None
    error: ErrorDetail | None = Field(
        None, description="why this item was not scored (empty_text, invalid_text, text_too_large, no_tokens)"
    )


class BatchResponse(BaseModel):
    results: list[BatchResult]


class ErrorResponse(BaseModel):
    error: ErrorDetail
