"""Model hot reload: replace a model's version, or add a model, while the service keeps answering.

    kill -HUP <pid>                                               rescan the model root
    curl -X POST -H "X-API-Key: $KEY" localhost:8000/v1/admin/reload                       (the same)
    curl -X POST -H "X-API-Key: $KEY" -d '{"directory": "exported/imdb-lstm-2"}' ...       one artifact directory

A rescan loads every artifact directory whose manifest differs from the one served under its name (a new version
written in place, or a model not served yet); an explicit `directory` (inside the model root) replaces the model of
its manifest's name, wherever that was served from. A new artifact is verified exactly as at start-up (sha256 of every
file, tokenizer vs model, a warm-up inference: `ModelRegistry.load_one`) in a worker thread while the old one serves;
one that fails is refused with a log line naming the file, and the old one keeps serving.

The swap: a new micro-batcher is started for the new runtime, then the registry entry and the batcher are replaced
in one step with no await between, so a request resolves its model and submits to that model's batcher without a
swap in the middle (see routes/protocol.score). The old batcher answers every job it already holds, on the old
version, and is stopped once idle. Models are never removed by a reload (that takes a restart).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

from prometheus_client import Counter

from service.artifacts import ArtifactError, discover, load_manifest
from service.batching import MicroBatcher
from service.registry import ModelRegistry
from service.routes import ServiceState
from service.runtime import ModelRuntime

log = logging.getLogger("sentiment.reload")
DRAIN_TIMEOUT_S = 60.0  # longest a retiring batcher may take to answer what it holds
# A request still tokenizing (in a worker thread) when the swap happened submits to the old batcher afterwards; once
# the old one has been idle this long, nobody is expected, and a straggler gets 503 + Retry-After, never a wrong answer.
RETIRE_GRACE_S = 5.0


def start_batcher(state: ServiceState, rt, tracer) -> MicroBatcher:
    """The model's micro-batcher, started (at start-up and on every reload)."""
    s = state.settings
    batcher = MicroBatcher(
        rt,
        max_items=s.max_batch_items,
        max_tokens=s.max_batch_tokens,
        max_wait_ms=s.max_wait_ms,
        queue_size=s.queue_size,
        metrics=state.metrics,
    )
    batcher.tracer = tracer
    batcher.start()
    return batcher


class ReloadError(ValueError):
    """What was refused (the models already served keep serving)."""


