"""What every patched PlanExe task shares: settings, the engine, the executor, start marks, stop handling.

Our folder for a run lives beside its run directory (``rundir.state_dir_for``): the request
budget's slot file, start marks, saved answers (``answers/``, see ``speculative.py``) and
the speculation reports.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import shutil
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import luigi

from planexe_concurrency.config import FanOutSettings, in_flight_limit, read_config, settings_from_config, validate
from planexe_concurrency.events import default_listeners
from planexe_concurrency.fanout import FanOut, ItemFailedError
from planexe_concurrency.llm_executor import ConcurrentLLMExecutor, StopCheck
from planexe_concurrency.ratelimit import (
    SharedInFlightCap, SharedSlotFile, gate_llm_requests, in_flight_cap,
)
from planexe_concurrency.resume import StartMarks

from .callback import call_callback
from .planexe import load_planexe
from .rundir import state_dir_for

logger = logging.getLogger("planexe_concurrency")

def state_dir_of(task: luigi.Task) -> Path:
    """Our folder for a PlanExe task's run (beside its run directory, see ``rundir.state_dir_for``)."""
    return state_dir_for(task.run_id_dir)  # type: ignore[attr-defined]

# Taken when this module is first imported: in the Luigi parent, before it forks workers.
# A stop flag older than this belongs to an earlier run and is ignored.
PROCESS_STARTED = time.time()

_known: tuple[tuple[int, frozenset[str]], frozenset[str]] | None = None


def known_task_names() -> frozenset[str]:
    """Task classes bound under their own name: PlanExe's, or ours in their place once enabled
    (same names). Found again only when the pipeline module's names changed."""
    global _known
    pipeline = load_planexe().pipeline
    key = (id(pipeline), frozenset(vars(pipeline)))
    cached = _known
    if cached is not None and cached[0] == key:
        return cached[1]
    names = frozenset(
        name
        for name, obj in vars(pipeline).items()
        if isinstance(obj, type) and issubclass(obj, luigi.Task) and obj.__name__ == name and not obj.__module__.startswith("luigi")
    )
    _known = (key, names)
    return names


def check_settings() -> None:
    """Validate ``[planexe_concurrency]`` (unknown task names included); raises ConfigError before any run."""
    validate(read_config(), known_task_names())


RATE_LIMIT_FILE_NAME = "rate_limit.slots"


def settings_for(task: luigi.Task) -> FanOutSettings:
    """The task's fan-out settings (its overrides win), validated first."""
    cfg = read_config()
    validate(cfg, known_task_names())
    return settings_from_config(cfg, task.task_family)


def rate_limit_slots(task: luigi.Task) -> SharedSlotFile | None:
    """The request budget every process of this run shares, or None without a budget.

    ``requests_per_minute`` belongs to the provider's key, so it is one budget for the whole
    run, never per task: its slots live in ``rate_limit_file``, by default a file in the run
    directory that every forked worker (and every host on shared storage) sees.
    """
    cfg = read_config()
    if cfg.requests_per_minute <= 0:
        return None
    path = cfg.rate_limit_file or state_dir_of(task) / RATE_LIMIT_FILE_NAME
    return SharedSlotFile(path, cfg.requests_per_minute)


IN_FLIGHT_FILE_NAME = "in_flight.slots"


def in_flight_cap_for(task: luigi.Task) -> SharedInFlightCap | None:
    """The run's cap on calls in flight (``max_in_flight``), or None when there is none.

    Its file: ``in_flight_file``; else beside ``rate_limit_file`` when several runs share a
    budget (so they share the cap too); else in our folder beside the run directory.
    """
    cfg = read_config()
    limit = in_flight_limit(cfg)
    if limit == 0:
        return None
    if cfg.in_flight_file:
        path = Path(cfg.in_flight_file)
    elif cfg.rate_limit_file:
        path = Path(f"{cfg.rate_limit_file}.in_flight")
    else:
        path = state_dir_of(task) / IN_FLIGHT_FILE_NAME
    return in_flight_cap(path, limit)


