"""HTTP routes, one module per resource, and what they share: the service state and the API-key check, both as
`Annotated` dependencies so route signatures stay short."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.auth import VERDICT, key_verdict
from service.batching import BatcherStopped, MicroBatcher
from service.errors import ApiError
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings


@dataclass
class ServiceState:
    """Everything the routes use; `registry` and `batchers` exist once start-up has finished."""

    settings: Settings
    metrics: Metrics
    registry: ModelRegistry | None = None
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)
    ready: bool = False
    diagnosing: int = 0  # texts in (or waiting for) a diagnostics worker thread
    attributing: int = 0  # of those, texts whose diagnostics run occlusion attribution
    retiring: dict[int, MicroBatcher] = field(default_factory=dict)  # id(runtime) -> its batcher, replaced by a reload
    # Tokenizing runs here, never on the event loop: a 64 x 20,000-character batch of hostile text is seconds of
    # tokenizer work (which releases the GIL), and the loop must keep answering everyone else meanwhile. A pool of
    # its own, so a burst of diagnostics in asyncio's default pool cannot hold plain requests at this step.
    tokenizer_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="tokenize"))

    def batcher_for(self, rt) -> MicroBatcher:
        """The batcher of this very runtime. A request that resolved its model before a hot reload (service/reload.py)
        scores on that version, even when the swap happened while it was tokenizing."""
        batcher = self.batchers[rt.name]
        if batcher.runtime is not rt:
            batcher = self.retiring.get(id(rt))
            if batcher is None or batcher.runtime is not rt:
                raise BatcherStopped(f"model {rt.name} {rt.version} was replaced while this request waited; retry")
        return batcher

    def retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.settings.retry_after_s)}

    def require_ready(self) -> ModelRegistry:
        if not self.ready or self.registry is None:
            raise ApiError(503, "not_ready", "the models are not loaded (starting up or shutting down)",
                           self.retry_after())
        return self.registry


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]


def require_api_key(request: Request, state: State) -> None:
    """When API keys are configured, /v1/* needs one (X-API-Key header or `Authorization: Bearer`). The body
    middleware has usually checked already (and not read the body of a request without a valid key)."""
    verdict = request.scope.get(VERDICT) or key_verdict(request.headers, state.settings.api_keys)
    if verdict == "missing":
        raise ApiError(401, "missing_api_key", "this service needs an API key (X-API-Key header or Bearer token)",
                       {"WWW-Authenticate": "Bearer"})
    if verdict != "ok":
        raise ApiError(401, "invalid_api_key", "the API key is not valid", {"WWW-Authenticate": "Bearer"})
