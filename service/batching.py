"""Dynamic micro-batching: concurrent requests for one model are coalesced into few onnxruntime calls.

Requests submit *jobs* (one text, or all texts of a batch request) to a bounded queue. One worker per model takes
everything that arrived while its previous call ran - and, when traffic overlaps, lets the oldest job wait up to
`max_wait_ms` for company - sorts those texts by length and cuts them into onnxruntime calls bounded by `max_items`
and a padded-token budget (items x longest). A call also ends where lengths jump, so a short review never waits for,
nor is padded to, a long one. Calls run in a single background thread, off the event loop; results go back in each
job's own order.

Diagnostics run here too (`diagnose`): one text per worker-thread call in the shared pool, beside the scoring
thread, so plain scoring never waits for them, and they count as this model's work in flight (a retiring batcher
after a hot reload is stopped only once they are done). Their admission is the scoring core's (service/scoring.py).

Failure rules: a full queue is refused at once (`QueueFull`, the route answers 503 + Retry-After; a job bigger
than the whole queue is taken when the queue is empty); an exception inside onnxruntime fails only the jobs in that
call; a job whose request was cancelled (client gone) gives its queue slots back and is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.exceptions import NoTokens, NotReady, Overloaded
from service.metrics import Metrics
from service.runtime import ModelRuntime, plan_calls, release_freed_memory
from service.tokenization import Encoded

log = logging.getLogger("sentiment.batching")
RELEASE_AFTER_S = 1.0  # idle this long after work, a model's worker hands freed memory back to the OS


class QueueFull(Overloaded):
    """More texts waiting than the queue holds."""


class BatcherStopped(NotReady):
    """The service is shutting down (or this model's version was replaced)."""


# eq=False: jobs are compared by identity. The generated __eq__ would compare token-id arrays, which raises for
# arrays of 2+ tokens, so `deque.remove` of a cancelled job failed and its queue slots stayed taken.
@dataclass(eq=False)
class _Job:
    encoded: list[Encoded]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    remaining: int = 0
    trace: object = None  # the request's tracing context, when tracing is on

    @property
    def size(self) -> int:
        return len(self.encoded)


class MicroBatcher:
    tracer = None  # a service.tracing.BatchTracer when tracing is on; None costs one test per job and call

    def __init__(
        self,
        runtime: ModelRuntime,
        *,
        max_items: int,
        max_tokens: int,
        max_wait_ms: float,
        queue_size: int,
        metrics: Metrics | None = None,
    ):
        self.runtime = runtime
        self.max_items, self.max_tokens = max_items, max_tokens
        self.max_wait = max_wait_ms / 1000
        self.queue_size = queue_size
        self.metrics = metrics
        self._jobs: deque[_Job] = deque()
        self._active: list[_Job] = []  # taken by the worker, not yet answered
        self._diagnosing = 0  # texts in a diagnostics call right now
        self._last_window = 0  # jobs in the previous window
        self._waiting = 0  # texts in `_jobs`
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None
        # One thread: calls for one model run one after another, and the event loop stays free meanwhile.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{runtime.name}")
        self._labels = (runtime.name, runtime.provider)
        self._release: asyncio.TimerHandle | None = None

    @property
    def depth(self) -> int:
        return self._waiting

    @property
    def in_flight(self) -> int:
        """Texts taken by the worker and not yet answered, plus texts in a diagnostics call."""
        return sum(job.size for job in self._active) + self._diagnosing

    @property
    def busy(self) -> bool:
        """Jobs waiting, being scored or in diagnostics (a retiring batcher is stopped once this is False:
        service/reload.py)."""
        return bool(self._jobs or self._active or self._diagnosing)

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        if not self.running:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.runtime.name}")

    async def stop(self) -> None:
        """Stop the worker; texts still waiting fail with `BatcherStopped`."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        if self._release is not None:
            self._release.cancel()
        self._fail(list(self._jobs) + self._active, BatcherStopped("the service is shutting down"))
        self._jobs.clear()
        self._set_waiting(0)
        self._executor.shutdown(wait=False)

    async def submit(self, encoded: list[Encoded]) -> np.ndarray:
        """Probabilities [len(encoded), labels] in input order, computed together with other requests' texts."""
        if not self.running:
            raise BatcherStopped("the model worker is not running")
        if not encoded:
            return np.empty((0, len(self.runtime.labels)), dtype=np.float32)
        if any(e.num_tokens < 1 for e in encoded):
            raise NoTokens("text has no tokens after cleaning")  # would fail everyone else's call
        # A job bigger than the whole queue (a batch request over `queue_size` texts) gets in when nothing waits:
        # refusing it "until the queue drains" would refuse it forever.
        if self._waiting and self._waiting + len(encoded) > self.queue_size:
            raise QueueFull(
                f"too many texts waiting ({self._waiting} texts are already waiting (queue size "
                f"{self.queue_size})); retry shortly"
            )
        job = _Job(encoded, asyncio.get_running_loop().create_future(), remaining=len(encoded))
        if self.tracer is not None:
            job.trace = self.tracer.submitted(self.runtime, encoded)
        self._jobs.append(job)
        self._set_waiting(self._waiting + job.size)
        self._wakeup.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            # The client went away: give the slots back if the worker has not taken the job yet.
            try:
                self._jobs.remove(job)
                self._set_waiting(self._waiting - job.size)
            except ValueError:
                pass
            raise

    async def diagnose(
        self, text: str, enc: Encoded, include_hidden: bool, attribution: bool, max_hidden_values: int
    ) -> tuple[np.ndarray, dict]:
        """One text through the diagnostics graph, in a worker thread of the shared pool. A text already in a thread
        cannot be interrupted: cancelling waits for it, so `in_flight` never undercounts the work really running."""
        if not self.running:
            raise BatcherStopped("the model worker is not running")
        call = asyncio.get_running_loop().run_in_executor(
            None, self.runtime.diagnose, text, enc, include_hidden, attribution, max_hidden_values
        )
        self._diagnosing += 1
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            await asyncio.wait([call])
            raise
        finally:
            self._diagnosing -= 1
            self._release_when_idle()

    @staticmethod
    def _fail(jobs: list[_Job], exc: BaseException) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(exc)

    def _set_waiting(self, value: int) -> None:
        self._waiting = value
        if self.metrics:
            self.metrics.queue_depth.labels(self.runtime.name).set(value)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._jobs:
                continue
            # Let the oldest job wait up to max_wait for company, unless a full call is already waiting - and only
            # when requests overlap (the last window held several jobs): a lone client would just wait for nobody.
            deadline = self._jobs[0].enqueued + (self.max_wait if self._last_window > 1 else 0.0)
            while self._waiting < self.max_items and (left := deadline - time.perf_counter()) > 0:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except asyncio.TimeoutError:
                    break
                self._wakeup.clear()
            self._active = self._take()
            self._last_window = len(self._active)
            try:
                await self._process(self._active)
            except Exception as exc:  # a bug here must not kill the worker and hang every later request
                log.exception("micro-batch failed")
                self._fail(self._active, exc)
            self._active = []
            if self._jobs:
                self._wakeup.set()
            else:
                self._release_when_idle()

    def _release_when_idle(self) -> None:
        """(Re)arm the timer that releases freed memory once this model has been idle for RELEASE_AFTER_S; a
        timer, not a task, so a busy worker pays one re-arm per window."""
        if self._release is not None:
            self._release.cancel()
        self._release = asyncio.get_running_loop().call_later(RELEASE_AFTER_S, self._release_now)

    def _release_now(self) -> None:
        self._release = None
        if self.busy:  # work arrived meanwhile: its end re-arms the timer
            return
        self._executor.submit(release_freed_memory)  # the model's own thread: never during one of its calls

    def _take(self) -> list[_Job]:
        """Waiting jobs in arrival order, up to one window's worth (at least one job, whatever its size)."""
        jobs: list[_Job] = []
        items = 0
        window = max(self.max_items, 1)
        while self._jobs and (not jobs or items + self._jobs[0].size <= window):
            job = self._jobs.popleft()
            self._set_waiting(self._waiting - job.size)
            if job.future.done():  # cancelled while waiting
                continue
            jobs.append(job)
            items += job.size
        return jobs

    async def _process(self, jobs: list[_Job]) -> None:
        now = time.perf_counter()
        items: list[tuple[tuple[int, int], int]] = []  # ((job, text), tokens)
        outputs = [np.empty((job.size, len(self.runtime.labels)), dtype=np.float32) for job in jobs]
        for j, job in enumerate(jobs):
            if self.metrics:
                self.metrics.queue_wait.labels(self.runtime.name).observe(now - job.enqueued)
            if self.tracer is not None:
                self.tracer.waited(job.trace, job.enqueued, now)
            items += [((j, i), e.num_tokens) for i, e in enumerate(job.encoded)]
        loop = asyncio.get_running_loop()
        for call in plan_calls(items, self.max_items, self.max_tokens):
            live = [(j, i) for (j, i), _ in call if not jobs[j].future.done()]
            if not live:
                continue
            encoded = [jobs[j].encoded[i] for j, i in live]
            started = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self._executor, self.runtime.run_batch, encoded)
            except Exception as exc:  # one failed call fails only its own jobs
                log.exception("onnxruntime call of %d texts failed", len(encoded))
                self._fail([jobs[j] for j in {j for j, _ in live}], exc)
                continue
            ended = time.perf_counter()
            self._record(encoded, ended - started)
            if self.tracer is not None:
                self.tracer.inferred(
                    [jobs[j].trace for j in dict.fromkeys(j for j, _ in live)],
                    started,
                    ended,
                    self.runtime,
                    len(encoded),
                    sum(e.num_tokens for e in encoded),
                )
            for row, (j, i) in enumerate(live):
                job = jobs[j]
                outputs[j][i] = probs[row]
                job.remaining -= 1
                if job.remaining == 0 and not job.future.done():
                    job.future.set_result(outputs[j])

    def _record(self, encoded: list[Encoded], seconds: float) -> None:
        if self.metrics:
            self.metrics.batch_size.labels(*self._labels).observe(len(encoded))
            self.metrics.inference.labels(*self._labels).observe(seconds)
            self.metrics.tokens.labels(*self._labels).inc(sum(e.num_tokens for e in encoded))
