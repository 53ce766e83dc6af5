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
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ApiError, as_api_error, invalid_json, retry_after_s, validation_message
from service.exceptions import ServiceError
from service.routes import ServiceState
from service.routes.sentiment import client_gone
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
                except ServiceError as exc:
                    err = as_api_error(exc, retry_after_s(request))
                    return render(err.status, err.code, err.message, err.headers)
                except RequestValidationError as exc:
                    code, message = validation_message(exc)
                    return render(validation_status, code, message, None)
                except StarletteHTTPException as exc:  # a body FastAPI could not decode: malformed JSON too
                    if (problem := invalid_json(exc)) is None:
                        raise
                    return render(validation_status, "invalid_json", problem, None)

            return run

    return ProtocolRoute


def check_texts(state: ServiceState, texts: list[str], where: Callable[[int], str]) -> None:
    """The limits /v1/sentiment/batch applies: items per request and characters per text (both 413)."""
    state.check_texts(texts, where, "texts")


async def score(
    request: Request,
    state: ServiceState,
    rt: ModelRuntime,
    texts: list[str],
    where: Callable[[int], str],
    truncation: Truncation | None = None,
    encoded: list[Encoded] | None = None,
) -> tuple[list[Encoded], np.ndarray]:
    """Tokenize (unless already done) and score through the model's micro-batcher, as /v1/sentiment does:
    (encodings, probabilities [N, labels]). A hot reload while this waits keeps the request on the version `rt` is
    (ScoringCore.batcher_for)."""
    if encoded is None:
        encoded = await state.encode(rt, texts, truncation)
    return encoded, await state.score(rt, encoded, where, gone=client_gone(request.receive))
