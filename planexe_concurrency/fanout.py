"""Run independent synchronous calls concurrently and get their results back in order.

>>> from planexe_concurrency.fanout import FanOut
>>> from planexe_concurrency.config import FanOutSettings
>>> FanOut(FanOutSettings(max_parallel=4), task="Demo").map([lambda: 1, lambda: 2, lambda: 3])
[1, 2, 3]

The core is asyncio: a semaphore bounds the calls in flight (``max_parallel``), a
:class:`~planexe_concurrency.ratelimit.RequestPacer` keeps to the request budget, tenacity
retries transient errors with backoff, and a private thread pool runs the synchronous
function (PlanExe's are all synchronous). Each run gets a fresh event loop, semaphore,
limiter and pool: nothing is shared between runs or kept in globals.

Failure handling:

* ``fail_fast``: the first failed item cancels the items not yet started and raises
  :class:`ItemFailedError` naming it, once the calls already in flight have returned.
* ``continue_on_error``: every item runs; :class:`FanOutError` then lists every failure
  and carries the results of the items that succeeded.
* A *stop* exception (for PlanExe, ``PipelineStopRequested``) is never retried or
  wrapped: it cancels everything and propagates as it is, in either mode.

Warning: a thread cannot be interrupted, so "cancel" means "do not start": a call
already in flight finishes (one call's latency) before the run returns. The run never
returns while one of its threads is still running.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, Sequence, TypeVar

from tenacity import RetryCallState

from .config import FanOutSettings
from .events import EventBus, ItemEvent, ItemState, Listener, make_event, one_line
from .ratelimit import RequestPacer, SharedInFlightCap, SharedSlotFile, is_overload, request_priority
from .resume import ItemCache
from .retry import build_retrying, retry_after_seconds

logger = logging.getLogger("planexe_concurrency")

R = TypeVar("R")
T = TypeVar("T")


@dataclass(frozen=True)
class ItemFailure:
    index: int
    label: str
    error: BaseException

    def describe(self) -> str:
        name = f" ({self.label})" if self.label else ""
        return f"item {self.index + 1}{name}: {type(self.error).__name__}: {self.error}"


class ItemFailedError(RuntimeError):
    """fail_fast: one item failed; the run was stopped. ``__cause__`` is the item's error."""

    def __init__(self, task: str, failure: ItemFailure) -> None:
        self.task = task
        self.failure = failure
        self.index = failure.index
        super().__init__(f"{task}: {failure.describe()}")


class FanOutError(RuntimeError):
    """continue_on_error: every item ran and these failed. ``results`` holds None for them."""

    def __init__(self, task: str, failures: Sequence[ItemFailure], results: list[Any]) -> None:
        self.task = task
        self.failures = list(failures)
        self.results = results
        lines = "\n".join(f"  - {f.describe()}" for f in self.failures)
        super().__init__(f"{task}: {len(self.failures)} of {len(results)} items failed:\n{lines}")


class ItemContext:
    """What one item's job gets: its identity, and :meth:`call` to make a limited, retried call."""

    __slots__ = ("index", "label", "attempts", "errors", "_run")

    def __init__(self, run: "_Run", index: int, label: str) -> None:
        self.index = index
        self.label = label
        self.attempts = 0
        self.errors: list[str] = []  # every failed attempt's error, for the line that gives the call up
        self._run = run

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a worker thread under the concurrency bound and the rate limit, retrying transient errors."""
        return await self._run.call(self, fn)

    async def to_thread(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in this run's pool without limits or retries (file I/O, stop callbacks)."""
        return await self._run.loop.run_in_executor(self._run.pool, fn)


Job = Callable[[ItemContext], Awaitable[R]]