def fanout_for(task: luigi.Task, settings: FanOutSettings, *, listeners: bool = True) -> FanOut:
    """A FanOut for one of ``task``'s loops (or, with ``listeners=False``, for one plain call).

    The request budget and the in-flight cap are applied where llama-index sends each request
    (:func:`gate_llm_requests`), so the FanOut itself neither paces nor holds the cap's slot
    for a whole attempt: a slot is held only while a request is out, not while PlanExe's code
    builds the prompt or parses the answer.
    """
    planexe = load_planexe()
    cfg = read_config()
    slots = rate_limit_slots(task)
    cap = in_flight_cap_for(task)
    priority = _chain_ahead(task) if cfg.critical_path_first else 0.0
    gate_llm_requests(slots, cap, priority)  # none of either: the gate is removed (one process, several runs)
    if slots is not None:
        settings = replace(settings, requests_per_minute=0.0)
    return FanOut(
        settings,
        task=task.task_family,
        listeners=default_listeners(cfg.events_file or None) if listeners else [],
        stop_exceptions=(planexe.PipelineStopRequested,),
        in_flight=cap,
        priority=priority,
        in_flight_per_request=cap is not None,
    )


def _chain_ahead(task: luigi.Task) -> float:
    """The task's Luigi priority (the chain of tasks still ahead of it, see planexe_concurrency.priority)."""
    try:
        return float(task.priority)
    except (TypeError, ValueError):
        return 0.0


def executor_for(task: luigi.Task, settings: FanOutSettings, *, listeners: bool = True) -> ConcurrentLLMExecutor:
    planexe = load_planexe()
    models = planexe.LLMModelFromName.from_names(list(task.llm_models))  # type: ignore[attr-defined]
    return ConcurrentLLMExecutor(
        models, fanout=fanout_for(task, settings, listeners=listeners), should_stop_callback=stop_check_for(task),
        attempt_context=attempt_tags(planexe, task.task_family),
    )


_UUID4 = uuid.uuid4  # never the replayed one (speculative.UuidReplay): these ids are not PlanExe's task's


def attempt_tags(planexe: Any, task: str) -> Callable[[], Any] | None:
    """Where PlanExe's executor tags each attempt's instrumentation events with an id, ours does too.

    PlanExe's activity log (``track_activity.jsonl``) records the tags of every LLM event; a
    PlanExe whose executor module imports llama-index's ``instrument_tags`` puts an
    ``llm_executor_uuid`` on each attempt, and logs that id with the attempt's outcome so that
    its log and its activity log can be read side by side: each attempt here logs it too.
    Older ones tag nothing, and neither do we.
    """
    tags = getattr(planexe.llm_executor, "instrument_tags", None)
    if tags is None:
        return None

    @contextlib.contextmanager
    def context() -> Iterator[None]:
        executor_uuid = str(_UUID4())
        started = time.perf_counter()
        try:
            with tags({"llm_executor_uuid": executor_uuid}):
                yield
        except BaseException as exc:
            logger.info(
                "task=%s llm_executor_uuid=%s attempt failed after %.2fs: %s",
                task, executor_uuid, time.perf_counter() - started, type(exc).__name__,
            )
            raise
        logger.info("task=%s llm_executor_uuid=%s attempt answered in %.2fs", task, executor_uuid, time.perf_counter() - started)

    return context


def stop_check_for(task: luigi.Task) -> Callable[[StopCheck], None]:
    """After each attempt: honour a stop another process asked for, then PlanExe's callback."""

    def check(attempt: StopCheck) -> None:
        planexe = load_planexe()
        flag = Path(task.run_id_dir) / planexe.ExtraFilenameEnum.PIPELINE_STOP_REQUESTED_FLAG.value  # type: ignore[attr-defined]
        try:
            if flag.stat().st_mtime >= PROCESS_STARTED:
                raise planexe.PipelineStopRequested(f"{task.task_family}: stop flag {flag.name} found")
        except FileNotFoundError:
            pass
        call_callback(task, attempt.total_duration)  # in the process that owns it (see callback.py)

    return check


@functools.cache
def plain_task_executor_class() -> type:
    """PlanExe's ``LLMExecutor`` with our ``run``: a subclass, because PlanExe checks ``isinstance``."""
    planexe = load_planexe()

    class PlainTaskExecutor(planexe.LLMExecutor):  # type: ignore[misc, name-defined]
        """What a plain PlanExe task's ``create_llm_executor()`` returns once the patches are on.

        PlanExe's tasks only call ``run(fn)``. This keeps PlanExe's behaviour (the models in
        order, the stop callback after each attempt, 'Exhausted all LLMs') and adds what a
        whole pipeline needs against a real provider: transient errors retried with backoff,
        the run's request budget, and the stop flag other workers raise.
        """

        def __init__(self, task: luigi.Task) -> None:
            super().__init__(llm_models=planexe.LLMModelFromName.from_names(list(task.llm_models)))  # type: ignore[attr-defined]
            settings = replace(settings_from_config(read_config(), task.task_family), failure_mode="fail_fast")
            self._concurrent = executor_for(task, settings)  # its call's events feed the run's display

        def run(self, execute_function: Callable[[Any], Any]) -> Any:
            validate = getattr(self, "_validate_execute_function", None)
            if validate is not None:
                validate(execute_function)
            try:
                return self._concurrent.run(execute_function)
            except ItemFailedError as exc:
                # One call, not a loop: raise what PlanExe's executor would ('Exhausted all LLMs').
                raise (exc.__cause__ or exc) from None

    return PlainTaskExecutor


