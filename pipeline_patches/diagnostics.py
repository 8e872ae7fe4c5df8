"""PremiseAttackTask: its five lenses asked at once, with PlanExe's own code building and assembling them.

``PremiseAttack.execute(llm_executor, prompt)`` asks one question per lens, each through
``llm_executor.run(fn)``, skips a lens whose call fails, and assembles the answers. Its
prompts and lens list live inside PlanExe, so instead of rebuilding them we run PlanExe's
``execute`` twice around the engine:

1. *record*: an executor whose ``run(fn)`` keeps ``fn`` and declines to call it (PlanExe
   logs the declined call as a failed lens and moves on, so every lens is recorded);
2. the recorded calls go through the engine side by side (fallback, retries, budget, stop);
3. *replay*: an executor whose ``run(fn)`` hands back the i-th answer (or raises the i-th
   error), so PlanExe assembles exactly what its own loop would have.

PlanExe defines each ``fn`` inside its loop, so its closure would see the last lens's
messages by the time it runs; :func:`frozen` copies the closure as it was when recorded.
The five calls are not saved item by item: a rerun asks them again.
"""
from __future__ import annotations

import logging
import types
from dataclasses import replace
from typing import Any, Callable

from planexe_concurrency.fanout import FanOutError

from .base import ConcurrentTask
from .planexe import load_planexe

pe = load_planexe()
P = pe.pipeline


class _Declined(Exception):
    """Raised by the recording executor: the call is kept for later, not made now."""


def frozen(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its closure variables bound to their current values (not to the loop's later ones)."""
    if not fn.__closure__:
        return fn
    cells = []
    for cell in fn.__closure__:
        try:
            cells.append(types.CellType(cell.cell_contents))
        except ValueError:  # an empty cell stays as it is
            cells.append(cell)
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, tuple(cells))
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


class _Recorder(pe.LLMExecutor):  # type: ignore[misc, name-defined]
    def __init__(self, models: list[Any]) -> None:
        super().__init__(llm_models=models)  # PlanExe checks the type; these models are never used
        self.calls: list[Callable[[Any], Any]] = []

    def run(self, execute_function: Callable[[Any], Any]) -> Any:
        self.calls.append(frozen(execute_function))
        raise _Declined("recorded for the concurrent run")


class _Replayer(pe.LLMExecutor):  # type: ignore[misc, name-defined]
    def __init__(self, models: list[Any], outcomes: list[tuple[bool, Any]]) -> None:
        super().__init__(llm_models=models)
        self.outcomes = list(outcomes)

    def run(self, execute_function: Callable[[Any], Any]) -> Any:
        ok, value = self.outcomes.pop(0)
        if not ok:
            raise value
        return value


class PremiseAttackTask(ConcurrentTask, P.PremiseAttackTask):
    def run_inner(self) -> None:
        with self.input().open("r") as f:
            plan_prompt = f.read()
        planexe_log = logging.getLogger(P.PremiseAttack.__module__)

        models = pe.LLMModelFromName.from_names(list(self.llm_models))
        recorder = _Recorder(models)
        was_disabled, planexe_log.disabled = planexe_log.disabled, True  # the declined calls are not errors
        try:
            P.PremiseAttack.execute(recorder, plan_prompt)
        finally:
            planexe_log.disabled = was_disabled

        # PlanExe skips a failed lens and carries on; so does the fan-out.
        settings = replace(self.concurrency_settings(), failure_mode="continue_on_error")
        labels = [f"lens {i + 1}" for i in range(len(recorder.calls))]
        try:
            results = self.make_executor(settings).run_batch(recorder.calls, labels=labels)
            outcomes: list[tuple[bool, Any]] = [(True, r) for r in results]
        except FanOutError as exc:
            self._log_failures(exc.failures, len(recorder.calls))
            errors = {f.index: f.error for f in exc.failures}
            outcomes = [(i not in errors, errors.get(i, r)) for i, r in enumerate(exc.results)]

        premise_attack = P.PremiseAttack.execute(_Replayer(models, outcomes), plan_prompt)
        premise_attack.save_raw(self.output()["raw"].path)
        premise_attack.save_markdown(self.output()["markdown"].path)
