"""POST /v1/sentiment and /v1/sentiment/batch: HTTP in, HTTP out. The scoring core (service/scoring.py) does the
work (limits, tokenization off the event loop, the micro-batcher, diagnostics, admission, cancellation); this module
translates requests into its calls, tells it when the client has left, and answers with orjson.

A batch answers per item: an item that cannot be scored gets `{"error": {"code", "message"}}` in its result and the
others are scored; only a malformed request (or an overload, an unknown model) fails the whole request.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from service.errors import ApiError
from service.routes import ServiceState, State, check_api_key, json_response, require_api_key
from service.schemas import BatchRequest, BatchResponse, ErrorResponse, SentimentRequest, SentimentResponse

ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorResponse} for status in (401, 404, 413, 422, 500, 503)}
COUNTED_JSON_BYTES = 65_536
_JSON_NEXT = re.compile(rb'["{\[,]')
_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"')  # unrolled and possessive: no backtracking
_LONGEST_STRING = 262_144  # bytes; a valid string is far shorter (20,000 characters, 6 bytes each when escaped)


def _json_objects(body: bytes) -> int | None:
    """The number of objects in a JSON body, counted without parsing it, or None if a string does not end within
    _LONGEST_STRING bytes (not JSON, or not a valid request: left to the parser and validation). A
    Python loop from token to token, run in a worker thread: it gives the GIL back between tokens, where json.loads
    holds it for the whole parse (~120 ms for a 4 MB body of 250,000 tiny items), so a thread alone would not spare
    the event loop. Linear: each step starts where the last one ended."""
    objects = i = 0
    search, string = _JSON_NEXT.search, _JSON_STRING.match
    while (token := search(body, i)) is not None:
        i = token.start()
        if body[i] == 0x22:  # '"': skip the whole string, whatever it holds
            if (s := string(body, i, i + _LONGEST_STRING)) is None:
                return None
            i = s.end()
            continue
        objects += body[i] == 0x7B  # '{'
        i += 1
    return objects


class CountedJsonRoute(APIRoute):
    """Bodies over COUNTED_JSON_BYTES have their objects counted in a worker thread before anything parses them:
    more than a batch may hold is a 413 at once. (Parsing in a thread would not help: json.loads holds the GIL.)"""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def count_then_handle(request: Request):
            body = await request.body()
            if len(body) > COUNTED_JSON_BYTES:
                limit = request.app.state.service.settings.max_batch_items
                objects = (await asyncio.to_thread(_json_objects, body)) or 0
                if objects - 1 > limit:
                    raise ApiError(413, "batch_too_large", f"about {objects - 1} items; the limit is {limit} per request")
            return await handler(request)

        return count_then_handle


def json_content_type(value: bytes) -> bool:
    """A Content-Type FastAPI parses as JSON, in its usual spelling (anything else takes FastAPI's own path); also
    the fast lane's test (service/fast_lane.py)."""
    value = value.lower()
    return value == b"application/json" or value.startswith(b"application/json;")


class FastJsonRoute(CountedJsonRoute):
    """The hot path of a route whose endpoint is `(body, state, request)`: a well-formed request (JSON content,
    a valid key, a body that validates) is validated once, straight from its bytes by pydantic-core, and handed to
    the endpoint. FastAPI's own request handling (dependency solving, `json.loads`, then validation of the Python
    objects) was a quarter of the server's event-loop time for short reviews (py-spy). Anything else - a missing
    or wrong key, another content type, a body that does not validate, an oversized one - takes FastAPI's path
    unchanged, so every error keeps its exact status, code and message."""

    def get_route_handler(self):
        standard = super().get_route_handler()
        model = self.body_field.field_info.annotation if self.body_field else None
        endpoint = self.endpoint
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or list(inspect.signature(endpoint).parameters) != [
            "body",
            "state",
            "request",
        ]:
            return standard

        async def handle(request: Request):
            body = await request.body()
            state = request.app.state.service
            if len(body) <= COUNTED_JSON_BYTES and json_content_type(request.headers.get("content-type", "").encode("latin-1")):
                check_api_key(request, state)  # first, as FastAPI runs the router's dependency before validation
                try:
                    parsed = model.model_validate_json(body)
                except ValidationError:
                    parsed = None
                if parsed is not None:
                    return await endpoint(parsed, state, request)
            return await standard(request)

        return handle


router = APIRouter(
    prefix="/v1", tags=["sentiment"], dependencies=[Depends(require_api_key)], responses=ERRORS, route_class=FastJsonRoute
)


def _check_length(state: ServiceState, text: str, where: str = "text") -> None:
    state.check_length(text, where)  # (the Ray Serve deployment's check too)


def client_gone(receive):
    """For the core: a coroutine function that returns when the client closes its connection. The body is already
    read, so the server's next message (from the request's ASGI `receive`) is `http.disconnect` (uvicorn sends it
    when the connection drops, or once the response is complete)."""

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return gone


def _text(i: int) -> str:
    return "text"


@router.post("/sentiment", response_model=SentimentResponse, summary="Score one review")
async def sentiment(body: SentimentRequest, state: State, request: Request) -> Response:
    return json_response(await score_one(state, body, request.receive))


async def score_one(state: ServiceState, body: SentimentRequest, receive) -> dict:
    """The answer to a validated /v1/sentiment request (also service/fast_lane.py's); `receive` is the request's
    ASGI receive, whose next message is the disconnect."""
    rt = state.model(body.model)
    state.check_length(body.text, "text")
    encoded = await state.encode(rt, [body.text], body.truncate)
    # include_hidden and attribution are parts of the diagnostics report, so asking for them asks for it.
    diagnostics = body.diagnostics or body.include_hidden or body.attribution
    results = await state.classify(
        rt,
        [body.text],
        encoded,
        _text,
        diagnostics=diagnostics,
        include_hidden=body.include_hidden,
        attribution=body.attribution,
        gone=client_gone(receive),
    )
    return results[0]


async def _count_items(request: Request, state: State) -> None:
    """413 for too many items, counted in the parsed JSON before the items are validated one by one (validating
    250,000 items took 1.19 s of the event loop before the 413). FastAPI has parsed the body already (Starlette
    keeps it) and resolves dependencies before validating it; a body that is not JSON is left to that validation."""
    try:
        body = await request.json()
    except ValueError:
        return
    items = body.get("items") if isinstance(body, dict) else None
    limit = state.settings.max_batch_items
    if isinstance(items, list) and len(items) > limit:
        raise ApiError(413, "batch_too_large", f"{len(items)} items; the limit is {limit} per request")


@router.post(
    "/sentiment/batch", response_model=BatchResponse, summary="Score many reviews together", dependencies=[Depends(_count_items)]
)
async def sentiment_batch(body: BatchRequest, state: State, request: Request) -> Response:
    rt = state.model(body.model)
    limit = state.settings.max_batch_items
    if len(body.items) > limit:
        raise ApiError(413, "batch_too_large", f"{len(body.items)} items; the limit is {limit} per request")
    results = await state.classify_items(
        rt,
        [item.text for item in body.items],
        lambda i: f"items[{i}].text",
        body.truncate,
        body.diagnostics,
        gone=client_gone(request.receive),
    )
    for item, result in zip(body.items, results):
        if item.id is not None:
            result["id"] = item.id
    return json_response({"results": results})
