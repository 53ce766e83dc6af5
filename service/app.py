"""Builds the FastAPI app: routes, middleware, error handlers and the lifespan that loads the models.

    uvicorn --factory service.app:create_app      (or `sentiment-serve`, which also checks the models first)

Start-up loads and verifies every artifact under the model root (see `ModelRegistry`) and starts one micro-batcher
per model before the app reports ready; any failure stops start-up, so there is never a half-working server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.routing import Match, Mount
from starlette.types import ASGIApp

from service import docs, errors, tracing
from service.fast_lane import FastLane
from service.http_limits import BodyBudget
from service.metrics import Metrics, MetricsMiddleware
from service.registry import ModelRegistry
from service.reload import Reloader, start_batcher
from service.routes import ServiceState, admin, health, models, sentiment, tei, v2
from service.security_headers import SecurityHeadersMiddleware
from service.settings import Settings

log = logging.getLogger("sentiment.app")
STATIC_DIR = Path(__file__).resolve().parent / "static"


def _start(state: ServiceState, registry: ModelRegistry, tracer: tracing.BatchTracer | None) -> None:
    state.registry = registry
    for rt in registry:
        state.batchers[rt.name] = start_batcher(state, rt, tracer)
        state.metrics.model_info.labels(rt.name, rt.version, rt.provider).set(1)
        state.metrics.queue_depth.labels(rt.name).set(0)
    state.ready = True


class PageMount(Mount):
    """The page's files at / for every path the API does not own. A path the API owns never reaches the file
    server, so a wrong method there is the API's 405 listing its real methods (`Allow: POST`), not the file server's
    404 or a 405 claiming `Allow: GET, HEAD`. The exception is `shared_paths` (`/`): the page for GET and HEAD, the
    API (TEI's POST /) for the rest."""

    def __init__(self, app, api_routes: list, shared_paths: frozenset[str] = frozenset({"/"})):
        super().__init__("/", app=app, name="static")
        self.api_routes, self.shared_paths = api_routes, shared_paths

    def matches(self, scope):
        for route in self.api_routes:
            match = route.matches(scope)[0]
            if match == Match.FULL or (match == Match.PARTIAL and scope["path"] not in self.shared_paths):
                return Match.NONE, {}
        return super().matches(scope)


class SentimentApp(FastAPI):
    """FastAPI with an optional `lane` in front of its whole middleware stack (service/fast_lane.py)."""

    lane: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        return self.lane(stack) if self.lane is not None else stack


def create_app(settings: Settings | None = None, registry: ModelRegistry | None = None, tracer_provider=None) -> FastAPI:
    """The app; `registry` lets a caller that already loaded the models (sentiment-serve) skip loading them again.
    Tracing (service/tracing.py) is on with `tracer_provider`, or when the OTEL_* variables ask for it."""
    settings = settings or Settings()
    state = ServiceState(settings=settings, metrics=Metrics())
    own_provider = tracer_provider is None and tracing.enabled()
    provider = tracing.provider_from_env() if own_provider else tracer_provider
    batch_tracer = None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loaded = registry if registry else await asyncio.to_thread(ModelRegistry.load, settings)
        _start(state, loaded, batch_tracer)
        sighup = app.state.reloader.install_sighup()  # sentiment-serve: main thread; not under a test's thread
        log.info("ready: %d model(s), default %s", len(loaded), loaded.default)
        try:
            yield
        finally:
            if sighup:
                app.state.reloader.remove_sighup()
            state.ready = False
            for batcher in [*state.batchers.values(), *state.retiring.values()]:
                await batcher.stop()
            if own_provider:
                provider.shutdown()  # exports the spans still buffered
            state.tokenizer_pool.shutdown(wait=False)

    app = SentimentApp(
        title="IMDB sentiment service",
        version="1.0.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # FastAPI's own OpenTelemetry hooks look up the global providers in os.environ on every request (2% of the
        # server's time); service/tracing.py instruments the app itself when SENTIMENT_TRACING is on.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        description="Scores review text with an LSTM/GRU classifier (onnxruntime), with optional per-token "
        'diagnostics of the recurrent state. Errors: `{"error": {"code", "message"}}`.',
    )
    app.state.service = state
    errors.install(app)
    routers = (sentiment, models, admin, health, v2, tei)
    for module in routers:
        app.include_router(module.router)
    docs.install(app)  # /docs with its assets served from here, not a CDN
    # The web page (owned elsewhere) is served at / when present; mounted last so the API routes match first.
    if STATIC_DIR.is_dir():
        app.router.routes.append(PageMount(StaticFiles(directory=STATIC_DIR, html=True), list(app.router.routes)))
    # add_middleware puts each new one outside the previous: the body limit runs innermost, CORS outermost.
    budget = BodyBudget(settings.max_buffered_body_bytes)  # shared with the fast lane
    app.add_middleware(
        errors.BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        api_keys=settings.api_keys,
        budget=budget,
        retry_after_s=settings.retry_after_s,
    )
    app.add_middleware(errors.CatchAllMiddleware)
    app.add_middleware(
        MetricsMiddleware,
        metrics=state.metrics,
        known_paths=frozenset(route.path for module in routers for route in module.router.routes if route.path != "/"),
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["content-type", "authorization", "x-api-key"],
        )
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: every response gets the headers, CORS's too
    if provider is not None:
        batch_tracer = tracing.instrument(app, provider)
    elif settings.fast_lane:  # (traced requests need the spans the full stack makes)
        app.lane = lambda stack: FastLane(stack, state, sentiment.score_one, settings.max_body_bytes, budget)
    app.state.reloader = Reloader(state, batch_tracer)  # SIGHUP and POST /v1/admin/reload
    return app
