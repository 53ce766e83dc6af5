"""POST /v1/admin/reload: a model hot reload (service/reload.py) on demand. Off unless API keys are configured
(SENTIMENT_API_KEYS): an unauthenticated route that loads files would be an open door, so without keys it is a 403."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from service.errors import ApiError
from service.reload import ReloadError
from service.routes import State, check_api_key
from service.schemas import ErrorResponse, _Request


async def require_admin(request: Request, state: State) -> None:
    if not state.settings.api_keys:
        raise ApiError(403, "admin_disabled", "admin routes are off: set SENTIMENT_API_KEYS to enable them")
    check_api_key(request, state)


router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={status: {"model": ErrorResponse} for status in (401, 403, 422, 503)},
)


class ReloadRequest(_Request):
    directory: str | None = Field(
        None, description="one artifact directory inside the model root (default: rescan the whole root)"
    )


@router.post("/reload", summary="Load new or changed models without a restart")
async def reload(state: State, request: Request, body: ReloadRequest | None = None) -> dict:
    state.require_ready()
    try:
        return await request.app.state.reloader.reload(body.directory if body else None)
    except ReloadError as exc:
        raise ApiError(422, "reload_refused", str(exc)) from exc
