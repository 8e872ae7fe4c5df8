"""A concurrency-safe counterpart of PlanExe's ``LLMExecutor``.

PlanExe's executor walks its list of models, calls a stop callback after every attempt and
returns the first success; but it keeps the attempts of the current run on the instance,
so one instance cannot serve two calls at once. This one keeps every attempt in the call's
own frame, and sends each attempt through a :class:`~planexe_concurrency.fanout.FanOut`
(bounded concurrency, request rate, retries of transient errors).

>>> executor = ConcurrentLLMExecutor(models, fanout=FanOut(settings, task="Demo"))
>>> answers = executor.run_batch([lambda llm, q=q: ask(llm, q) for q in questions])

``models`` are any objects with ``create_llm()`` (PlanExe's ``LLMModelFromName`` fits).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Optional, Protocol, Sequence, TypeVar

from .fanout import FanOut, ItemContext, run_coroutine
from .resume import ItemCache

logger = logging.getLogger("planexe_concurrency")

R = TypeVar("R")


class ModelHandle(Protocol):
    def create_llm(self) -> Any: ...


@dataclass
class Attempt:
    """One try with one model (field names follow PlanExe's ``LLMAttempt``)."""

    stage: str
    llm_model: Any
    success: bool
    duration: float
    result: Optional[Any] = None
    exception: Optional[BaseException] = None


@dataclass
class StopCheck:
    """What the stop callback is given after each attempt (as PlanExe's ``ShouldStopCallbackParameters``)."""

    last_attempt: Attempt
    total_duration: float
    attempt_index: int
    total_attempts: int


class ExhaustedModelsError(Exception):
    """Every model failed for one call. The message follows PlanExe's ('Exhausted all LLMs')."""

    def __init__(self, attempts: Sequence[Attempt]) -> None:
        self.attempts = list(attempts)
        rows = "\n".join(
            f" - Attempt {i} with {a.llm_model!r} failed during '{a.stage}' stage: {a.exception!r}"
            for i, a in enumerate(self.attempts)
        )
        super().__init__(f"Failed to run. Exhausted all LLMs. Failure summary:\n{rows}")


class _CreateFailed(Exception):
    """Marks a failure inside ``create_llm()`` so the attempt is reported with stage 'create'."""


class ConcurrentLLMExecutor:
    """Fallback through ``models`` for each call; many calls at once through one :class:`FanOut`."""

    def __init__(
        self,
        models: Sequence[ModelHandle],
        *,
        fanout: FanOut,
        should_stop_callback: Callable[[StopCheck], None] | None = None,
        attempt_context: Callable[[], ContextManager[Any]] | None = None,
    ) -> None:
        """``attempt_context()`` is entered around each attempt's ``fn(llm)``, in the thread that makes it
        (e.g. instrumentation tags a host puts on every attempt)."""
        if not models:
            raise ValueError("No LLMs provided")
        if should_stop_callback is not None and not callable(should_stop_callback):
            raise TypeError("should_stop_callback must be callable")
        self.models = list(models)
        self.fanout = fanout
        self.should_stop_callback = should_stop_callback
        self.attempt_context = attempt_context

    # -- one call --------------------------------------------------------------------
    def run(self, fn: Callable[[Any], R]) -> R:
        return run_coroutine(self.run_async(fn))

    async def run_async(self, fn: Callable[[Any], R]) -> R:
        return (await self.run_batch_async([fn]))[0]

    # -- many independent calls -------------------------------------------------------
    def run_batch(
        self,
        fns: Sequence[Callable[[Any], R]],
        *,
        caches: Sequence[ItemCache[R] | None] | None = None,
        labels: Sequence[str] | None = None,
    ) -> list[R]:
        return run_coroutine(self.run_batch_async(fns, caches=caches, labels=labels))

    async def run_batch_async(
        self,
        fns: Sequence[Callable[[Any], R]],
        *,
        caches: Sequence[ItemCache[R] | None] | None = None,
        labels: Sequence[str] | None = None,
    ) -> list[R]:
        """Run every ``fn(llm)`` with fallback; results in input order (see FanOut for failures)."""

        def job_for(fn: Callable[[Any], R]) -> Callable[[ItemContext], Any]:
            async def job(ctx: ItemContext) -> R:
                return await self._walk_models(ctx, fn)

            return job

        return await self.fanout.run_jobs_async([job_for(fn) for fn in fns], caches=caches, labels=labels)

    async def _walk_models(self, ctx: ItemContext, fn: Callable[[Any], R]) -> R:
        attempts: list[Attempt] = []  # per call, never on self: calls run concurrently
        overall = time.perf_counter()
        stop = self.fanout.stop_exceptions
        for index, model in enumerate(self.models):
            started = time.perf_counter()

            def attempt_call(model: ModelHandle = model) -> R:
                try:
                    llm = model.create_llm()
                except Exception as exc:
                    raise _CreateFailed(str(exc)) from exc
                with self.attempt_context() if self.attempt_context is not None else contextlib.nullcontext():
                    return fn(llm)

            try:
                result = await ctx.call(attempt_call)
                attempt = Attempt("execute", model, True, time.perf_counter() - started, result=result)
            except stop:
                raise
            except Exception as exc:
                stage = "create" if isinstance(exc, _CreateFailed) else "execute"
                cause = exc.__cause__ if isinstance(exc, _CreateFailed) else exc
                logger.warning(
                    "task=%s item=%d model=%r %s failed: %r",
                    self.fanout.task, ctx.index + 1, model, stage, cause,
                )
                attempt = Attempt(stage, model, False, time.perf_counter() - started, exception=cause)
            attempts.append(attempt)
            if self.should_stop_callback is not None:
                check = StopCheck(attempt, time.perf_counter() - overall, index, len(self.models))
                await ctx.to_thread(lambda: self.should_stop_callback(check))  # type: ignore[misc]
            if attempt.success:
                return result
        raise ExhaustedModelsError(attempts)
