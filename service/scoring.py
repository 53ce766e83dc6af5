"""The scoring core, without HTTP: what every interface (/v1, Open Inference Protocol v2, TEI) does between a parsed
request and its answer.

    core.check_texts -> core.model(name) -> await core.encode -> await core.score / core.diagnose -> core.result

It owns admission (the per-request limits, the micro-batcher's queue, the diagnostics and attribution bounds: past
them a request is refused at once instead of waiting in an unbounded line), tokenization in batches off the event
loop, scheduling on the model's micro-batcher (plain and diagnostics work), cancellation when the client leaves
(its texts leave the queue, or its diagnostics stop before their next text), the metrics hooks and the trust fields
of every result (service/trust.py). It raises the plain errors of service/exceptions.py; service/errors.py alone
turns them into HTTP statuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.batching import BatcherStopped, MicroBatcher
from service.exceptions import BatchTooLarge, ClientGone, NoTokens, NotReady, Overloaded, ServiceError, TextTooLong
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.runtime import ModelRuntime
from service.schemas import text_problem
from service.settings import Settings
from service.tokenization import Encoded, Truncation
from service.trust import TrustPolicy

TOKENIZER_THREADS = 2
WATCH_AFTER_S = 0.05  # see _unless_gone
INLINE_CHARS = 512
Where = Callable[[int], str]  # item index -> how the client names it ("text", "items[3].text", "inputs[0]")
Gone = Callable[[], Awaitable[None]] | None  # returns when the client has left; None: never asked


def no_tokens(where: str) -> NoTokens:
    return NoTokens(f"{where} has nothing to score after cleaning (only markup or spaces?)")


class Tokenizing:
    """Tokenization off the event loop, in batches: texts of requests that arrive while the pool's threads are busy
    are tokenized together in one `encode_batch` call per model and truncation (one thread hop, and the tokenizer's
    own batch path), instead of a call each."""

    def __init__(self, pool: ThreadPoolExecutor, threads: int):
        self.pool, self.threads = pool, threads
        self._pending: list[tuple[ModelRuntime, list[str], Truncation | None, asyncio.Future]] = []
        self._running = 0

    async def encode(self, rt: ModelRuntime, texts: list[str], truncation: Truncation | None) -> list[Encoded]:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((rt, texts, truncation, future))
        if self._running < self.threads:
            self._running += 1
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                taken, self._pending = self._pending, []
                loop = asyncio.get_running_loop()
                try:
                    results = await loop.run_in_executor(self.pool, self._encode_all, taken)
                except BaseException as exc:  # the pool shut down: fail these callers rather than hang them
                    results = [exc] * len(taken)
                for (_, _, _, future), result in zip(taken, results):
                    if future.done():  # its request was cancelled meanwhile
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._running -= 1

    @staticmethod
    def _encode_all(taken) -> list:
        groups: dict[tuple[int, str | None], list[int]] = {}
        for i, (rt, _, truncation, _) in enumerate(taken):
            groups.setdefault((id(rt), truncation), []).append(i)
        out: list = [None] * len(taken)
        for members in groups.values():
            rt, truncation = taken[members[0]][0], taken[members[0]][2]
            texts = [text for i in members for text in taken[i][1]]
            try:
                encoded = rt.encode(texts, truncation)
            except Exception as exc:  # noqa: BLE001 - each request of the group gets the error
                encoded = exc
            at = 0
            for i in members:
                n = len(taken[i][1])
                out[i] = encoded if isinstance(encoded, BaseException) else encoded[at : at + n]
                at += n
        return out


async def _unless_gone(gone: Gone, work: Awaitable, watch_after: float = 0.0):
    """`work`'s result, or ClientGone if the client left first. Cancelling `work` gives its queue slots back (see
    MicroBatcher.submit) or stops diagnostics before their next text.

    The client is watched from the start, or once the work has taken `watch_after` seconds: plain scoring passes
    WATCH_AFTER_S, since most of its requests are answered sooner and a watch (a task reading the connection) was
    a tenth of the event loop's time per short request; cancellation matters when the queue is long, and then every
    wait is longer than that. Diagnostics, seconds of work for a batch, are watched at once. The watch cancels this
    request's own task, so the work needs no task of its own."""
    if gone is None:
        return await work
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    watch: asyncio.Task | None = None
    finished = left = False

    def on_gone(w: asyncio.Task) -> None:
        nonlocal left
        if not finished and not w.cancelled() and me is not None:
            left = True
            me.cancel()

    def start_watch() -> None:
        nonlocal watch
        watch = asyncio.ensure_future(gone())
        watch.add_done_callback(on_gone)

    timer = loop.call_later(watch_after, start_watch) if watch_after > 0 else None
    if timer is None:
        start_watch()
    try:
        return await work
    except asyncio.CancelledError:
        if not left:
            raise  # this request itself was cancelled
        if me is not None and hasattr(me, "uncancel"):  # Python 3.11+: this cancellation was ours, not the server's
            me.uncancel()
        raise ClientGone("the client closed the connection before its result was ready") from None
    finally:
        finished = True
        if timer is not None:
            timer.cancel()
        if watch is not None:
            watch.cancel()