class FanOut:
    """Concurrent, ordered, retried execution of independent items. See the module docstring."""

    __slots__ = (
        "settings", "task", "bus", "stop_exceptions", "shared_slots", "sleep", "in_flight", "priority", "in_flight_per_request",
    )

    def __init__(
        self,
        settings: FanOutSettings,
        *,
        task: str,
        listeners: Sequence[Listener] = (),
        stop_exceptions: tuple[type[BaseException], ...] = (),
        shared_slots: SharedSlotFile | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        in_flight: SharedInFlightCap | None = None,
        priority: float = 0.0,
        in_flight_per_request: bool = False,
    ) -> None:
        self.settings = settings
        self.in_flight = in_flight
        self.priority = priority  # the waiting order for in-flight and budget slots: higher first
        # True: the cap's slot is held by each request, not the attempt (the caller installed
        # ratelimit.gate_llm_requests with this cap); the attempt still reports to it.
        self.in_flight_per_request = in_flight_per_request
        self.task = task
        self.bus = EventBus(listeners)
        self.stop_exceptions = stop_exceptions
        self.shared_slots = shared_slots
        self.sleep = sleep

    # -- synchronous entry points ------------------------------------------------------
    def map(
        self,
        fns: Sequence[Callable[[], R]],
        *,
        caches: Sequence[ItemCache[R] | None] | None = None,
        labels: Sequence[str] | None = None,
    ) -> list[R]:
        """Call each function once (plus retries); results in input order."""
        return run_coroutine(self.map_async(fns, caches=caches, labels=labels))

    def run_jobs(
        self,
        jobs: Sequence[Job[R]],
        *,
        caches: Sequence[ItemCache[R] | None] | None = None,
        labels: Sequence[str] | None = None,
    ) -> list[R]:
        return run_coroutine(self.run_jobs_async(jobs, caches=caches, labels=labels))

    # -- asynchronous entry points ---------------------------------------------------
    async def map_async(
        self,
        fns: Sequence[Callable[[], R]],
        *,
        caches: Sequence[ItemCache[R] | None] | None = None,
        labels: Sequence[str] | None = None,
    ) -> list[R]:
        def job_for(fn: Callable[[], R]) -> Job[R]:
            async def job(ctx: ItemContext) -> R:
                return await ctx.call(fn)

            return job

        return await self.run_jobs_async([job_for(fn) for fn in fns], caches=caches, labels=labels)

    async def run_jobs_async(
        self,
        jobs: Sequence[Job[R]],
        *,
        caches: Sequence[ItemCache[R] | None] | None = None,
        labels: Sequence[str] | None = None,
    ) -> list[R]:
        """Run each job (a coroutine function of an :class:`ItemContext`); results in input order."""
        n = len(jobs)
        if caches is not None and len(caches) != n:
            raise ValueError(f"{self.task}: {len(caches)} caches for {n} items")
        if labels is not None and len(labels) != n:
            raise ValueError(f"{self.task}: {len(labels)} labels for {n} items")
        if n == 0:
            return []
        run = _Run(self, n)
        try:
            return await run.execute(jobs, caches or [None] * n, labels or [""] * n)
        finally:
            await run.close()


