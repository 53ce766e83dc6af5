"""Security headers on every HTTP response: `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`, and a
Content-Security-Policy - the page's own policy (it used to be a meta tag, which cannot forbid framing) with
`frame-ancestors 'none'`, or only `frame-ancestors 'none'` for the API docs, whose Swagger UI and ReDoc assets come
from a CDN. Responses written by the HTTP protocol itself (431, 408) carry nosniff too (service/http_limits.py)."""

from __future__ import annotations

PAGE_CSP = (
    "default-src 'self'; connect-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DOCS_CSP = "frame-ancestors 'none'"
DOCS_PATHS = ("/docs", "/redoc")


def security_headers(csp: str) -> list[tuple[bytes, bytes]]:
    """The headers every response gets, with the given Content-Security-Policy (also service/fast_lane.py's)."""
    return [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"content-security-policy", csp.encode())]


_PAGE_HEADERS, _DOCS_HEADERS = security_headers(PAGE_CSP), security_headers(DOCS_CSP)


class SecurityHeadersMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        added = _DOCS_HEADERS if scope["path"].startswith(DOCS_PATHS) else _PAGE_HEADERS

        async def with_headers(message):
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in added if name not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)
