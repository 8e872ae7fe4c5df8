"""The Luigi module for the command line: PlanExe's pipeline with the concurrent tasks bound in.

    luigi --module pipeline_patches.pipeline ConcurrentFullPlanPipeline \\
          --run-id-dir RUN_DIR --workers 4 --local-scheduler

Importing this module rebinds PlanExe's task names (see :func:`enable`), so every
``requires()`` in PlanExe's pipeline module, including its own ``FullPlanPipeline``,
picks the concurrent classes.
"""
from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import luigi
from luigi.cmdline_parser import CmdlineParser

from planexe_concurrency import forksafe
from planexe_concurrency.config import ConfigError, read_config
from planexe_concurrency.priority import CriticalPathPriority
from planexe_concurrency.ratelimit import end_of_request
from planexe_concurrency.timing import append_task_event

from planexe_concurrency.reuse import ReusedInstances

from .base import check_settings, complete_unless_interrupted, create_llm_executor, declare_parameter_types, start_marks
from .flag_toggle import import_lazy_modules, prefer_fork, warm_up
from .governance import side_by_side_classes
from .planexe import load_planexe
from .rundir import RunDirError, check_run_dir
from .speculative import speculative_run

logger = logging.getLogger("planexe_concurrency")

pe = load_planexe()
P = pe.pipeline

# The only classes bound under PlanExe's names: the governance phases 4-6 side by side (a graph
# change, opt-in), for whichever of them this PlanExe has. Every other task keeps PlanExe's class.
CONCURRENT_TASKS: dict[str, type] = side_by_side_classes(P)

_ORIGINALS: dict[str, type] = {name: getattr(P, name) for name in CONCURRENT_TASKS}

# Once, and kept when the patches are off: the same parameters, declared as what they hold (no
# "is not of type string" warning for every task; see base.ValueParameter).
declare_parameter_types(P.PlanTask)

# Luigi's priority for every task: the chain of tasks still ahead of it (critical path first).
CHAIN_PRIORITY = CriticalPathPriority(enabled=lambda: bool(read_config().critical_path_first))

# Methods of PlanExe's PlanTask base class replaced while the patches are on (every task
# inherits them); the originals are what PlanTask itself defines (None: inherited from Luigi).
_PLAN_TASK_PATCHES: dict[str, Any] = {
    "create_llm_executor": create_llm_executor,
    "complete": complete_unless_interrupted(P.PlanTask.complete),
    "run": speculative_run(P.PlanTask.run),
    "priority": property(CHAIN_PRIORITY, doc="Luigi's priority: the longest chain of tasks still ahead (planexe_concurrency.priority)"),
}
_PLAN_TASK_ORIGINALS: dict[str, Any] = {name: P.PlanTask.__dict__.get(name) for name in _PLAN_TASK_PATCHES}

# PlanExe builds a fresh LLM (and so a fresh HTTP client) per attempt; reuse one per thread and
# model name instead (see planexe_concurrency.reuse and docs/overhead.md).
_ORIGINAL_GET_LLM = pe.llm_executor.get_llm
REUSED_LLMS = ReusedInstances(_ORIGINAL_GET_LLM)


def enable(module: ModuleType | None = None) -> None:
    """Patch PlanExe's ``PlanTask`` (and, opt-in, the governance phases' graph) in ``module`` (default: PlanExe's pipeline).

    Every task keeps PlanExe's class and code. ``PlanTask.run`` runs ``run_inner`` through
    the speculative fan-out (``speculative.py``), so the independent LLM calls of
    any task go out at once; ``create_llm_executor()`` returns PlanExe's executor with
    retries of transient errors, the run's shared request budget and the stop flag; and a
    task that started in an earlier run and never finished is not complete, whatever files
    it left (:func:`~pipeline_patches.base.complete_unless_interrupted`); ``priority`` is the
    chain of tasks still ahead of the task (``critical_path_first``). Also makes
    PlanExe's ``LLMModelFromName`` reuse LLM instances per thread (``REUSED_LLMS``).
    """
    module = module or P
    for name, cls in CONCURRENT_TASKS.items():
        setattr(module, name, cls)
    for name, method in _PLAN_TASK_PATCHES.items():
        setattr(P.PlanTask, name, method)
    pe.llm_executor.get_llm = REUSED_LLMS


def disable(module: ModuleType | None = None) -> None:
    """Undo :func:`enable`: PlanExe's own classes, executor, completeness and LLM-per-attempt again."""
    module = module or P
    for name, cls in _ORIGINALS.items():
        setattr(module, name, cls)
    for name, original in _PLAN_TASK_ORIGINALS.items():
        if original is not None:
            setattr(P.PlanTask, name, original)
        elif name in P.PlanTask.__dict__:
            delattr(P.PlanTask, name)
    pe.llm_executor.get_llm = _ORIGINAL_GET_LLM
    CHAIN_PRIORITY.clear()


def is_enabled(module: ModuleType | None = None) -> bool:
    module = module or P
    return (
        all(getattr(module, name) is cls for name, cls in CONCURRENT_TASKS.items())
        and all(P.PlanTask.__dict__.get(name) is method for name, method in _PLAN_TASK_PATCHES.items())
    )