class _Run:
    """The per-run state of one :meth:`FanOut.run_jobs_async` call (its loop, semaphore, pool)."""

    def __init__(self, fan: FanOut, total: int) -> None:
        self.fan = fan
        self.total = total
        self.loop = asyncio.get_running_loop()
        width = min(fan.settings.max_parallel, total)
        if fan.in_flight is not None:
            # No more threads than the run may have calls in flight: a thread beyond that would
            # only wait, and build an HTTP client of its own (the warm-up primes that many).
            width = min(width, fan.in_flight.limit)
        self.semaphore = asyncio.Semaphore(width)
        # +1 thread so that cache I/O and stop callbacks never wait behind LLM calls.
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=width + 1, thread_name_prefix=f"fanout-{fan.task}"
        )
        self.pacer = RequestPacer(fan.settings.requests_per_minute, fan.shared_slots, fan.sleep)

    def emit(self, index: int, state: ItemState, **kwargs: Any) -> None:
        self.fan.bus.emit(make_event(self.fan.task, index, self.total, state, **kwargs))

    async def call(self, ctx: ItemContext, fn: Callable[[], T]) -> T:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            logger.warning(
                "task=%s item=%d/%d attempt=%d transient error, retrying in %.2fs: %r",
                self.fan.task, ctx.index + 1, self.total, ctx.attempts, wait, exc,
            )

        retrying = build_retrying(
            self.fan.settings.retry,
            never_retry=self.fan.stop_exceptions,
            sleep=self.fan.sleep,
            before_sleep=before_sleep,
        )
        async for attempt in retrying:
            with attempt:
                async with self.semaphore:
                    await self.pacer.acquire()
                    async with self._in_flight_slot():
                        ctx.attempts += 1
                        cap = self.fan.in_flight
                        limit = {"limit": cap.current_limit()} if cap is not None else {}
                        self.emit(ctx.index, ItemState.RUNNING, attempt=ctx.attempts, label=ctx.label, **limit)
                        try:
                            result = await self.loop.run_in_executor(self.pool, self._with_priority, fn)
                        except Exception as exc:
                            ctx.errors.append(f"{ctx.attempts}) {type(exc).__name__}: {exc}")
                            if cap is not None and is_overload(exc):
                                cap.overloaded(retry_after_seconds(exc))
                            raise
                        if cap is not None:
                            cap.succeeded()
        return result  # type: ignore[possibly-undefined]  # reraise=True: we get here only on success

    def _in_flight_slot(self) -> Any:
        """The run-wide cap on calls in flight (``max_in_flight``), held for one attempt only:
        a backoff sleep or a wait for the request budget holds no slot. (Per request instead,
        when the requests hold it themselves.)"""
        cap = self.fan.in_flight
        if cap is None or self.fan.in_flight_per_request:
            return contextlib.nullcontext()
        return cap.hold(self.fan.sleep, self.fan.priority)

    def _with_priority(self, fn: Callable[[], T]) -> T:
        """``fn`` in a pool thread whose requests wait for slots with this fan-out's priority."""
        with request_priority(self.fan.priority):
            return fn()

    async def _one(self, job: Job[R], index: int, label: str, cache: ItemCache[R] | None) -> R:
        started = time.perf_counter()
        ctx = ItemContext(self, index, label)
        if cache is not None:
            who = f"task={self.fan.task} item={index + 1}/{self.total}"
            found, value = await self.loop.run_in_executor(self.pool, cache.get, who)
            if found:
                self.emit(index, ItemState.COMPLETED, label=label, cached=True, duration=time.perf_counter() - started)
                return value  # type: ignore[return-value]
        try:
            result = await job(ctx)
            if cache is not None:
                await self.loop.run_in_executor(self.pool, cache.put, result)
        except asyncio.CancelledError:
            self.emit(index, ItemState.CANCELLED, label=label, attempt=ctx.attempts)
            raise
        except BaseException as exc:
            # Given up: one line (the listener logs it at WARNING) with every attempt's error.
            tried = f" [every attempt: {'; '.join(ctx.errors)}]" if len(ctx.errors) > 1 else ""
            self.emit(
                index, ItemState.FAILED, label=label, attempt=ctx.attempts,
                duration=time.perf_counter() - started, error=one_line(f"{type(exc).__name__}: {exc}")[:500] + tried[:1500],
            )
            raise
        self.emit(index, ItemState.COMPLETED, label=label, attempt=ctx.attempts, duration=time.perf_counter() - started)
        return result

    async def execute(
        self, jobs: Sequence[Job[R]], caches: Sequence[ItemCache[R] | None], labels: Sequence[str]
    ) -> list[R]:
        for i, label in enumerate(labels):
            self.emit(i, ItemState.PENDING, label=label)
        tasks = [
            asyncio.ensure_future(self._one(job, i, labels[i], caches[i])) for i, job in enumerate(jobs)
        ]
        index_of = {t: i for i, t in enumerate(tasks)}
        fail_fast = self.fan.settings.failure_mode == "fail_fast"
        failures: list[ItemFailure] = []
        pending: set[asyncio.Future[Any]] = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in sorted(done, key=index_of.__getitem__):
                    exc = t.exception()
                    if exc is None:
                        continue
                    if isinstance(exc, self.fan.stop_exceptions) or not isinstance(exc, Exception):
                        await self._cancel(pending)
                        raise exc
                    failures.append(ItemFailure(index_of[t], labels[index_of[t]], exc))
                if failures and fail_fast:
                    # Report the failure a sequential loop would have hit first: items after
                    # the lowest failed one are cancelled, items before it may still finish
                    # (they are in flight already; a thread cannot be interrupted anyway).
                    first = min(failures, key=lambda f: f.index)
                    later = {t for t in pending if index_of[t] > first.index}
                    await self._cancel(later)
                    pending -= later
            if failures and fail_fast:
                first = min(failures, key=lambda f: f.index)
                raise ItemFailedError(self.fan.task, first) from first.error
        except asyncio.CancelledError:
            await self._cancel(pending)
            raise
        results = [None if t.exception() else t.result() for t in tasks]
        if failures:
            failures.sort(key=lambda f: f.index)
            raise FanOutError(self.fan.task, failures, results)
        return results  # type: ignore[return-value]

    async def _cancel(self, pending: set[asyncio.Future[Any]]) -> None:
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        # Wait for calls already in flight: a thread cannot be interrupted, and a run that
        # returned while its threads still ran could race with the caller's file writes.
        await asyncio.shield(asyncio.to_thread(self.pool.shutdown, wait=True, cancel_futures=True))


def run_coroutine(coro: Awaitable[T]) -> T:
    """Run ``coro`` on a fresh event loop; from inside a running loop, on a fresh loop in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False  # the usual case: run it here (outside the except, so its errors carry no context)
    else:
        running = True
    if not running:
        return asyncio.run(coro)  # type: ignore[arg-type]
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)  # type: ignore[arg-type]
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="fanout-runner")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
