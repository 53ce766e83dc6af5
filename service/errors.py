"""The one error shape, `{"error": {"code": str, "message": str}}`, and the handlers that make every failure use it:
our own `ApiError`, the scoring core's errors (service/exceptions.py, whose HTTP statuses are decided here and only
here: `STATUS`), FastAPI's validation errors (422), Starlette's HTTP errors (404/405) and, last, anything
unexpected (500, logged with its traceback by `CatchAllMiddleware` and never sent to the client)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import exceptions as ex
from service.auth import VERDICT, key_verdict
from service.http_limits import BodyBudget

log = logging.getLogger("sentiment.errors")

# Custom validation error types raised by the schemas; they become the error code as they are.
SCHEMA_CODES = {"empty_text", "invalid_text"}
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    503: "unavailable",
}


INTERNAL_ERROR = ("internal_error", "internal server error (logged on the server)")  # all a client learns of a bug


class ApiError(Exception):
    """An error the client can act on: its status, a stable code and a message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


# The core's errors as HTTP statuses; 503s also get Retry-After. First match wins (subclasses before their bases).
STATUS: dict[type[ex.ServiceError], int] = {
    ex.UnknownModel: 404,
    ex.NoTokens: 422,
    ex.TextTooLong: 413,
    ex.BatchTooLarge: 413,
    ex.TooManyTokens: 413,
    ex.Overloaded: 503,
    ex.NotReady: 503,
    ex.ClientGone: 499,
}


def as_api_error(exc: ex.ServiceError, retry_after_s: int) -> ApiError:
    status = next((s for kind, s in STATUS.items() if isinstance(exc, kind)), 500)
    headers = {"Retry-After": str(retry_after_s)} if status == 503 else None
    return ApiError(status, exc.code, exc.message, headers)


def retry_after_s(request: Request) -> int:
    state = getattr(request.app.state, "service", None)  # an app without the service state (Ray Serve's): 1 s
    return state.settings.retry_after_s if state is not None else 1


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def _location(loc) -> str:
    # ("body", "items", 3, "text") -> "items[3].text"; the "body" prefix says nothing to the client.
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def validation_message(exc: RequestValidationError) -> tuple[str, str]:
    errors = exc.errors()
    first = errors[0] if errors else {"type": "invalid", "loc": (), "msg": "invalid request"}
    if first["type"] == "json_invalid":
        return "invalid_json", f"request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
    code = first["type"] if first["type"] in SCHEMA_CODES else "invalid_request"
    parts = [f"{_location(e['loc'])}: {e['msg']}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return code, "; ".join(parts) + more


def _undecodable(cause: BaseException | None) -> str | None:
    """Why FastAPI could not decode a body, when it is a malformed-JSON case it reports as a plain 400: not UTF-8,
    nested deeper than the parser recurses, or a number over Python's 4,300-digit integer limit (a ValueError)."""
    if isinstance(cause, UnicodeDecodeError):
        return "not UTF-8"
    if isinstance(cause, RecursionError):
        return "nested too deeply"
    if isinstance(cause, ValueError):
        return "a number too long" if "digits" in str(cause) else "cannot be decoded"
    return None


def invalid_json(exc: StarletteHTTPException) -> str | None:
    """The invalid_json message for FastAPI's 400 on a body it could not decode, or None for any other HTTP error."""
    reason = _undecodable(exc.__cause__) if exc.status_code == 400 else None
    return f"request body is not valid JSON ({reason})" if reason else None


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(ex.ServiceError)
    async def _service_error(request: Request, exc: ex.ServiceError) -> JSONResponse:
        err = as_api_error(exc, retry_after_s(request))
        return error_response(err.status, err.code, err.message, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        code, message = validation_message(exc)
        return error_response(422, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI answers 400 when the body cannot even be decoded; to the client that is the same mistake as
        # malformed JSON, so it gets the same (documented) 422 and code.
        if message := invalid_json(exc):
            return error_response(422, "invalid_json", message)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))


class CatchAllMiddleware:
    """The one place an unexpected exception becomes the generic 500: logged here with its traceback, never sent.

    A middleware rather than an `Exception` handler because Starlette re-raises after running such a handler, so
    the server would log every traceback twice."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:  # headers are out: all we can do is drop the connection
                raise
            await error_response(500, *INTERNAL_ERROR)(scope, receive, send)


class BodyLimitMiddleware:
    """What a request body may cost before the app sees it, decided before anything parses it:

    - a request without a valid API key (when keys are configured) never has its body read: the app gets an empty
      body, its key check answers 401, and the connection is closed after it;
    - a declared Content-Length over `max_bytes` is refused unread (413), a streamed body counted as it arrives;
    - every buffered byte comes from the process-wide `budget`: when all bodies in flight together would pass it,
      503 `overloaded` + Retry-After, and the connection is closed (its bytes are given back when the request ends).

    Bodies within the limits are buffered (they are small) and replayed to the app. A client that leaves mid-body
    gets no answer (the metrics count it as 499)."""

    def __init__(
        self, app, max_bytes: int, budget: BodyBudget | None = None, api_keys: list[str] | None = None, retry_after_s: int = 1
    ):
        self.app, self.max_bytes, self.api_keys, self.retry_after_s = app, max_bytes, list(api_keys or []), retry_after_s
        self.budget = budget or BodyBudget(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if self.api_keys and VERDICT not in scope:  # (the fast lane may have judged the key already)
            scope[VERDICT] = key_verdict(headers, self.api_keys)
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        if scope.get(VERDICT, "ok") != "ok":
            return await self.app(scope, _empty_body(receive), _closing(send))
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send, declared + " bytes declared")
        body, held = bytearray(), 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    log.info(
                        "%s %s: the client left before its request body was complete (%d bytes received)",
                        scope["method"],
                        scope["path"],
                        len(body),
                    )
                    return  # nothing to answer
                chunk = message.get("body", b"")
                if len(body) + len(chunk) > self.max_bytes:
                    return await self._refuse(scope, receive, send, f"more than {len(body) + len(chunk)} bytes sent")
                if not self.budget.take(len(chunk)):
                    log.warning(
                        "request bodies in flight reached the %d-byte budget; refusing %s %s",
                        self.budget.max_bytes,
                        scope["method"],
                        scope["path"],
                    )
                    return await error_response(
                        503,
                        "overloaded",
                        "too many request bodies in flight; retry shortly",
                        {"Retry-After": str(self.retry_after_s), "Connection": "close"},
                    )(scope, receive, send)
                held += len(chunk)
                body += chunk
                if not message.get("more_body", False):
                    break
            message = {"type": "http.request", "body": bytes(body), "more_body": False}
            del body  # one copy held, not two
            await self.app(scope, replaying(message, receive), send)
        finally:
            self.budget.give_back(held)

    async def _refuse(self, scope, receive, send, what: str):
        response = error_response(
            413,
            "body_too_large",
            f"request body too large ({what}; the limit is {self.max_bytes} bytes)",
            {"Connection": "close"},
        )
        await response(scope, receive, send)


def replaying(message, receive):
    """A receive that gives `message` (a body already read) first, then the server's next messages."""
    replayed = False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return message
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replay


def _empty_body(receive):
    """The app's view of a request whose body is not read: empty, then (after the answer) the disconnect."""
    given = False

    async def empty():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": b"", "more_body": False}
        while (message := await receive())["type"] != "http.disconnect":
            pass  # body bytes arriving after the answer: dropped, never held
        return message

    return empty


def _closing(send):
    """Adds `Connection: close` to the response: the unread rest of the body must not be parsed as a next request."""

    async def closing_send(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await send(message)

    return closing_send
