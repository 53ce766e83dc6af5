"""HTTP routes, one module per resource, and what they share: the service state (the scoring core) and the API-key
check, both as `Annotated` dependencies so route signatures stay short, and the fast JSON response."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import Depends, Request, Response

from service.auth import VERDICT, key_verdict
from service.errors import ApiError
from service.scoring import ScoringCore

# The state every route uses is the scoring core (service/scoring.py); the name is the routes' view of it.
ServiceState = ScoringCore


def json_response(content, status_code: int = 200) -> Response:
    """A body serialized by orjson, as it is: routes that build their answer in the core return this, so FastAPI
    neither validates it against the response model again nor runs its slower encoder (the model stays in OpenAPI)."""
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


# Dependencies are `async def`: FastAPI runs a plain `def` dependency in its thread pool, two thread hops per
# request for a dictionary lookup (13% of the server's time under load, measured with py-spy).
async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]


async def require_api_key(request: Request, state: State) -> None:
    """The /v1/* dependency: see `check_api_key`."""
    check_api_key(request, state)


def check_api_key(request: Request, state: ServiceState) -> None:
    """When API keys are configured, /v1/* needs one (X-API-Key header or `Authorization: Bearer`). The body
    middleware has usually checked already (and not read the body of a request without a valid key)."""
    verdict = request.scope.get(VERDICT) or key_verdict(request.headers, state.settings.api_keys)
    if verdict == "missing":
        raise ApiError(
            401,
            "missing_api_key",
            "this service needs an API key (X-API-Key header or Bearer token)",
            {"WWW-Authenticate": "Bearer"},
        )
    if verdict != "ok":
        raise ApiError(401, "invalid_api_key", "the API key is not valid", {"WWW-Authenticate": "Bearer"})
