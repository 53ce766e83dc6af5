"""POST /v1/sentiment and /v1/sentiment/batch: limits, tokenization (in worker threads, never on the event loop),
then plain scoring through the micro-batcher or, when asked, the diagnostics graph in a worker thread (so plain
scoring never pays for diagnostics).

Both paths are bounded by `queue_size`: past it a request gets 503 at once instead of waiting in an unbounded line.
A client that disconnects while its texts wait for the model takes them out of the queue: nobody would read the
result, and under overload abandoned requests would otherwise hold slots that live clients need.
"""

from __future__ import annotations

import asyncio
import re

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute

from service.batching import BatcherStopped, QueueFull
from service.errors import ApiError
from service.routes import ServiceState, State, require_api_key
from service.runtime import ModelRuntime, NoTokensError
from service.schemas import BatchRequest, BatchResponse, ErrorResponse, SentimentRequest, SentimentResponse
from service.tokenization import Encoded

ERRORS = {status: {"model": ErrorResponse} for status in (401, 404, 413, 422, 500, 503)}
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


router = APIRouter(prefix="/v1", tags=["sentiment"], dependencies=[Depends(require_api_key)], responses=ERRORS,
                   route_class=CountedJsonRoute)


def _check_length(state: ServiceState, text: str, where: str = "text") -> None:
    limit = state.settings.max_text_chars
    if len(text) > limit:
        raise ApiError(413, "text_too_large", f"{where} has {len(text)} characters; the limit is {limit}")


async def _encode(state: ServiceState, rt: ModelRuntime, texts: list[str], truncate, where: list[str]) -> list[Encoded]:
    """Tokenized in the state's tokenizer threads (see ServiceState.tokenizer_pool), off the event loop."""
    loop = asyncio.get_running_loop()
    encoded = await loop.run_in_executor(state.tokenizer_pool, rt.encode, texts, truncate)
    for enc, name in zip(encoded, where):
        if enc.num_tokens == 0:
            raise ApiError(422, "no_tokens", f"{name} has nothing to score after cleaning (only markup or spaces?)")
    return encoded


