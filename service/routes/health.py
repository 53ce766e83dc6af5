"""Probes and metrics: /healthz (the process answers; no model work), /readyz (every model loaded and a real
tiny inference through its micro-batcher works) and /metrics (Prometheus text format). None needs an API key."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from fastapi import APIRouter, Response

from service.batching import QueueFull
from service.errors import ApiError
from service.routes import State
from service.tokenization import Encoded

log = logging.getLogger("sentiment.health")
router = APIRouter(tags=["health"])
READY_TIMEOUT_S = 5.0


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: a real inference per model")
async def readyz(state: State) -> dict:
    registry = state.require_ready()
    checked = {}
    for rt in registry:
        probe = Encoded(np.array([rt.tokenizer.unk_id], dtype=np.int64), [(0, 0)], 1, False)
        try:
            probs = await asyncio.wait_for(state.batchers[rt.name].submit([probe]), READY_TIMEOUT_S)
        except Exception as exc:  # any failure means not ready; the details (paths, internals) go to the log only
            expected = isinstance(exc, (QueueFull, asyncio.TimeoutError))  # overloaded or slow: no traceback
            log.warning("readiness check of model %s failed: %s: %s", rt.name, type(exc).__name__, exc, exc_info=not expected)
            raise ApiError(
                503,
                "not_ready",
                f"model {rt.name}: inference check failed ({type(exc).__name__}; details in the server log)",
                state.retry_after(),
            ) from exc
        if not np.all(np.isfinite(probs)):
            raise ApiError(503, "not_ready", f"model {rt.name}: inference check returned {probs.tolist()}", state.retry_after())
        checked[rt.name] = rt.provider
    return {"status": "ready", "models": checked}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