class ConcurrentFullPlanPipeline(P.FullPlanPipeline):
    """PlanExe's FullPlanPipeline (same requirements, same output) under a name of its own.

    ``--run-id-dir`` is required here and parsed into a ``Path`` (PlanExe's tasks join
    paths with ``/``; its own parameter would hand them a plain string from the command
    line). Cloned into every other task, it gives them the same task ids as PlanExe's.
    """

    run_id_dir = luigi.PathParameter(description="the run directory (with 001-1 start time and 001-2 plan files)")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_before_start(Path(self.run_id_dir))
        if CmdlineParser.get_instance() is not None:
            warm_up_once(tuple(self.llm_models))


_warmed: set[tuple[str, ...]] = set()
_warm_lock = threading.Lock()


def warm_up_once(llm_models: tuple[str, ...]) -> None:
    """Under ``luigi --module ...`` Luigi builds the root task in the parent, before it forks a
    process per task: build the LLM clients there, as ``run`` and the flag entry points do
    (measured on real PlanExe's relaxed mode: 2.33x this way without it, 2.61x through ``run``)."""
    with _warm_lock:
        if llm_models in _warmed:
            return
        _warmed.add(llm_models)
    prefer_fork()
    seconds = warm_up(llm_models)
    logger.info("planexe-concurrency: warmed up the parent in %.2fs (models %s)", seconds, list(llm_models))


def check_before_start(run_dir: Path) -> None:
    """Settings and run directory, checked before Luigi schedules anything.

    Under Luigi's own command line (``luigi --module pipeline_patches.pipeline ...``) a bad
    one ends the command with one line on stderr and exit status 2, as our CLI does; in code
    (``luigi.build``) it raises ConfigError / RunDirError to the caller.
    """
    try:
        check_settings()
        check_run_dir(run_dir)
    except (ConfigError, RunDirError) as exc:
        if CmdlineParser.get_instance() is None:
            raise
        print(f"planexe-concurrency: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _record_task_event(event: str):  # type: ignore[no-untyped-def]
    def on_event(task: luigi.Task, *args: object) -> None:
        path = read_config().task_events_file
        if path:
            append_task_event(path, task, event, args[0] if event == "failure" and args else None)

    return on_event


# Registered once, at import (so in the parent, before any fork); they write only when
# ``task_events_file`` is set, in whichever process runs the task.
for _event, _name in ((luigi.Event.START, "start"), (luigi.Event.SUCCESS, "success"), (luigi.Event.FAILURE, "failure")):
    luigi.Task.event_handler(_event)(_record_task_event(_name))


def _marks_kept(task: luigi.Task) -> bool:
    return isinstance(task, P.PlanTask) and P.PlanTask.__dict__.get("complete") is _PLAN_TASK_PATCHES["complete"]


# A task's start mark is written in the process that runs it, just before ``run()``, and
# removed once ``run()`` has returned, before Luigi hears that the task is done; a task
# that fails or is killed keeps it (see complete_unless_interrupted).
@luigi.Task.event_handler(luigi.Event.START)
def _mark_started(task: luigi.Task) -> None:
    if _marks_kept(task):
        start_marks(task).started(task.task_id)


@luigi.Task.event_handler(luigi.Event.SUCCESS)
def _mark_finished(task: luigi.Task) -> None:
    if _marks_kept(task):
        start_marks(task).finished(task.task_id)


@luigi.Task.event_handler(luigi.Event.SUCCESS)
@luigi.Task.event_handler(luigi.Event.FAILURE)
def _no_in_flight_slot_outlives_its_task(*_args: object) -> None:
    """A request PlanExe's code sent outside our executor and that raised keeps its slot (no end
    event comes): let it go when the task ends, in the thread that ran the task. Under
    ``--workers N`` the task's process ends anyway; with one worker the next task runs in it."""
    end_of_request()


@luigi.Task.event_handler(luigi.Event.DEPENDENCY_DISCOVERED)
def _show_our_logs_where_luigi_shows_its_own(*_args: object) -> None:
    """Under ``luigi --module ...`` our log lines go where Luigi's go, at Luigi's level.

    Luigi's default logging set-up (no logging_conf_file) gives a handler to its own
    ``luigi-interface`` logger only: with no root handler, our INFO lines would be dropped
    and our warnings printed bare by ``logging.lastResort``. This runs in the parent while
    Luigi schedules, after its logging set-up and before it forks; where the application
    configured logging (a root handler, as PlanExe does) it changes nothing.
    """
    ours = logging.getLogger("planexe_concurrency")
    if ours.handlers or logging.getLogger().handlers:
        return
    theirs = logging.getLogger("luigi-interface")
    for handler in theirs.handlers:
        ours.addHandler(handler)
    if theirs.handlers:
        ours.setLevel(theirs.getEffectiveLevel())

enable()
# Luigi forks a process per task from here while other threads may be logging: see forksafe.
forksafe.install()
# `luigi --module pipeline_patches.pipeline ... --workers N` imports this module in the
# parent, before it forks a process per task: pay the LLM client's lazy imports once here.
import_lazy_modules()

__all__ = [
    "CONCURRENT_TASKS",
    "ConcurrentFullPlanPipeline",
    "check_settings",
    "disable",
    "enable",
    "is_enabled",
]