def create_llm_executor(self: luigi.Task) -> Any:
    """Stands in for ``PlanTask.create_llm_executor`` (see ``pipeline.enable``).

    During a speculative run (``speculative.py``) the task's session executor; otherwise
    PlanExe's executor with retries, the request budget and the stop flag.
    """
    override = self.__dict__.get("_planexe_concurrency_executor")
    if override is not None:
        return override
    return plain_task_executor_class()(self)


START_MARKS_DIR_NAME = "started"
ANSWERS_DIR_NAME = "answers"
ITEMS_DIR_NAME = "items"  # item records of versions before 0.8 (tidied up as well)
SCRATCH_DIR_NAME = "scratch"
SHAPES_DIR_NAME = "shapes"  # what each shared run_inner did in this run (speculative.CallShapes)


def tidy_finished_run(task: luigi.Task) -> None:
    """Once the whole plan is done, drop what only a resume needs (saved answers, start marks).

    A multi-user PlanExe makes a run directory per plan and purges old ones by name; our
    folder beside each would otherwise keep every answer of every plan. The event logs stay.
    """
    if not hasattr(task, "run_id_dir") or not task.complete():
        return
    for name in (ANSWERS_DIR_NAME, ITEMS_DIR_NAME, SCRATCH_DIR_NAME, SHAPES_DIR_NAME, START_MARKS_DIR_NAME):
        shutil.rmtree(state_dir_of(task) / name, ignore_errors=True)


def start_marks(task: luigi.Task) -> StartMarks:
    """Marks of the run's tasks that started and have not finished (see ``pipeline.py``'s event handlers)."""
    return StartMarks(state_dir_of(task) / START_MARKS_DIR_NAME)


_told_unfinished: set[str] = set()
_told_lock = threading.Lock()


def complete_unless_interrupted(complete: Callable[[luigi.Task], bool]) -> Callable[[luigi.Task], bool]:
    """``complete`` (PlanExe's, i.e. Luigi's: every output exists), and no start mark left.

    PlanExe's own tasks write their files with plain ``open()``; killed in the middle of
    the last one, a task leaves every output in place, one of them truncated, and Luigi
    would take it as done. A task whose start mark is still there runs again instead.
    """

    def complete_unless_interrupted(self: luigi.Task) -> bool:
        marks = start_marks(self)
        if not marks.unfinished(self.task_id):
            return bool(complete(self))
        with _told_lock:
            first = self.task_id not in _told_unfinished
            _told_unfinished.add(self.task_id)
        if first:
            # Another worker process may be running it right now (luigid, --workers N):
            # Luigi then waits for it; only a mark whose owner is gone means a crash.
            owner, gone = marks.owner(self.task_id)
            if gone:
                logger.warning(
                    "task=%s started in an earlier run (%s, now gone) and never finished: its files are not trusted,"
                    " it runs again", self.task_family, owner,
                )
            else:
                logger.info(
                    "task=%s is marked as started by %s and not finished: not complete until that process finishes it"
                    " (if it was killed, the task runs again)", self.task_family, owner,
                )
        return False

    return complete_unless_interrupted


class ValueParameter(luigi.Parameter):
    """Luigi's plain ``Parameter``, for values that are Python objects rather than strings.

    PlanExe declares its run directory (a ``Path``) and its progress callback (a callable or
    None) as plain ``luigi.Parameter``s, and Luigi warns about every such value of every task
    (``UserWarning: Parameter ... is not of type string``). Declared as what they hold, the
    parameters behave exactly as before (same parsing, serialisation, task ids) without it.
    """


def declare_parameter_types(task_class: type) -> list[str]:
    """Re-declare ``task_class``'s plain parameters whose default is not a string (see ValueParameter).

    Names nothing of PlanExe: a PlanExe that declares them itself is left as it is. The
    parameter keeps its place among the others (Luigi orders them by creation).
    """
    changed = []
    for name, param in list(vars(task_class).items()):
        default = getattr(param, "_default", None)
        if type(param) is not luigi.Parameter or isinstance(default, str) or default is luigi.parameter._no_value:
            continue
        declared = copy.copy(param)
        declared.__class__ = ValueParameter
        setattr(task_class, name, declared)
        changed.append(name)
    return changed