@dataclass
class ScoringCore:
    """The served models, their micro-batchers and every scoring policy; `registry` and `batchers` exist once
    start-up has finished (service/app.py), and a hot reload (service/reload.py) swaps both in one step."""

    settings: Settings
    metrics: Metrics
    registry: ModelRegistry | None = None
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)
    ready: bool = False
    diagnosing: int = 0  # texts in (or waiting for) diagnostics, all models
    attributing: int = 0  # of those, texts whose diagnostics run occlusion attribution
    retiring: dict[int, MicroBatcher] = field(default_factory=dict)  # id(runtime) -> its batcher, replaced by a reload
    # Tokenizing runs here, never on the event loop: a 64 x 20,000-character batch of hostile text is seconds of
    # tokenizer work (which releases the GIL), and the loop must keep answering everyone else meanwhile. A pool of
    # its own, so a burst of diagnostics in asyncio's default pool cannot hold plain requests at this step.
    tokenizer_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=TOKENIZER_THREADS, thread_name_prefix="tokenize")
    )

    def __post_init__(self) -> None:
        self.trust = TrustPolicy.from_settings(self.settings)
        self.tokenizing = Tokenizing(self.tokenizer_pool, TOKENIZER_THREADS)

    def retry_after(self) -> dict[str, str]:
        """The Retry-After header the HTTP layer sends with a 503 it raises itself."""
        return {"Retry-After": str(self.settings.retry_after_s)}

    # -- models ------------------------------------------------------------------------------------------------
    def require_ready(self) -> ModelRegistry:
        if not self.ready or self.registry is None:
            raise NotReady("the models are not loaded (starting up or shutting down)")
        return self.registry

    def model(self, name: str | None) -> ModelRuntime:
        return self.require_ready().get(name)

    def batcher_for(self, rt: ModelRuntime) -> MicroBatcher:
        """The batcher of this very runtime. A request that resolved its model before a hot reload scores on that
        version, even when the swap happened while it was tokenizing."""
        batcher = self.batchers[rt.name]
        if batcher.runtime is rt:
            return batcher
        retiring = self.retiring.get(id(rt))
        if retiring is None or retiring.runtime is not rt:
            raise BatcherStopped(f"model {rt.name} {rt.version} was replaced while this request waited; retry")
        return retiring

    # -- admission -----------------------------------------------------------------------------------------------
    def check_texts(self, texts: list[str], where: Where, noun: str = "texts") -> None:
        """Items per request and characters per text (both 413 over HTTP)."""
        limit = self.settings.max_batch_items
        if len(texts) > limit:
            raise BatchTooLarge(f"{len(texts)} {noun}; the limit is {limit} per request")
        for i, text in enumerate(texts):
            self.check_length(text, where(i))

    def check_length(self, text: str, where: str) -> None:
        limit = self.settings.max_text_chars
        if len(text) > limit:
            raise TextTooLong(f"{where} has {len(text)} characters; the limit is {limit}")

    # -- scoring -------------------------------------------------------------------------------------------------
    async def encode(self, rt: ModelRuntime, texts: list[str], truncation: Truncation | None = None) -> list[Encoded]:
        if len(texts) == 1 and len(texts[0]) <= INLINE_CHARS:
            return rt.encode(texts, truncation)
        return await self.tokenizing.encode(rt, texts, truncation)

    async def score(self, rt: ModelRuntime, encoded: list[Encoded], where: Where, gone: Gone = None) -> np.ndarray:
        """Probabilities [N, labels] from the model's micro-batcher; each text's drift signals are recorded."""
        for i, enc in enumerate(encoded):
            if enc.num_tokens == 0:
                raise no_tokens(where(i))
        probs = await _unless_gone(gone, self.batcher_for(rt).submit(encoded), WATCH_AFTER_S)
        for enc, row in zip(encoded, probs):
            self.metrics.observe_text(rt.name, float(row[rt.positive]), self._unknown(rt, enc))
        return probs

    async def diagnose(
        self,
        rt: ModelRuntime,
        texts: list[str],
        encoded: list[Encoded],
        include_hidden: bool = False,
        attribution: bool = False,
        gone: Gone = None,
    ) -> list[tuple[np.ndarray, dict]]:
        """The diagnostics graph on the model's batcher, one text per worker call, bounded like the batcher's queue:
        at most `queue_size` texts in diagnostics and `max_attribution_texts` in occlusion attribution (T model rows
        of T tokens each) at once, past which requests are refused (Overloaded); stopped when the client leaves."""
        s = self.settings
        if self.diagnosing and self.diagnosing + len(texts) > s.queue_size:  # as MicroBatcher.submit
            raise Overloaded(
                f"too many diagnostics texts in progress ({self.diagnosing}, queue size {s.queue_size}); retry shortly"
            )
        # As ModelRuntime.diagnose: occlusion when asked for, or in place of exact contributions the graph lacks.
        occluding = len(texts) if attribution or "contribution" not in rt.diagnostic_outputs else 0
        if occluding and self.attributing and self.attributing + occluding > s.max_attribution_texts:
            raise Overloaded(
                f"too many texts in attribution ({self.attributing}, at most {s.max_attribution_texts} at once); retry shortly"
            )
        batcher = self.batcher_for(rt)

        async def each() -> list[tuple[np.ndarray, dict]]:
            return [
                await batcher.diagnose(text, enc, include_hidden, attribution, s.max_hidden_values)
                for text, enc in zip(texts, encoded)
            ]

        self.diagnosing += len(texts)
        self.attributing += occluding
        try:
            out = await _unless_gone(gone, each())
        finally:
            self.diagnosing -= len(texts)
            self.attributing -= occluding
        self.metrics.tokens.labels(rt.name, rt.provider).inc(sum(e.num_tokens for e in encoded))
        for enc, (probs, _) in zip(encoded, out):
            self.metrics.observe_text(rt.name, float(probs[rt.positive]), self._unknown(rt, enc))
        return out

    @staticmethod
    def _unknown(rt: ModelRuntime, enc: Encoded) -> float:
        return float(np.count_nonzero(enc.ids == rt.tokenizer.unk_id)) / max(enc.num_tokens, 1)

    def result(self, rt: ModelRuntime, enc: Encoded, probs: np.ndarray, report: dict | None = None) -> dict:
        """One text's answer in the response's field order, ready to serialize (no None values but an abstained
        label). The diagnostics report goes out as service/diagnostics.py built it: it is already in its schema's
        serialized form, nulls included (tests/service/test_diagnostics_schema.py checks that it round-trips through
        `DiagnosticsReport` unchanged). Validating it here cost more than the diagnostics graph's extra work (11 ms
        for a 260-token review)."""
        base = rt.result(enc, probs)
        out = {
            "label": base["label"],
            "score": base["score"],
            "probabilities": base["probabilities"],
            "model": {"name": rt.name, "version": rt.version},
            "num_tokens": base["num_tokens"],
            "truncated": base["truncated"],
        }
        self.trust.apply(out, enc, rt.tokenizer.unk_id)
        if report is not None:
            out["diagnostics"] = report
        return out

    async def classify(
        self,
        rt: ModelRuntime,
        texts: list[str],
        encoded: list[Encoded],
        where: Where,
        *,
        diagnostics: bool = False,
        include_hidden: bool = False,
        attribution: bool = False,
        gone: Gone = None,
    ) -> list[dict]:
        """Results of texts already checked and encoded: plain scoring, or the diagnostics graph when asked."""
        if diagnostics:
            for i, enc in enumerate(encoded):
                if enc.num_tokens == 0:
                    raise no_tokens(where(i))
            scored = await self.diagnose(rt, texts, encoded, include_hidden, attribution, gone)
            return [self.result(rt, enc, probs, report) for enc, (probs, report) in zip(encoded, scored)]
        probs = await self.score(rt, encoded, where, gone)
        return [self.result(rt, enc, row) for enc, row in zip(encoded, probs)]

    async def classify_items(
        self,
        rt: ModelRuntime,
        texts: list[str],
        where: Where,
        truncation: Truncation | None,
        diagnostics: bool = False,
        gone: Gone = None,
    ) -> list[dict]:
        """One result per text, where a text that cannot be scored (empty, not Unicode, too long, no tokens) gets
        `{"error": {"code", "message"}}` and the others are scored: a batch's per-item semantics (as the batch
        CLI's `--on-error skip`). Request-level refusals (overload, unknown model, client gone) still raise."""
        out: list[dict] = [{} for _ in texts]  # every slot is filled below: an error or a result
        todo = []
        for i, text in enumerate(texts):
            problem = text_problem(text)
            if problem is None:
                try:
                    self.check_length(text, where(i))
                except ServiceError as exc:
                    problem = exc.code, exc.message
            else:
                problem = problem[0], f"{where(i)}: {problem[1]}"
            if problem is not None:
                out[i] = {"error": {"code": problem[0], "message": problem[1]}}
            else:
                todo.append(i)
        encoded = await self.encode(rt, [texts[i] for i in todo], truncation) if todo else []
        scorable = []
        for i, enc in zip(todo, encoded):
            if enc.num_tokens == 0:
                err = no_tokens(where(i))
                out[i] = {"error": {"code": err.code, "message": err.message}}
            else:
                scorable.append((i, enc))
        if scorable:
            results = await self.classify(
                rt,
                [texts[i] for i, _ in scorable],
                [enc for _, enc in scorable],
                lambda k: where(scorable[k][0]),
                diagnostics=diagnostics,
                gone=gone,
            )
            for (i, _), result in zip(scorable, results):
                out[i] = result
        return out