async def _client_gone(request: Request) -> None:
    """Returns when the client closes its connection. The body is already read, so the server's next message is
    `http.disconnect` (uvicorn sends it when the connection drops, or once the response is complete)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(request: Request, work):
    """`work`'s result, or 499 if the client left first. Cancelling it gives its queue slots back (see
    MicroBatcher.submit) or stops diagnostics before their next text (see _diagnose_each)."""
    gone = asyncio.ensure_future(_client_gone(request))
    await asyncio.sleep(0)  # a connection already closed is noticed here (one step), before any work starts
    if gone.done():
        work.close()
        raise ApiError(499, "client_closed_request", "the client closed the connection before its work started")
    work = asyncio.ensure_future(work)
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # result, client gone or this request cancelled: stop the other task and let it clean up first
        work.cancel()
        gone.cancel()
        await asyncio.gather(work, gone, return_exceptions=True)
    if work.cancelled():
        # Nobody reads this answer; it is there for the metrics (nginx's "client closed request").
        raise ApiError(499, "client_closed_request", "the client closed the connection before its result was ready")
    return work.result()


async def _score(request: Request, state: ServiceState, rt: ModelRuntime, encoded: list[Encoded]) -> np.ndarray:
    try:
        return await _unless_gone(request, state.batcher_for(rt).submit(encoded))
    except QueueFull as exc:
        raise ApiError(503, "overloaded", f"too many texts waiting ({exc}); retry shortly", state.retry_after()) from exc
    except BatcherStopped as exc:
        raise ApiError(503, "not_ready", str(exc), state.retry_after()) from exc
    except NoTokensError as exc:
        raise ApiError(422, "no_tokens", str(exc)) from exc


def _result(state: ServiceState, rt: ModelRuntime, enc: Encoded, probs: np.ndarray, report: dict | None) -> dict:
    out = rt.result(enc, probs)
    out["model"] = {"name": rt.name, "version": rt.version}
    if report is not None:
        out["diagnostics"] = report
    unknown = float(np.mean(enc.ids == rt.tokenizer.unk_id))
    state.metrics.observe_text(rt.name, out["score"], unknown)
    return out


def _runs_occlusion(rt: ModelRuntime, attribution: bool) -> bool:
    # As ModelRuntime.diagnose: occlusion when asked for, or in place of exact contributions the graph lacks.
    return attribution or "contribution" not in rt.diagnostic_outputs


async def _diagnose_each(state: ServiceState, rt: ModelRuntime, texts: list[str], encoded: list[Encoded],
                         include_hidden: bool, attribution: bool) -> list[tuple[np.ndarray, dict]]:
    """One worker-thread call per text, so a cancelled request (client gone) stops before its next text. A text
    already in a thread cannot be interrupted: cancelling waits for it, so the counters in _diagnose never
    undercount the work really running."""
    cap, out = state.settings.max_hidden_values, []
    loop = asyncio.get_running_loop()
    for text, enc in zip(texts, encoded):
        call = loop.run_in_executor(None, rt.diagnose, text, enc, include_hidden, attribution, cap)
        try:
            out.append(await asyncio.shield(call))
        except asyncio.CancelledError:
            await asyncio.wait([call])
            raise
    return out


async def _diagnose(request: Request, state: ServiceState, rt: ModelRuntime, texts: list[str],
                    encoded: list[Encoded], include_hidden: bool, attribution: bool) -> list[tuple[np.ndarray, dict]]:
    """The diagnostics graph in worker threads, bounded like the batcher's queue: at most `queue_size` texts in
    diagnostics and `max_attribution_texts` in occlusion attribution (T model rows of T tokens each) at once, past
    which requests get 503 instead of an ever longer wait; stopped when the client leaves (499)."""
    s = state.settings
    if state.diagnosing and state.diagnosing + len(texts) > s.queue_size:  # as MicroBatcher.submit
        raise ApiError(503, "overloaded", f"too many diagnostics texts in progress ({state.diagnosing}, queue size "
                                          f"{s.queue_size}); retry shortly", state.retry_after())
    occluding = len(texts) if _runs_occlusion(rt, attribution) else 0
    if occluding and state.attributing and state.attributing + occluding > s.max_attribution_texts:
        raise ApiError(503, "overloaded", f"too many texts in attribution ({state.attributing}, at most "
                                          f"{s.max_attribution_texts} at once); retry shortly", state.retry_after())
    state.diagnosing += len(texts)
    state.attributing += occluding
    try:
        return await _unless_gone(request, _diagnose_each(state, rt, texts, encoded, include_hidden, attribution))
    finally:
        state.diagnosing -= len(texts)
        state.attributing -= occluding


async def _run(request: Request, state: ServiceState, rt: ModelRuntime, texts: list[str], encoded: list[Encoded],
               diagnostics: bool, include_hidden: bool = False, attribution: bool = False) -> list[dict]:
    if diagnostics:
        scored = await _diagnose(request, state, rt, texts, encoded, include_hidden, attribution)
        state.metrics.tokens.labels(rt.name, rt.provider).inc(sum(e.num_tokens for e in encoded))
        return [_result(state, rt, enc, probs, report) for enc, (probs, report) in zip(encoded, scored)]
    probs = await _score(request, state, rt, encoded)
    return [_result(state, rt, enc, row, None) for enc, row in zip(encoded, probs)]


@router.post("/sentiment", response_model=SentimentResponse, response_model_exclude_none=True,
             summary="Score one review")
async def sentiment(body: SentimentRequest, state: State, request: Request) -> dict:
    rt = state.require_ready().get(body.model)
    _check_length(state, body.text)
    encoded = await _encode(state, rt, [body.text], body.truncate, ["text"])
    # include_hidden and attribution are parts of the diagnostics report, so asking for them asks for it.
    diagnostics = body.diagnostics or body.include_hidden or body.attribution
    results = await _run(request, state, rt, [body.text], encoded, diagnostics, body.include_hidden, body.attribution)
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


@router.post("/sentiment/batch", response_model=BatchResponse, response_model_exclude_none=True,
             summary="Score many reviews together", dependencies=[Depends(_count_items)])
async def sentiment_batch(body: BatchRequest, state: State, request: Request) -> dict:
    rt = state.require_ready().get(body.model)
    limit = state.settings.max_batch_items
    if len(body.items) > limit:
        raise ApiError(413, "batch_too_large", f"{len(body.items)} items; the limit is {limit} per request")
    texts = [item.text for item in body.items]
    for i, text in enumerate(texts):
        _check_length(state, text, f"items[{i}].text")
    encoded = await _encode(state, rt, texts, body.truncate, [f"items[{i}].text" for i in range(len(texts))])
    results = await _run(request, state, rt, texts, encoded, body.diagnostics)
    for item, result in zip(body.items, results):
        result["id"] = item.id
    return {"results": results}
