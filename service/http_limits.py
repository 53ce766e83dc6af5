"""What one HTTP connection may cost the server before the app has a request to judge: the uvicorn protocol that caps
request heads and times out slow ones, the process-wide budget for buffered request bodies, and the uvicorn config
that uses both.

uvicorn's httptools protocol buffers request heads without limit and waits for a slow head or body forever; h11
caps heads at 16 kB but has no timeouts either. `LimitedHttpToolsProtocol` adds, per connection:

- a head limit: request line + headers over `max_header_bytes`, or more than `max_headers` lines: 431, closed;
- a head timeout: the head not complete `header_timeout_s` after the connection opened (or the previous response
  finished and the next request's first byte came): 408, closed. Idle keep-alive connections are closed by
  uvicorn after `keep_alive_s`;
- a body timeout: the body not complete `body_timeout_s` after the head: closed (the app sees a disconnect);
- WebSocket upgrades (this service has none): 400, closed, logged at debug level only.

Bodies are buffered by `errors.BodyLimitMiddleware`, which takes their bytes from one `BodyBudget` per process.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.settings import Settings

log = logging.getLogger("sentiment.http")


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    body_timeout_s: float

    @classmethod
    def from_settings(cls, s: Settings) -> HttpLimits:
        return cls(s.max_header_bytes, s.max_headers, s.header_timeout_s, s.body_timeout_s)


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the connection is answered and closed."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def raw_error(status: int, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 response in the one error shape, closing the connection (written before any app runs)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n"
        b"x-content-type-options: nosniff\r\n\r\n" % len(body)
    )
    return STATUS_LINE[status] + head + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; `limits` is set by `protocol_class`."""

    limits: HttpLimits

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._in_head = True  # between a message's first byte (or the connection) and its complete head
        self._head_bytes = 0  # received while in the head: an upper bound of its size, counted before parsing
        self._exact_bytes = 0  # request line + headers as parsed
        self._header_count = 0
        self._phase: str | None = None  # "head" or "body": what the deadline below is waiting for
        self._deadline = 0.0
        self._timer = None

    # -- deadlines ----------------------------------------------------------------------------------------------
    def _watch(self, phase: str, seconds: float) -> None:
        self._phase, self._deadline = phase, self.loop.time() + seconds
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self._phase is None or self.transport.is_closing():
            return
        if self.loop.time() < self._deadline:  # the deadline moved (a new phase began): wait for the new one
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)
            return
        if self._phase == "head":
            log.debug("%s: request head not complete after %.0f s; closed", self._peer(), self.limits.header_timeout_s)
            self._answer(408, "request_timeout", f"request head not received within {self.limits.header_timeout_s:g} s")
        else:
            log.info("%s: request body not complete after %.0f s; closed", self._peer(), self.limits.body_timeout_s)
            self.transport.close()  # the app, waiting for the body, sees a disconnect (status 499)
        self._phase = None

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "client"

    def _answer(self, status: int, code: str, message: str) -> None:
        # Only when no response is being written on this connection (a pipelined request's head can be late
        # while the previous response is still running): then the connection is just closed.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(raw_error(status, code, message))
        self.transport.close()

    # -- protocol -------------------------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._watch("head", self.limits.header_timeout_s)

    def connection_lost(self, exc) -> None:
        self._phase = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, but a limit refusal is answered as such, and nothing here logs a warning per request.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            refused = exc.__context__ if isinstance(exc.__context__, _Refused) else None
            if refused is not None:
                log.debug("%s: %s", self._peer(), refused.message)
                self._answer(refused.status, refused.code, refused.message)
            else:
                log.debug("%s: invalid HTTP request (%s)", self._peer(), exc)
                self.send_400_response("Invalid HTTP request received.")
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._answer(431, "headers_too_large", f"request head over {self.limits.max_header_bytes} bytes")

    def _unsupported_upgrade_warning(self) -> None:
        log.debug("%s: upgrade request ignored (no upgrades here)", self._peer())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._exact_bytes, self._header_count = True, 0, 0, 0
        self._watch("head", self.limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._exact_bytes += len(url)
        if self._exact_bytes > self.limits.max_header_bytes:
            raise _Refused(431, "headers_too_large", f"request head over {self.limits.max_header_bytes} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._exact_bytes += len(name) + len(value) + 4
        self._header_count += 1
        if self._exact_bytes > self.limits.max_header_bytes:
            raise _Refused(431, "headers_too_large", f"request head over {self.limits.max_header_bytes} bytes")
        if self._header_count > self.limits.max_headers:
            raise _Refused(431, "headers_too_large", f"more than {self.limits.max_headers} header lines")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        upgrade = self.parser.should_upgrade() and dict(self.headers).get(b"upgrade", b"").lower() == b"websocket"
        if upgrade:  # the app would answer it as a plain GET (the page, or 404): refuse it plainly instead
            raise _Refused(400, "upgrade_not_supported", "this service does not speak WebSocket")
        self._watch("body", self.limits.body_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = None
        super().on_message_complete()


def protocol_class(limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
    """A protocol class bound to `limits` (uvicorn builds one protocol per connection from a class)."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


def uvicorn_config(app, settings: Settings, **kwargs) -> uvicorn.Config:
    """uvicorn's config for this service: the limited httptools protocol, no WebSocket support, the idle keep-alive
    timeout from the settings. `sentiment-serve` and the reliability tests' live servers both use it."""
    return uvicorn.Config(
        app,
        http=protocol_class(HttpLimits.from_settings(settings)),
        ws="none",
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]  # typed int; uvicorn passes it to call_later, a float works
        **kwargs,
    )


class BodyBudget:
    """Bytes of request bodies buffered at once, process-wide (all connections together). A request whose next chunk
    would go over `max_bytes` is refused (503) instead of the server growing; its bytes come back when it ends."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.max_bytes:
            return False
        self.used += n
        return True

    def give_back(self, n: int) -> None:
        self.used -= n
