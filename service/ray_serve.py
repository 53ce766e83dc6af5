"""The HTTP API on Ray Serve: `SentimentDeployment`, replicas of the same `ModelRuntime` and the same
`/v1/sentiment` request and response schemas (service/schemas.py) as `sentiment-serve`, with `@serve.batch` in
place of the micro-batcher and Ray Serve's autoscaler in place of Kubernetes' HPA.

    serve run service.ray_serve:app                          # exported/, 1-4 replicas, http://127.0.0.1:8000
    serve run service.ray_serve:build min_replicas=2 max_replicas=8 num_cpus=1 model_root=/models/imdb-lstm
    serve run --address ray://HEAD:10001 service.ray_serve:app   # on a cluster whose nodes have this package

`build`'s arguments are `ServeOptions` (each `key=value` on the command line). Every other setting is a
`SENTIMENT_*` variable of service/settings.py in the replicas' environment (API keys, text and batch limits,
providers, threads); on a cluster pass them with `--runtime-env-json '{"env_vars": {...}}'`.

Routes: POST /v1/sentiment and /v1/sentiment/batch (the API's own limits, errors and API-key check), GET
/v1/models, /healthz and /readyz. Each response names its replica in `X-Replica`. Ray Serve's own health check
runs the same tiny real inference as /readyz; a replica that fails it (or dies) is replaced by the controller.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import numpy as np
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from service import errors
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.routes import ServiceState, check_api_key
from service.routes.sentiment import ERRORS, _check_length
from service.runtime import ModelRuntime, NoTokensError
from service.schemas import BatchRequest, BatchResponse, SentimentRequest, SentimentResponse
from service.scoring import no_tokens
from service.settings import Settings
from service.tokenization import Encoded

log = logging.getLogger("sentiment.ray_serve")

api = FastAPI(title="IMDB sentiment service (Ray Serve)", version="1.0.0")
errors.install(api)  # the one error shape, as in service/app.py


class ServeOptions(BaseModel):
    """Deployment options of `build` (`serve run service.ray_serve:build key=value ...`)."""

    model_config = ConfigDict(extra="forbid")

    model_root: str | None = Field(
        None, description="artifact directory or folder of them (default: SENTIMENT_MODEL_ROOT, else exported/)"
    )
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    # In-flight requests per replica the autoscaler aims for: about one full batch's worth of single texts.
    target_ongoing_requests: float = Field(16, gt=0)
    max_ongoing_requests: int = Field(64, gt=0, description="requests one replica accepts before Serve queues them")
    num_cpus: float = Field(1, gt=0, description="CPUs reserved per replica (event loop + one onnxruntime thread)")
    num_gpus: float = Field(0, ge=0)
    max_batch_size: int = Field(64, gt=0, description="texts per onnxruntime call (@serve.batch)")
    batch_wait_timeout_s: float = Field(0.002, ge=0, description="how long the first text waits for company")
    health_check_period_s: float = Field(5, gt=0)


class SentimentDeployment:
    """One replica: the models of `model_root`, loaded and verified once, and the scoring queue."""

    def __init__(self, model_root: str | None = None, max_batch_size: int = 64, batch_wait_timeout_s: float = 0.002):
        self.settings = Settings(model_root=model_root) if model_root else Settings()
        self.registry = ModelRegistry.load(self.settings)
        # The HTTP service's state object, so its route helpers (API keys, limits) apply unchanged. Kept on the
        # replica, not on `api`: Serve runs a pickled copy of the app, which the module's `api` is not.
        self.state = ServiceState(settings=self.settings, metrics=Metrics(), registry=self.registry, ready=True)
        # serve.batch's stubs type the wrapper as the plain method, without these setters.
        self._score.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self._score.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]
        self.replica = serve.get_replica_context().replica_id.unique_id

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _score(self, texts: list[tuple[str, Encoded]]) -> list[np.ndarray]:
        """Probabilities for texts of concurrent requests, one onnxruntime call per model (and per 64 texts,
        length-sorted: `ModelRuntime.predict`), in a worker thread so the replica keeps accepting requests."""
        by_model: dict[str, list[int]] = defaultdict(list)
        for i, (name, _) in enumerate(texts):
            by_model[name].append(i)
        out: list[np.ndarray] = [np.empty(0)] * len(texts)
        for name, rows in by_model.items():
            rt = self.registry.get(name)
            probs = await asyncio.to_thread(rt.predict, [texts[i][1] for i in rows], len(rows))
            for i, p in zip(rows, probs):
                out[i] = p
        return out

    @staticmethod
    async def _encode(rt: ModelRuntime, texts: list[str], truncate, where: list[str]) -> list[Encoded]:
        """Tokenized in a worker thread (a long hostile text is seconds of tokenizer work, and the replica must keep
        accepting requests meanwhile); the same 422 as the HTTP service for a text with nothing left to score."""
        encoded = await asyncio.to_thread(rt.encode, texts, truncate)
        for enc, name in zip(encoded, where):
            if enc.num_tokens == 0:
                exc = no_tokens(name)  # the core's error, so the message cannot drift from the HTTP service's
                raise errors.ApiError(422, exc.code, exc.message)
        return encoded

    async def _results(
        self,
        rt: ModelRuntime,
        texts: list[str],
        encoded: list[Encoded],
        diagnostics: bool,
        include_hidden: bool = False,
        attribution: bool = False,
    ) -> list[dict]:
        scored: list[tuple[np.ndarray, dict | None]]
        if diagnostics:  # the diagnostics graph, as the HTTP service runs it: outside the batch, in a thread
            cap = self.settings.max_hidden_values
            scored = await asyncio.to_thread(
                lambda: [rt.diagnose(t, e, include_hidden, attribution, cap) for t, e in zip(texts, encoded)]
            )
        else:
            try:
                rows = await asyncio.gather(*(self._score((rt.name, e)) for e in encoded))
            except NoTokensError as exc:
                raise errors.ApiError(422, "no_tokens", str(exc)) from exc
            scored = [(p, None) for p in rows]
        results = []
        for enc, (probs, report) in zip(encoded, scored):
            results.append(self.state.result(rt, enc, probs, report))  # the fields /v1 answers, trust included
        return results

    @api.post(
        "/v1/sentiment",
        response_model=SentimentResponse,
        response_model_exclude_none=True,
        responses=ERRORS,
        summary="Score one review",
    )
    async def sentiment(self, body: SentimentRequest, request: Request, response: Response) -> dict:
        state = self.state
        check_api_key(request, state)
        rt = self.registry.get(body.model)
        _check_length(state, body.text)
        encoded = await self._encode(rt, [body.text], body.truncate, ["text"])
        diagnostics = body.diagnostics or body.include_hidden or body.attribution
        response.headers["X-Replica"] = self.replica
        return (await self._results(rt, [body.text], encoded, diagnostics, body.include_hidden, body.attribution))[0]

    @api.post(
        "/v1/sentiment/batch",
        response_model=BatchResponse,
        response_model_exclude_none=True,
        responses=ERRORS,
        summary="Score many reviews together",
    )
    async def sentiment_batch(self, body: BatchRequest, request: Request, response: Response) -> dict:
        state = self.state
        check_api_key(request, state)
        rt = self.registry.get(body.model)
        limit = self.settings.max_batch_items
        if len(body.items) > limit:
            raise errors.ApiError(413, "batch_too_large", f"{len(body.items)} items; the limit is {limit} per request")
        texts = [item.text for item in body.items]
        for i, text in enumerate(texts):
            _check_length(state, text, f"items[{i}].text")
        encoded = await self._encode(rt, texts, body.truncate, [f"items[{i}].text" for i in range(len(texts))])
        results = await self._results(rt, texts, encoded, body.diagnostics)
        for item, result in zip(body.items, results):
            result["id"] = item.id
        response.headers["X-Replica"] = self.replica
        return {"results": results}

    @api.get("/v1/models", summary="Models this replica serves")
    async def models(self, request: Request) -> dict:
        check_api_key(request, self.state)
        return {"default": self.registry.default, "models": [rt.info for rt in self.registry]}

    @api.get("/healthz", summary="Liveness")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz", summary="Readiness: a real inference per model")
    async def readyz(self) -> dict:
        await self.check_health()
        return {"status": "ready", "models": {rt.name: rt.provider for rt in self.registry}}

    async def check_health(self) -> None:
        """Ray Serve calls this every `health_check_period_s`; raising marks the replica unhealthy (replaced)."""
        for rt in self.registry:
            probe = Encoded(np.array([rt.tokenizer.unk_id], dtype=np.int64), [(0, 0)], 1, False)
            probs = await self._score((rt.name, probe))
            if not np.all(np.isfinite(probs)):
                raise RuntimeError(f"model {rt.name}: health check returned {probs.tolist()}")


# `SentimentDeployment` with the routes above attached; wrapped once, `build` only sets the deployment options.
_Ingress = serve.ingress(api)(SentimentDeployment)


def build(args: dict | None = None) -> Application:
    """The application for `serve run service.ray_serve:build key=value ...` (or `serve.run(build({...}))`)."""
    options = ServeOptions(**(args or {}))
    if options.max_replicas < options.min_replicas:
        raise ValueError(f"max_replicas ({options.max_replicas}) is below min_replicas ({options.min_replicas})")
    deployment = serve.deployment(
        name="SentimentDeployment",
        ray_actor_options={"num_cpus": options.num_cpus, "num_gpus": options.num_gpus},
        max_ongoing_requests=options.max_ongoing_requests,
        health_check_period_s=options.health_check_period_s,
        # sentiment-serve's drain: in-flight requests get up to 10 s when a replica is stopped.
        graceful_shutdown_timeout_s=10,
        autoscaling_config={
            "min_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "initial_replicas": max(options.min_replicas, 1),
            "target_ongoing_requests": options.target_ongoing_requests,
        },
    )(_Ingress)
    return deployment.bind(options.model_root, options.max_batch_size, options.batch_wait_timeout_s)


app = build()
