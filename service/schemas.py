"""Request and response bodies of the HTTP API (they are also its OpenAPI docs at /docs).

Types are strict (`"diagnostics": "yes"` is a 422, not a silent True) and unknown fields are rejected, so a typo
like `"diagnostic": true` is reported instead of ignored. Size limits that come from settings (text length, batch
items) are checked in the routes, because they answer 413 rather than 422.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from service.contract import Truncation as Truncate


def _unicode(text: str) -> str:
    # JSON can carry lone surrogates ("\ud800"), which are not Unicode text: neither the tokenizer nor the UTF-8
    # response (an echoed id) can take them.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PydanticCustomError("invalid_text", "not valid Unicode (a lone surrogate at character {position})",
                                  {"position": exc.start}) from None
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


Unicode = Annotated[str, AfterValidator(_unicode)]
Text = Annotated[str, AfterValidator(_unicode), AfterValidator(_not_blank)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SentimentRequest(_Request):
    model_config = ConfigDict(json_schema_extra={
        "examples": [{"text": "A wonderful, moving film. The cast is superb.", "diagnostics": False}]})

    text: Text = Field(description="review text; HTML line breaks and entities are cleaned")
    model: str | None = Field(None, description="model name from /v1/models (default: the service's default model)")
    diagnostics: bool = Field(False, description="add the per-token report of the recurrent state")
    include_hidden: bool = Field(False, description="with diagnostics: raw hidden vectors (size-capped); implies it")
    attribution: bool = Field(False, description="with diagnostics: occlusion importance per token; implies it")
    truncate: Truncate | None = Field(None, description="which tokens to keep past the model's max "
                                                         "(default: the model's own policy)")


class BatchItem(_Request):
    id: Unicode | None = Field(None, description="echoed back with the item's result")
    text: Text


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


class SentimentResponse(BaseModel):
    label: Literal["negative", "positive"]
    score: float = Field(description="P(positive), calibrated")
    probabilities: Probabilities
    model: ModelRef
    num_tokens: int = Field(description="tokens scored (after truncation)")
    truncated: bool = Field(description="the text had more tokens than the model reads; some were dropped")
    diagnostics: dict[str, Any] | None = Field(None, description="per-token report (see the README's Diagnostics)")


class BatchResult(SentimentResponse):
    id: str | None = None


class BatchResponse(BaseModel):
    results: list[BatchResult]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
