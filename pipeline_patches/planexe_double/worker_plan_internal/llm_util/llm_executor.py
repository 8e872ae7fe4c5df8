"""Run a function with the first LLM that works, trying the models in order (PlanExe's fallback).

Semantics the plugin relies on, mirrored from PlanExe's ``LLMExecutor``:

* each model gets one attempt, in order; ``create_llm()`` is called per attempt;
* after every attempt (success or failure) the optional ``should_stop_callback`` is called;
* the first success is returned;
* ``PipelineStopRequested`` raised by the function or by the callback propagates unwrapped;
* when every model failed, an ``Exception`` whose message contains 'Exhausted all LLMs' is raised.

The executor keeps the attempts of its current ``run()`` in ``self.attempts``, like PlanExe's:
an instance is therefore not safe to share between concurrent calls.
"""
from __future__ import annotations

import inspect
import logging
import time
import typing
from dataclasses import dataclass
from typing import Any, Callable, Optional

from llama_index.core.llms.llm import LLM

from worker_plan_internal.llm_factory import get_llm

logger = logging.getLogger(__name__)

__all__ = [
    "LLMAttempt",
    "LLMExecutor",
    "LLMModelBase",
    "LLMModelFromName",
    "LLMModelWithInstance",
    "PipelineStopRequested",
    "ShouldStopCallbackParameters",
]


class PipelineStopRequested(RuntimeError):
    """The user asked the pipeline to stop; never wrapped, so every layer can tell it from a failure."""


class LLMModelBase:
    """Something that can make an LLM for one attempt."""

    def create_llm(self) -> LLM:
        raise NotImplementedError("Subclasses must implement create_llm()")


class LLMModelFromName(LLMModelBase):
    """A model known by name to ``llm_factory.get_llm``; a fresh LLM per attempt."""

    def __init__(self, name: str):
        self.name = name

    def create_llm(self) -> LLM:
        return get_llm(self.name)

    def __repr__(self) -> str:
        return f"LLMModelFromName(name={self.name!r})"

    @classmethod
    def from_names(cls, names: list[str]) -> list[LLMModelBase]:
        return [cls(name) for name in names]


class LLMModelWithInstance(LLMModelBase):
    """An LLM instance made elsewhere (tests, notebooks); every attempt gets the same one."""

    def __init__(self, llm: LLM):
        self.llm = llm

    def create_llm(self) -> LLM:
        return self.llm

    def __repr__(self) -> str:
        return f"LLMModelWithInstance(llm={type(self.llm).__name__})"

    @classmethod
    def from_instances(cls, llms: list[LLM]) -> list[LLMModelBase]:
        return [cls(llm) for llm in llms]


@dataclass
class LLMAttempt:
    """How one attempt went: ``stage`` is 'create' (making the LLM failed) or 'execute'."""

    stage: str
    llm_model: LLMModelBase
    success: bool
    duration: float
    result: Optional[Any] = None
    exception: Optional[Exception] = None


@dataclass
class ShouldStopCallbackParameters:
    """What the stop callback is told after each attempt."""

    last_attempt: LLMAttempt
    total_duration: float
    attempt_index: int
    total_attempts: int


class LLMExecutor:
    """Try ``execute_function`` with each model in turn until one succeeds."""

    def __init__(
        self,
        llm_models: list[LLMModelBase],
        should_stop_callback: Optional[Callable[[ShouldStopCallbackParameters], None]] = None,
    ):
        if not llm_models:
            raise ValueError("No LLMs provided")
        if should_stop_callback is not None and not callable(should_stop_callback):
            raise TypeError("should_stop_callback must be callable")
        self.llm_models = llm_models
        self.should_stop_callback = should_stop_callback
        self.attempts: list[LLMAttempt] = []

    @property
    def attempt_count(self) -> int:
        return len(self.attempts)

    def run(self, execute_function: Callable[[LLM], Any]) -> Any:
        self._validate_execute_function(execute_function)
        self.attempts = []  # per-run state, as in PlanExe
        started = time.perf_counter()
        for index, llm_model in enumerate(self.llm_models):
            attempt = self._try_one_attempt(llm_model, execute_function)
            self.attempts.append(attempt)
            self._check_stop_callback(attempt, started, index)
            if attempt.success:
                return attempt.result
        self._raise_final_exception()

    @staticmethod
    def _validate_execute_function(execute_function: Callable[[LLM], Any]) -> None:
        """One parameter, and if it is annotated, the annotation must be an LLM type."""
        if not callable(execute_function):
            raise TypeError("execute_function must be callable")
        params = list(inspect.signature(execute_function).parameters.values())
        if len(params) != 1:
            raise TypeError("execute_function must take exactly one parameter (the LLM)")
        try:
            hint = typing.get_type_hints(execute_function).get(params[0].name)
        except (NameError, TypeError) as exc:
            raise TypeError(f"Could not resolve the type hints of execute_function: {exc}") from exc
        if hint is not None and not (isinstance(hint, type) and issubclass(hint, LLM)):
            raise TypeError(f"execute_function's parameter must be an LLM, not {hint!r}")

    @staticmethod
    def _try_one_attempt(llm_model: LLMModelBase, execute_function: Callable[[LLM], Any]) -> LLMAttempt:
        started = time.perf_counter()
        try:
            llm = llm_model.create_llm()
        except Exception as exc:
            logger.error("LLMExecutor: could not create %r: %r", llm_model, exc)
            return LLMAttempt("create", llm_model, False, time.perf_counter() - started, exception=exc)
        try:
            result = execute_function(llm)
        except PipelineStopRequested:
            raise
        except Exception as exc:
            logger.error("LLMExecutor: %r failed: %r", llm_model, exc, exc_info=True)
            return LLMAttempt("execute", llm_model, False, time.perf_counter() - started, exception=exc)
        return LLMAttempt("execute", llm_model, True, time.perf_counter() - started, result=result)

    def _check_stop_callback(self, last_attempt: LLMAttempt, started: float, attempt_index: int) -> None:
        if self.should_stop_callback is None:
            return
        self.should_stop_callback(
            ShouldStopCallbackParameters(
                last_attempt=last_attempt,
                total_duration=time.perf_counter() - started,
                attempt_index=attempt_index,
                total_attempts=len(self.llm_models),
            )
        )

    def _raise_final_exception(self) -> typing.NoReturn:
        lines = [
            f" - attempt {i} with {a.llm_model!r} failed at '{a.stage}': {a.exception!r}"
            for i, a in enumerate(self.attempts)
        ]
        raise Exception("Exhausted all LLMs; none succeeded:\n" + "\n".join(lines))
