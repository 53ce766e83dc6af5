"""What the foreign-protocol routes (Open Inference Protocol v2 in `v2.py`, Text Embeddings Inference in `tei.py`)
share: a route class that answers errors in the protocol's own shape instead of the service's, and the scoring step,
which is the very path /v1/sentiment uses (tokenize, then the model's micro-batcher), so every interface scores alike.

The rest of the service keeps `{"error": {"code", "message"}}`; only routes built with `protocol_route` differ.
Errors raised before a route is matched (404 for an unknown path, 405, the body-size 413) keep the service's shape.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from service.errors import ApiError, validation_message
from service.routes import ServiceState
from service.routes.sentiment import _score
from service.runtime import ModelRuntime
from service.tokenization import Encoded, Truncation

# (status, code, message, headers) -> the protocol's error response
ErrorRenderer = Callable[[int, str, str, dict[str, str] | None], JSONResponse]


def protocol_route(render: ErrorRenderer, validation_status: int = 422) -> type[APIRoute]:
    """An APIRoute class whose errors (ours, the API-key check's and request validation's) are drawn by `render`.

    FastAPI resolves dependencies and validates the body inside the route's handler, so wrapping the handler catches
    all of them; exception handlers would be app-wide and change every other route too."""

    class ProtocolRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def run(request: Request):
                try:
                    return await handler(request)
                except ApiError as exc:
                    return render(exc.status, exc.code, exc.message, exc.headers)
                except RequestValidationError as exc:
                    code, message = validation_message(exc)
                    return render(validation_status, code, message, None)

            return run

    return ProtocolRoute


def check_texts(state: ServiceState, texts: list[str], where: Callable[[int], str]) -> None:
    """The limits /v1/sentiment/batch applies: items per request and characters per text (both 413)."""
    limit = state.settings.max_batch_items
    if len(texts) > limit:
        raise ApiError(413, "batch_too_large", f"{len(texts)} texts; the limit is {limit} per request")
    chars = state.settings.max_text_chars
    for i, text in enumerate(texts):
        if len(text) > chars:
            raise ApiError(413, "text_too_large", f"{where(i)} has {len(text)} characters; the limit is {chars}")


async def score(request: Request, state: ServiceState, rt: ModelRuntime, texts: list[str],
                where: Callable[[int], str], truncation: Truncation | None = None,
                encoded: list[Encoded] | None = None) -> tuple[list[Encoded], np.ndarray]:
    """Tokenize (unless already done) and score through the model's micro-batcher: (encodings, probabilities [N, labels]).

    The model (`rt`) must have been resolved in the same step, with no await between: a hot reload swaps the model
    and its batcher together, and this keeps a request on the version it started on."""
    if encoded is None:
        encoded = rt.encode(texts, truncation)
    for i, enc in enumerate(encoded):
        if enc.num_tokens == 0:
            raise ApiError(422, "no_tokens", f"{where(i)} has nothing to score after cleaning (only markup or spaces?)")
    probs = await _score(request, state, rt, encoded)
    for enc, row in zip(encoded, probs):  # the drift signals, as for /v1/sentiment
        state.metrics.observe_text(rt.name, float(row[rt.positive]), float(np.mean(enc.ids == rt.tokenizer.unk_id)))
    return encoded, probs
