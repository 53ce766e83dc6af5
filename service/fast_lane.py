"""The express lane for the hottest request, `POST /v1/sentiment` with a well-formed JSON body: one ASGI layer that
reads, validates, scores and answers it, in front of the full middleware stack and FastAPI's routing.

Why: for a short review the ten ASGI layers (security headers, metrics, error catching, body limits, Starlette's
and FastAPI's own, routing, dependency solving, `json.loads`, validation) were most of the event loop's time per
request (py-spy under wrk); the model's work is a fraction of it. Here each of those concerns costs a few lines.

What it takes is narrow, and everything else goes down the normal stack untouched, so every error keeps its exact
status, code and message: a request qualifies when it is a POST to /v1/sentiment with `Content-Type:
application/json`, a declared Content-Length within `COUNTED_JSON_BYTES` and the body limit, no `Origin` header
(CORS is the stack's), a valid API key when keys are configured (a missing or wrong one gets the stack's 401, its
body unread), tracing off, and its body arrives and validates as a `SentimentRequest`. A body that does not
validate is replayed to the stack, which answers its 422. Once validated, the request is the route's own
(`service.routes.sentiment.score_one`): the scoring core's errors answer in the one error shape with the status
`service.errors` assigns, an unexpected one is logged and is a 500, the security headers are those of
`SecurityHeadersMiddleware`, and the request is counted in the same metrics.
"""

from __future__ import annotations

import logging
import time

import orjson
from pydantic import ValidationError
from starlette.datastructures import Headers

from service import exceptions as ex
from service.auth import VERDICT, key_verdict
from service.errors import INTERNAL_ERROR, ApiError, as_api_error, error_body, replaying
from service.http_limits import BodyBudget
from service.routes.sentiment import COUNTED_JSON_BYTES, json_content_type
from service.schemas import SentimentRequest
from service.security_headers import PAGE_CSP, security_headers

log = logging.getLogger("sentiment.fast_lane")
PATH = "/v1/sentiment"
_HEADERS = [(b"content-type", b"application/json"), *security_headers(PAGE_CSP)]


class FastLane:
    def __init__(self, app, state, score_one, max_bytes: int, budget: BodyBudget):
        self.app, self.state, self.score_one, self.budget = app, state, score_one, budget
        self.max_bytes = min(max_bytes, COUNTED_JSON_BYTES)

    def _qualifies(self, scope) -> bool:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            return False
        length = json = False
        for name, value in scope["headers"]:
            if name == b"content-type":
                json = json_content_type(value)
            elif name == b"content-length":
                length = value.isdigit() and int(value) <= self.max_bytes
            elif name == b"origin" or name == b"transfer-encoding":
                return False
        if not (json and length):
            return False
        keys = self.state.settings.api_keys
        if not keys:
            return True
        scope[VERDICT] = key_verdict(Headers(scope=scope), keys)  # kept for the stack: each key is compared once
        return scope[VERDICT] == "ok"  # a missing or wrong key: the stack's 401

    async def __call__(self, scope, receive, send):
        if not self._qualifies(scope):
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        message = await receive()
        if message["type"] != "http.request" or message.get("more_body", False):
            return await self.app(scope, replaying(message, receive), send)
        try:
            request = SentimentRequest.model_validate_json(message["body"])
        except ValidationError:  # the stack answers the 422 (its body limit counts the bytes then)
            return await self.app(scope, replaying(message, receive), send)
        held = len(message["body"])
        if not self.budget.take(held):  # the stack's body limit answers the 503
            return await self.app(scope, replaying(message, receive), send)
        try:
            await self._answer(request, receive, send, start)
        finally:
            self.budget.give_back(held)

    async def _answer(self, request: SentimentRequest, receive, send, start: float) -> None:
        status, headers = 200, None
        try:
            body = orjson.dumps(await self.score_one(self.state, request, receive))
        except (ex.ServiceError, ApiError) as exc:
            err = as_api_error(exc, self.state.settings.retry_after_s) if isinstance(exc, ex.ServiceError) else exc
            status, body, headers = err.status, orjson.dumps(error_body(err.code, err.message)), err.headers
        except Exception:
            log.exception("unhandled error on POST %s", PATH)
            status, body = 500, orjson.dumps(error_body(*INTERNAL_ERROR))
        out = [*_HEADERS, (b"content-length", str(len(body)).encode())]
        if headers:
            out += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        try:
            await send({"type": "http.response.start", "status": status, "headers": out})
            await send({"type": "http.response.body", "body": body})
        finally:  # counted like MetricsMiddleware counts, even if sending failed
            self.state.metrics.observe_request(PATH, "POST", status, time.perf_counter() - start)
