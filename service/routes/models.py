"""GET /v1/models: what each loaded artifact is (its manifest summary) and where it runs (execution provider)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.routes import State, require_api_key

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("/models", summary="Loaded models, their manifests and execution providers")
async def models(state: State) -> dict:
    registry = state.require_ready()
    return {
        "default": registry.default,
        "models": [{**rt.info, "providers": rt.providers, "default": rt.name == registry.default} for rt in registry],
    }
