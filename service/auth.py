"""API keys: where a request presents one and how it is checked, shared by the route dependency (which answers 401
in each route's own error shape) and the body middleware (which never reads the body of a request without a valid
key)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

VERDICT = "sentiment.api_key"  # scope key of the middleware's verdict


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key from `X-API-Key`, else from `Authorization: Bearer <key>`; headers only, never the query string."""
    key = headers.get("x-api-key")
    if key is None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return key


def key_matches(presented: str, keys: list[str]) -> bool:
    # Compare with every key, in constant time, without stopping early: timing reveals nothing about which matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented.encode(), key.encode())
    return matched


def key_verdict(headers: Mapping[str, str], keys: list[str]) -> str:
    """ "ok" (a valid key, or no keys configured), "missing" or "invalid"."""
    if not keys:
        return "ok"
    presented = presented_key(headers)
    if presented is None:
        return "missing"
    return "ok" if key_matches(presented, keys) else "invalid"