class Reloader:
    def __init__(self, state: ServiceState, tracer=None):
        self.state, self.tracer = state, tracer
        self._lock = asyncio.Lock()  # one reload at a time: two would race to replace the same model
        self._tasks: set[asyncio.Task] = set()
        self.reloads = Counter(
            "sentiment_model_reloads_total",
            "hot reloads of a model by outcome",
            ["model", "outcome"],
            registry=state.metrics.registry,
        )

    # -- triggers ------------------------------------------------------------------------------------------------
    def install_sighup(self) -> bool:
        """SIGHUP rescans the model root; only possible in the main thread (sentiment-serve), else False."""
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):
            return False
        return True

    def remove_sighup(self) -> None:
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):
            pass

    def _on_sighup(self) -> None:
        log.info("SIGHUP: rescanning %s", self.state.settings.model_root)
        task = asyncio.get_running_loop().create_task(self._reload_logged())
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except ReloadError:
            pass  # already logged, model by model
        except Exception:
            log.exception("reload failed")

    # -- the reload ----------------------------------------------------------------------------------------------
    async def reload(self, directory: str | Path | None = None) -> dict:
        """{"loaded": [...], "unchanged": [...]}; raises ReloadError naming what was refused (after loading the rest)."""
        async with self._lock:
            registry = self.state.require_ready()
            report: dict[str, list] = {"loaded": [], "unchanged": []}
            refused: list[str] = []
            for path, outcome in self._candidates(directory, registry).items():
                if isinstance(outcome, str):
                    refused.append(self._refuse(registry, path, None, outcome))
                    continue
                name = outcome["name"]
                current = registry.runtimes.get(name)
                if current is not None and current.directory.resolve() == path and current.manifest == outcome:
                    report["unchanged"].append({"name": name, "version": current.version})
                    continue
                try:
                    rt = await asyncio.to_thread(ModelRegistry.load_one, path, self.state.settings)
                except Exception as exc:  # ArtifactError, ProviderError or onnxruntime's own: all mean "not this one"
                    refused.append(self._refuse(registry, path, name, " ".join(str(exc).split())))
                    continue
                previous = await self._swap(registry, rt)
                report["loaded"].append(
                    {"name": rt.name, "version": rt.version, "directory": str(path), "previous_version": previous}
                )
            if refused:
                raise ReloadError("; ".join(refused))
            return report

    def _candidates(self, directory, registry) -> dict[Path, dict | str]:
        """Artifact directory -> its manifest (unverified: only to name the model), or why it is refused."""
        root = Path(self.state.settings.model_root).resolve()
        if directory is not None:
            path = (Path(directory) if Path(directory).is_absolute() else Path.cwd() / directory).resolve()
            if path != root and root not in path.parents:
                raise ReloadError(f"{directory}: not inside the model root {root}")
            paths = [path]
        else:
            try:
                paths = [p.resolve() for p in discover(root)]
            except ArtifactError as exc:
                raise ReloadError(str(exc)) from exc
        found: dict[Path, dict | str] = {}
        for path in paths:
            try:
                found[path] = load_manifest(path, verify=False)
            except ArtifactError as exc:
                found[path] = str(exc)
        if directory is None:  # two directories for one name: which one to serve is the operator's call
            claims: dict[str, list[Path]] = {}
            for path, manifest in found.items():
                if isinstance(manifest, dict):
                    claims.setdefault(manifest["name"], []).append(path)
            for name, paths in claims.items():
                if len(paths) > 1:
                    for path in paths:
                        found[path] = (
                            f"model {name!r} is claimed by {len(paths)} directories "
                            f"({', '.join(map(str, paths))}); reload one with the admin route's `directory`"
                        )
        return found

    def _refuse(self, registry: ModelRegistry, path: Path, name: str | None, why: str) -> str:
        served = registry.runtimes.get(name) if name else None
        keeps = f"; still serving {served.name} {served.version}" if served else ""
        log.error("reload refused %s: %s%s", path, why, keeps)
        self.reloads.labels(name or "unknown", "refused").inc()
        return f"{path}: {why}{keeps}"

    async def _swap(self, registry: ModelRegistry, rt: ModelRuntime) -> str | None:
        state = self.state
        batcher = start_batcher(state, rt, self.tracer)
        # One step, no await: the model and its batcher change together for every request after this line.
        previous = registry.put(rt)
        retiring = state.batchers.get(rt.name)
        state.batchers[rt.name] = batcher
        if retiring is not None:
            state.retiring[id(retiring.runtime)] = retiring  # requests holding the old runtime still reach it
        if previous is not None:
            try:
                state.metrics.model_info.remove(previous.name, previous.version, previous.provider)
            except KeyError:
                pass
        state.metrics.model_info.labels(rt.name, rt.version, rt.provider).set(1)
        state.metrics.queue_depth.labels(rt.name).set(0)
        self.reloads.labels(rt.name, "loaded").inc()
        log.info(
            "reload: serving %s %s from %s%s",
            rt.name,
            rt.version,
            rt.directory,
            f" (was {previous.version} from {previous.directory})" if previous else " (new model)",
        )
        if retiring is not None:  # in the background: the reload's caller need not wait for the old version's tail
            task = asyncio.get_running_loop().create_task(self._retire(retiring))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return previous.version if previous else None

    async def _retire(self, batcher: MicroBatcher) -> None:
        """Stop the old batcher once it has answered everything it holds and stayed idle for RETIRE_GRACE_S."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        idle_since = None
        while time.monotonic() < deadline:
            if batcher.busy:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= RETIRE_GRACE_S:
                break
            await asyncio.sleep(0.05)
        else:
            log.warning(
                "reload: the old %s batcher was still busy after %.0f s; stopping it", batcher.runtime.name, DRAIN_TIMEOUT_S
            )
        self.state.retiring.pop(id(batcher.runtime), None)
        await batcher.stop()
