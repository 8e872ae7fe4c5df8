"""What every concurrent PlanExe task shares: settings, the engine, resume records, stop handling.

A concurrent task is PlanExe's own task class with :class:`ConcurrentTask` mixed in front
of it. Its ``run_inner`` reads the same inputs, builds the same queries and writes the
same files as PlanExe's, but hands the loop's calls to :meth:`ConcurrentTask.run_items`.

Resume: each finished item leaves a record in ``items/`` of our folder beside the run (``rundir.state_dir_for``)
(written atomically, before PlanExe's raw per-item file), holding what the merge step needs
that PlanExe's raw file does not keep (e.g. the WBS ids PlanExe draws after the call). A
rerun loads the record instead of calling the LLM, if the record's query fingerprint still
matches, and rewrites the raw file if it is missing or differs.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import luigi

from planexe_concurrency.config import FanOutSettings, read_config, settings_from_config, task_value, validate
from planexe_concurrency.events import default_listeners, one_line
from planexe_concurrency.fanout import FanOut, FanOutError, ItemFailedError, ItemFailure
from planexe_concurrency.llm_executor import ConcurrentLLMExecutor, StopCheck
from planexe_concurrency.ratelimit import SharedSlotFile, pace_llm_requests, stop_pacing_llm_requests
from planexe_concurrency.resume import ItemCache, StartMarks, atomic_write_text, json_text

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

Record = dict[str, Any]


@dataclass
class Item:
    """One independent LLM call of a PlanExe loop.

    ``call(llm)`` returns a JSON-serialisable record. ``raw_file`` (a file name in run_id_dir)
    is PlanExe's per-item file, rendered from the record by ``raw_text``.
    ``fingerprint`` is the query: a saved record is reused only for the same query.
    """

    label: str
    call: Callable[[Any], Record]
    fingerprint: str
    raw_file: str | None = None
    raw_text: Callable[[Record], str] = field(default=lambda record: json_text(record["raw"]))


def known_task_names() -> set[str]:
    pipeline = load_planexe().pipeline
    # Task classes bound under their own name: PlanExe's, or ours in their place once enabled.
    return {
        name
        for name, obj in vars(pipeline).items()
        if isinstance(obj, type) and issubclass(obj, luigi.Task) and obj.__name__ == name and not obj.__module__.startswith("luigi")
    }


def check_settings() -> None:
    """Validate ``[planexe_concurrency]`` (unknown task names included); raises ConfigError before any run."""
    validate(read_config(), known_task_names())


RATE_LIMIT_FILE_NAME = "rate_limit.slots"


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


def fanout_for(task: luigi.Task, settings: FanOutSettings, *, listeners: bool = True) -> FanOut:
    """A FanOut for one of ``task``'s loops (or, with ``listeners=False``, for one plain call).

    With a request budget, every request of the process is paced where llama-index sends
    it (:func:`pace_llm_requests`), so the FanOut itself does not pace again.
    """
    planexe = load_planexe()
    slots = rate_limit_slots(task)
    if slots is not None:
        pace_llm_requests(slots)
        settings = replace(settings, requests_per_minute=0.0)
    else:
        stop_pacing_llm_requests()  # the budget was lifted since (one process, several runs)
    cfg = read_config()
    return FanOut(
        settings,
        task=task.task_family,
        listeners=default_listeners(cfg.events_file or None) if listeners else [],
        stop_exceptions=(planexe.PipelineStopRequested,),
    )


def executor_for(task: luigi.Task, settings: FanOutSettings, *, listeners: bool = True) -> ConcurrentLLMExecutor:
    planexe = load_planexe()
    models = planexe.LLMModelFromName.from_names(list(task.llm_models))  # type: ignore[attr-defined]
    return ConcurrentLLMExecutor(
        models, fanout=fanout_for(task, settings, listeners=listeners), should_stop_callback=stop_check_for(task)
    )


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
            self._concurrent = executor_for(task, settings, listeners=False)

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
    """Stands in for ``PlanTask.create_llm_executor`` (see ``pipeline.enable``)."""
    return plain_task_executor_class()(self)


START_MARKS_DIR_NAME = "started"
ITEMS_DIR_NAME = "items"


def tidy_finished_run(task: luigi.Task) -> None:
    """Once the whole plan is done, drop what only a resume needs (item records, start marks).

    A multi-user PlanExe makes a run directory per plan and purges old ones by name; our
    folder beside each would otherwise keep every answer of every plan. The event logs stay.
    """
    if not hasattr(task, "run_id_dir") or not task.complete():
        return
    for name in (ITEMS_DIR_NAME, START_MARKS_DIR_NAME):
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


class ConcurrentTask:
    """Mixin for PlanExe task classes; put it first in the bases."""

    # -- settings ----------------------------------------------------------------------
    def concurrency_settings(self) -> FanOutSettings:
        cfg = read_config()
        validate(cfg, known_task_names())
        return settings_from_config(cfg, self.task_family)  # type: ignore[attr-defined]

    def concurrency_value(self, name: str) -> Any:
        return task_value(read_config(), name, self.task_family)  # type: ignore[attr-defined]

    # -- paths ------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.run_id_dir)  # type: ignore[attr-defined]

    def state_dir(self) -> Path:
        path = state_dir_of(self)  # type: ignore[arg-type]
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- the engine ---------------------------------------------------------------------
    def make_fanout(self, settings: FanOutSettings | None = None) -> FanOut:
        return fanout_for(self, settings or self.concurrency_settings())  # type: ignore[arg-type]

    def make_executor(self, settings: FanOutSettings | None = None) -> ConcurrentLLMExecutor:
        return executor_for(self, settings or self.concurrency_settings())  # type: ignore[arg-type]

    # -- running a loop -----------------------------------------------------------------
    def _record_cache(self, index: int, item: Item) -> ItemCache[Record]:
        name = item.raw_file or f"{self.task_family}-{index + 1}.json"  # type: ignore[attr-defined]
        fingerprint = hashlib.sha256(item.fingerprint.encode("utf-8")).hexdigest()
        raw_path = self.run_dir / item.raw_file if item.raw_file else None

        def write_raw(record: Record) -> None:
            if raw_path is None:
                return
            text = item.raw_text(record)
            if not raw_path.exists() or raw_path.read_text(encoding="utf-8") != text:
                atomic_write_text(raw_path, text)

        def load(path: Path) -> Record:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("fingerprint") != fingerprint:
                raise ValueError("the query changed since this record was saved")
            write_raw(saved["record"])
            return saved["record"]

        def dump(record: Record) -> str:
            return json.dumps({"fingerprint": fingerprint, "record": record}, indent=1)

        return ItemCache(path=self.state_dir() / ITEMS_DIR_NAME / f"{name}.record", load=load, dump=dump, after_put=write_raw)

    def run_items(
        self,
        items: Sequence[Item],
        failure_message: Callable[[int], str],
        *,
        tolerate_failures: bool = False,
    ) -> list[Record | None]:
        """Run the items concurrently; records come back in item order.

        Each item's record, then PlanExe's raw file, is written as soon as the item finishes.
        A failure is raised as PlanExe's own ``ValueError(failure_message(index))``, unless
        ``tolerate_failures`` (loops where PlanExe carries on past a failed item): then every
        item runs and a failed one comes back as None. ``PipelineStopRequested`` always
        passes through unwrapped.
        """
        (self.state_dir() / ITEMS_DIR_NAME).mkdir(exist_ok=True)
        caches = [self._record_cache(i, item) for i, item in enumerate(items)]
        settings = self.concurrency_settings()
        if tolerate_failures:
            settings = replace(settings, failure_mode="continue_on_error")
        executor = self.make_executor(settings)
        try:
            return executor.run_batch(
                [item.call for item in items], caches=caches, labels=[item.label for item in items]
            )
        except ItemFailedError as exc:
            self._log_failures([exc.failure], len(items))
            raise ValueError(failure_message(exc.index)) from exc.__cause__
        except FanOutError as exc:
            self._log_failures(exc.failures, len(items))
            if tolerate_failures:
                return exc.results
            raise ValueError(failure_message(exc.failures[0].index)) from exc

    def _log_failures(self, failures: Sequence[ItemFailure], total: int) -> None:
        for failure in failures:
            logger.error(
                "task=%s item=%d/%d failed: %s: %s",
                self.task_family, failure.index + 1, total, type(failure.error).__name__, one_line(failure.error),  # type: ignore[attr-defined]
            )

    def write_output(self, path: str | Path, text: str) -> None:
        """PlanExe's final files, written atomically so a crash never leaves half a file that Luigi trusts."""
        atomic_write_text(path, text)
