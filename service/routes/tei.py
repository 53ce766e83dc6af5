"""Text Embeddings Inference's classification API, so TEI clients (and `huggingface_hub.InferenceClient`) score reviews.

    POST /predict   {"inputs": "text" | ["a", "b"] | [["a"], ["b"]], "truncate": bool, "truncation_direction":
                     "right" | "left", "raw_scores": bool}
    POST /          the same (TEI answers there too: it is what a client given a bare URL posts to)

A single string answers a list of `{"label", "score"}`, highest score first; a list answers one such list per text.
`InferenceClient(base_url).text_classification(text)` (huggingface_hub 2.4) posts `{"inputs": text, "parameters":
{"top_k", "function_to_apply"}}` to `/` and reads element [0] of the answer: with `parameters` present the answer is
the Inference API's list per text even for one text, and the parameters are honoured (TEI ignores them, answers the
flat list, and that client then returns only the top prediction).

Where this differs from TEI (the README's "TEI" section says the same for users):
- A flat list of texts is a batch. TEI reads `["a"]` as one text, `["a", "b"]` as a sentence pair and 3+ as an error;
  a sentiment model has no pairs, so pairs (`[["a", "b"]]`) are refused with 422.
- `truncate` left out applies the model's own policy (head+tail, as in training), like TEI's `--auto-truncate`;
  `truncate: true` keeps the head (`right`) or the tail (`left`); `truncate: false` refuses longer texts (413).
- `raw_scores` returns the natural log of the calibrated probabilities (the temperature-scaled logits up to one
  constant per text): the served graph outputs probabilities, not logits.
- Errors are TEI's `{"error", "error_type"}` with this service's statuses: an overloaded queue is 503 (TEI: 429).
- The default model answers (TEI serves one model); the API key applies as on /v1/* when keys are configured.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from service.errors import ApiError
from service.exceptions import TooManyTokens
from service.routes import State, require_api_key
from service.routes.protocol import check_texts, protocol_route, score
from service.schemas import ErrorResponse, Text
from service.tokenization import Truncation

# TEI's error types for our error codes; the status code stays this service's.
_TYPES = {
    "overloaded": "Overloaded",
    "not_ready": "Unhealthy",
    "missing_api_key": "Unauthorized",
    "invalid_api_key": "Unauthorized",
    "client_closed_request": "Backend",
}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None) -> JSONResponse:
    kind = _TYPES.get(code, "Validation" if status in (400, 413, 422) else "Backend")
    return JSONResponse({"error": message, "error_type": kind}, status_code=status, headers=headers)


class TeiError(BaseModel):
    error: str
    error_type: str = Field(description="Validation, Overloaded, Unhealthy, Unauthorized or Backend")


# 401 and the body-size 413 come from the service's middleware, before this route: its own error shape.
ERRORS: dict[int | str, dict[str, Any]] = {
    **{status: {"model": TeiError} for status in (422, 499, 503)},
    **{status: {"model": TeiError | ErrorResponse} for status in (401, 413)},
}
router = APIRouter(
    tags=["text embeddings inference"],
    route_class=protocol_route(_error, 422),
    dependencies=[Depends(require_api_key)],
    responses=ERRORS,
)


class HfParameters(BaseModel):
    """What `huggingface_hub.InferenceClient.text_classification` adds (TEI itself ignores it)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    top_k: int | None = Field(None, ge=1, description="keep the k highest scores")
    function_to_apply: Literal["softmax", "none"] | None = Field(None, description="none: as raw_scores")


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"inputs": "A wonderful, moving film."}, {"inputs": ["Loved it.", "Hated it."]}]},
    )

    inputs: Text | list[Text | list[Text]] = Field(description="a text, or a batch: [text, ...] or [[text], ...]")
    truncate: bool | None = Field(None, description="left out: the model's own policy; false: longer texts are a 413")
    truncation_direction: Literal["right", "left", "Right", "Left"] = Field(
        "right", description="with truncate: true, right keeps the head and left the tail"
    )
    raw_scores: bool = Field(False, description="log-probabilities instead of probabilities")
    parameters: HfParameters | None = None


class Prediction(BaseModel):
    score: float
    label: str


def _texts(inputs: str | list) -> tuple[list[str], bool]:
    """(texts, whether the answer is a batch)."""
    if isinstance(inputs, str):
        return [inputs], False
    if not inputs:
        raise ApiError(422, "empty_batch", "inputs is an empty list")
    texts = []
    for i, item in enumerate(inputs):
        if isinstance(item, list):
            if len(item) != 1:  # TEI's [text_a, text_b] is a sentence pair, for cross-encoders
                raise ApiError(
                    422,
                    "unsupported_input",
                    f"inputs[{i}] has {len(item)} texts: sentence pairs are not supported (this model classifies one text)",
                )
            item = item[0]
        texts.append(item)
    return texts, True


@router.post(
    "/predict", summary="Classify texts (Text Embeddings Inference API)", response_model=list[Prediction] | list[list[Prediction]]
)
@router.post("/", summary="Classify texts (TEI answers its predict route at / too)", include_in_schema=False)
async def predict(body: PredictRequest, state: State, request: Request) -> list:
    texts, batch = _texts(body.inputs)
    where = (lambda i: f"inputs[{i}]") if batch else (lambda i: "inputs")
    check_texts(state, texts, where)
    truncation: Truncation | None = None
    if body.truncate:
        truncation = "head" if body.truncation_direction.lower() == "right" else "tail"
    rt = state.model(None)
    encoded = await state.encode(rt, texts, truncation)
    if body.truncate is False:
        for i, enc in enumerate(encoded):
            if enc.truncated:
                raise TooManyTokens(
                    f"{where(i)} has {enc.total_tokens} tokens; this model reads at most "
                    f"{rt.tokenizer.max_tokens} (send truncate: true, or leave it out for the model's "
                    f"own policy)"
                )
    _, probs = await score(request, state, rt, texts, where, encoded=encoded)
    params = body.parameters or HfParameters()
    if body.raw_scores or params.function_to_apply == "none":
        probs = np.log(np.maximum(probs, np.finfo(np.float32).tiny))
    answers = []
    for row in probs:
        ranked = sorted(zip(rt.labels, row.tolist()), key=lambda pair: -pair[1])[: params.top_k]
        answers.append([{"score": s, "label": label} for label, s in ranked])
    # A request with `parameters` is in the Hugging Face Inference API's format (huggingface_hub sends it), whose
    # answer is a list per text even for one text; the client takes element [0]. TEI's flat list would leave it the
    # top prediction alone instead of the list its `text_classification` promises.
    return answers if batch or body.parameters is not None else answers[0]
