"""The one error shape, `{"error": {"code": str, "message": str}}`, and the handlers that make every failure use it:
our own `ApiError`, FastAPI's validation errors (422), Starlette's HTTP errors (404/405) and, last, anything
unexpected (500, logged with its traceback by `CatchAllMiddleware` and never sent to the client)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("sentiment.errors")

# Custom validation error types raised by the schemas; they become the error code as they are.
SCHEMA_CODES = {"empty_text", "invalid_text"}
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               413: "too_large", 415: "unsupported_media_type", 503: "unavailable"}


class ApiError(Exception):
    """An error the client can act on: its status, a stable code and a message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


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


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        code, message = validation_message(exc)
        return error_response(422, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI answers 400 when the body cannot even be decoded; to the client that is the same mistake as
        # malformed JSON, so it gets the same (documented) 422 and code.
        if exc.status_code == 400 and isinstance(exc.__cause__, (UnicodeDecodeError, RecursionError)):
            reason = "not UTF-8" if isinstance(exc.__cause__, UnicodeDecodeError) else "nested too deeply"
            return error_response(422, "invalid_json", f"request body is not valid JSON ({reason})")
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
            await error_response(500, "internal_error", "internal server error (logged on the server)")(
                scope, receive, send)


class BodyLimitMiddleware:
    """413 for request bodies over `max_bytes`, decided before anything parses them: a declared Content-Length over
    the limit is refused unread, and a streamed body is counted as it arrives. Bodies under the limit are buffered
    (they are small) and replayed to the app."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send, declared.decode("latin-1") + " bytes declared")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before finishing its body: nothing to answer
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send, f"more than {size} bytes sent")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, what: str):
        response = error_response(413, "body_too_large", f"request body too large ({what}; the limit is "
                                                         f"{self.max_bytes} bytes)", {"Connection": "close"})
        await response(scope, receive, send)
