"""Every PlanExe task that calls an LLM, its independent calls sent at once: PlanExe's own code, recorded ahead of itself.

While the patches are on, ``PlanTask.run`` (PlanExe's, which calls ``run_inner``) runs a
task's ``run_inner`` through :class:`planexe_concurrency.speculation.Speculation`: the task
runs for real, as PlanExe wrote it, and from its first LLM call on, record passes of the
same code run beside it with stand-in answers, so the calls that do not depend on an
answer still to come are sent at once through the engine and are answered by the time the
real pass asks them. No task is named here: a task PlanExe adds tomorrow gets the same
treatment, and one PlanExe no longer has is simply not there.

What the host side adds to the engine's mechanism:

* the executor PlanExe's code gets from ``create_llm_executor()`` (a subclass of PlanExe's
  ``LLMExecutor``, because PlanExe checks the type) hands each ``run(fn)`` to the session;
* a record pass runs on a copy of the task whose ``run_id_dir`` is a scratch folder that
  links the run's existing input files, so whatever PlanExe writes there (outputs and
  per-item raw files) lands in scratch; ``clone()`` carries the folder into
  ``requires()``, so inputs resolve;
* the ``uuid4`` values a task draws are the same in every pass (PlanExe draws ids for
  documents, experts, WBS tasks), so requests built from them match;
* answers are saved under our folder beside the run (``answers/<task>/``) for resume.

A task whose code rejects a stand-in answer (the first record pass raises) simply has
nothing sent early: the real pass asks every call in PlanExe's order, and one log line
says why. ``speculate = false`` (globally or per task in ``task_overrides``) turns it off.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import hashlib
import json
import logging
import marshal
import os
import shutil
import sys
import threading
import uuid
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import luigi

from planexe_concurrency.config import read_config, task_value
from planexe_concurrency.events import one_line
from planexe_concurrency.fanout import FanOutError, ItemFailedError
from planexe_concurrency.resume import atomic_write_text
from planexe_concurrency.speculation import AnswerStore, Speculation, restart_pass

from .base import ANSWERS_DIR_NAME, SCRATCH_DIR_NAME, SHAPES_DIR_NAME, executor_for, settings_for, state_dir_of
from .planexe import load_planexe

logger = logging.getLogger("planexe_concurrency")

REPORTS_DIR_NAME = "speculation"

# Luigi warns about a non-string run_id_dir each time clone() makes a task; our scratch folders
# are Paths like PlanExe's own, and each pass would add one warning per upstream task.
warnings.filterwarnings("ignore", message=r'Parameter "run_id_dir" with value ".*[/\\]scratch[/\\]', category=UserWarning)

_told_unavailable: set[str] = set()
_told_lock = threading.Lock()


def wants_speculation(task: luigi.Task) -> bool:
    return bool(task_value(read_config(), "speculate", task.task_family))


# -- the executor PlanExe's code is handed during a speculative run ------------------------------
@functools.cache
def speculative_executor_class() -> type:
    planexe = load_planexe()

    class SpeculativeExecutor(planexe.LLMExecutor):  # type: ignore[misc, name-defined]
        """``run(fn)`` goes to the task's speculation session (record, early answer, or live)."""

        def __init__(self, task: luigi.Task, session: Speculation) -> None:
            super().__init__(llm_models=planexe.LLMModelFromName.from_names(list(task.llm_models)))  # type: ignore[attr-defined]
            self.session = session

        def run(self, execute_function: Callable[[Any], Any]) -> Any:
            validate = getattr(self, "_validate_execute_function", None)
            if validate is not None:
                validate(execute_function)
            return self.session.call(execute_function)

    return SpeculativeExecutor


def executor_override(task: luigi.Task) -> Any:
    """The executor ``create_llm_executor()`` returns while a speculative run is under way, else None."""
    return task.__dict__.get("_planexe_concurrency_executor")


# -- ids drawn inside a task ------------------------------------------------------------------------
class UuidReplay:
    """``uuid4`` hands every pass of a task the same values, in the order drawn (more are drawn as needed).

    PlanExe draws ids for documents, experts and WBS tasks inside a task, and puts them in
    prompts; the real pass and the record passes must see the same ones for their requests
    to match. PlanExe imports it both ways (``uuid.uuid4()`` and ``from uuid import uuid4``),
    so the module-level names in PlanExe's own package are swapped too, while the task runs.
    A pass's place in the sequence is per thread (the record passes run beside the real one);
    code outside any pass gets fresh ids.
    """

    def __init__(self, package: str) -> None:
        self.package = package
        self.drawn: list[uuid.UUID] = []
        self._lock = threading.Lock()
        self._original = _UUID4_ORIGINAL
        self._cursor: contextvars.ContextVar[list[int] | None] = _UUID_CURSOR

    def _uuid4(self) -> uuid.UUID:
        cursor = self._cursor.get()
        if cursor is None:
            return self._original()
        with self._lock:
            index = cursor[0]
            cursor[0] += 1
            while len(self.drawn) <= index:
                self.drawn.append(self._original())
            return self.drawn[index]

    def _modules(self) -> list[Any]:
        return uuid_bound_modules(self.package)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        modules = self._modules()
        uuid.uuid4 = self._uuid4  # type: ignore[assignment]
        for module in modules:
            module.uuid4 = self._uuid4  # type: ignore[attr-defined]
        try:
            yield
        finally:
            uuid.uuid4 = self._original  # type: ignore[assignment]
            for module in modules:
                module.uuid4 = self._original  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def pass_(self) -> Iterator[None]:
        token = self._cursor.set([0])
        try:
            yield
        finally:
            self._cursor.reset(token)

    @contextlib.contextmanager
    def aside(self) -> Iterator[None]:
        """Draws here do not move the pass along (a call's fn run to probe or check it)."""
        cursor = self._cursor.get()
        token = self._cursor.set(list(cursor) if cursor is not None else None)
        try:
            yield
        finally:
            self._cursor.reset(token)


_UUID_CURSOR: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("planexe_concurrency_uuid_cursor", default=None)
_bound_cache: dict[str, tuple[int, list[Any]]] = {}


def uuid_bound_modules(package: str) -> list[Any]:
    """The modules of ``package`` that bound ``uuid.uuid4`` by name, found again only when modules were added.

    Found in the parent before Luigi forks (``warm_up``), a forked task does not walk every
    module (each one it touches is a page copied into the child).
    """
    cached = _bound_cache.get(package)
    if cached is not None and cached[0] == len(sys.modules):
        return cached[1]
    original = _UUID4_ORIGINAL
    prefix = package + "."
    found = [
        m for name, m in list(sys.modules.items())
        if (name == package or name.startswith(prefix)) and m is not None and getattr(m, "uuid4", None) is original
    ]
    _bound_cache[package] = (len(sys.modules), found)
    return found


_UUID4_ORIGINAL = uuid.uuid4


def _refresh_before_fork() -> None:
    # The parent may import more after warm_up; found again here, a forked task finds its
    # cache current and never walks sys.modules (a walk there copies every page it touches).
    for package in list(_bound_cache):
        uuid_bound_modules(package)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_refresh_before_fork)


# -- the scratch folder a record pass writes to ----------------------------------------------------
def _input_paths(task: luigi.Task) -> list[Path]:
    return [Path(t.path) for t in luigi.task.flatten(task.input()) if hasattr(t, "path")]


class ScratchRunDir:
    """A folder a record pass takes as the task's ``run_id_dir``, with the task's inputs linked in.

    Only the files the task declares as inputs are linked at first: one symlink is a metadata
    write (0.2-0.3 ms on a journalled disk, a round trip on shared storage), and linking a
    whole late run directory (~150 files) held every record pass back by ~50 ms. Code that
    reads a file it did not declare fails in the scratch folder with FileNotFoundError; then
    :meth:`link_the_rest` links the other files and the pass runs again
    (:meth:`with_the_rest_if_needed`). Of the rest, only files no newer than the task's newest input are
    linked: a file written after that may be one this task wrote before it was interrupted,
    and a pass writing through a link would change the real file. A pass's own writes are
    removed before the next one.
    """

    def __init__(self, task: luigi.Task, folder: Path) -> None:
        self.task = task
        self.folder = folder
        self._made = False
        self._whole = False
        self._copy: luigi.Task | None = None

    def _make(self) -> None:
        real_dir = os.path.abspath(self.task.run_id_dir)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        names = set()
        for path in _input_paths(self.task):
            relative = os.path.relpath(os.path.abspath(path), real_dir)
            if relative.startswith(os.pardir) or not os.path.lexists(path):
                continue
            names.add(relative.split(os.sep)[0])  # a file, or the top folder holding it
        for name in sorted(names):
            os.symlink(os.path.join(real_dir, name), self.folder / name)
        self._made = True

    def link_the_rest(self) -> None:
        """Links the run directory's other files too, for code that reads what it does not declare."""
        if not self._made:
            self._make()
        real_dir = os.path.abspath(self.task.run_id_dir)
        own_outputs = {Path(t.path).name for t in luigi.task.flatten(self.task.output()) if hasattr(t, "path")}
        inputs = [p for p in _input_paths(self.task) if p.exists()]
        newest = max((p.stat().st_mtime for p in inputs), default=float("inf"))
        for entry in os.scandir(real_dir):
            if entry.name in own_outputs or entry.name.startswith(".") or os.path.lexists(self.folder / entry.name):
                continue
            try:
                if entry.stat().st_mtime <= newest:
                    os.symlink(entry.path, self.folder / entry.name)
            except OSError:
                continue
        self._whole = True

    def with_the_rest_if_needed(self, attempt: Callable[[], Any], before_again: Callable[[], None] = lambda: None) -> Any:
        """``attempt()``; if it failed on a file missing here (:meth:`needs_the_rest`), link the rest and try once more."""
        try:
            return attempt()
        except Exception as exc:
            if not self.needs_the_rest(exc):
                raise
            self.link_the_rest()
            before_again()
            return attempt()

    def needs_the_rest(self, exc: BaseException) -> bool:
        """True if ``exc`` (or what it wraps) is a file missing from this folder while only the inputs are linked."""
        if self._whole:
            return False
        folder = os.path.abspath(self.folder)
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            filename = getattr(current, "filename", None)
            if isinstance(current, FileNotFoundError) and isinstance(filename, (str, os.PathLike)):
                if os.path.abspath(os.fspath(filename)).startswith(folder + os.sep):
                    return True
            current = current.__cause__ or current.__context__
        return False

    def _clear_written(self) -> None:
        for entry in os.scandir(self.folder):
            if entry.is_symlink():
                continue
            if entry.is_dir():
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)

    @contextlib.contextmanager
    def copy_pass(self) -> Iterator[luigi.Task]:
        """A copy of the task whose ``run_id_dir`` is this folder: a pass beside the task's real one.

        The copy is equal to the task (same ``task_id``), so closures that capture ``self``
        compare equal across the two; what the pass writes is removed afterwards.
        """
        if not self._made:
            self._make()
        if self._copy is None:
            real = self.task.run_id_dir
            self._copy = copy.copy(self.task)
            self._copy.run_id_dir = type(real)(self.folder) if isinstance(real, (str, Path)) else self.folder
        try:
            yield self._copy
        finally:
            self._clear_written()

    @contextlib.contextmanager
    def pass_(self) -> Iterator[None]:
        """The task itself, its ``run_id_dir`` this folder for the pass (nothing else may run the task meanwhile)."""
        real = self.task.run_id_dir
        if not self._made:
            self._make()
        self.task.run_id_dir = type(real)(self.folder) if isinstance(real, (str, Path)) else self.folder
        try:
            yield
        finally:
            self.task.run_id_dir = real
            self._clear_written()

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def in_scratch(task: luigi.Task, folder: Path, pass_: Callable[[], Any]) -> Any:
    """``pass_()`` once with ``task`` in a fresh :class:`ScratchRunDir` (again if it lacked a file), removed afterwards."""
    scratch = ScratchRunDir(task, folder)

    def attempt() -> Any:
        with scratch.pass_():
            return pass_()

    try:
        return scratch.with_the_rest_if_needed(attempt)
    finally:
        scratch.close()


# -- what a shared run_inner has done in this run ------------------------------------------------------
class CallShapes:
    """Which ``run_inner`` functions made one LLM call per task, as seen so far in this run.

    Most PlanExe tasks share one ``run_inner`` (the base class's, which asks one call around
    the task's ``run_with_llm``): nothing to overlap, and a record pass beside each would only
    take CPU from the tasks running next to it. Once :data:`EVIDENCE` tasks with the same
    function (same code) made at most one call each, and none made more, later tasks with it
    skip recording. One marker file per task (``shapes/`` in our folder), so every forked
    worker and every host on shared storage sees them; correctness never depends on them
    (a task that skips recording asks its calls in PlanExe's order).
    """

    EVIDENCE = 2

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @staticmethod
    def key(run_inner: Callable[..., Any]) -> str:
        code = getattr(run_inner, "__code__", None)
        blob = marshal.dumps(code) if code is not None else repr(run_inner).encode()
        return f"{getattr(run_inner, '__qualname__', 'run_inner')}-{hashlib.sha256(blob).hexdigest()[:16]}"

    def one_call_only(self, key: str) -> bool:
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return False
        if f"{key}.many" in names:
            return False
        return sum(1 for n in names if n.startswith(f"{key}.one.")) >= self.EVIDENCE

    def note(self, key: str, task: str, calls: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / (f"{key}.many" if calls > 1 else f"{key}.one.{task}")).touch()


# -- the run -----------------------------------------------------------------------------------------
def _send(task: luigi.Task) -> Callable[[Sequence[Callable[[Any], Any]], Sequence[str]], dict[int, tuple[bool, Any]]]:
    def send(fns: Sequence[Callable[[Any], Any]], labels: Sequence[str]) -> dict[int, tuple[bool, Any]]:
        outcomes: dict[int, tuple[bool, Any]] = {}
        lock = threading.Lock()

        def keep(position: int, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
            def job(llm: Any) -> Any:
                result = fn(llm)
                with lock:
                    outcomes[position] = (True, result)
                return result

            return job

        executor = executor_for(task, settings_for(task))
        try:
            executor.run_batch([keep(i, fn) for i, fn in enumerate(fns)], labels=list(labels))
        except ItemFailedError as exc:
            _log_failure(task, labels[exc.index], exc.failure.error)
            outcomes[exc.index] = (False, exc.failure.error)
        except FanOutError as exc:
            for failure in exc.failures:
                _log_failure(task, labels[failure.index], failure.error)
                outcomes[failure.index] = (False, failure.error)
        return outcomes

    return send


def _log_failure(task: luigi.Task, label: str, error: BaseException) -> None:
    """At WARNING, as the fan-out's own give-up line (README): PlanExe may go on without the call."""
    logger.warning(
        "task=%s item=%s failed after retries and fallback: %s: %s (PlanExe's code decides what follows)",
        task.task_family, label, type(error).__name__, one_line(error),
    )


def _live(task: luigi.Task) -> Callable[[Callable[[Any], Any], str], Any]:
    """One call now, as PlanExe's executor would make it (its error, 'Exhausted all LLMs', on failure)."""

    def live(fn: Callable[[Any], Any], label: str) -> Any:
        settings = replace(settings_for(task), failure_mode="fail_fast")
        try:
            return executor_for(task, settings).run_batch([fn], labels=[label])[0]
        except ItemFailedError as exc:
            raise (exc.__cause__ or exc) from None

    return live


def run_speculatively(task: luigi.Task, run_inner: Callable[[luigi.Task], None]) -> None:
    """PlanExe's ``run_inner`` for ``task``, with record passes ahead of it (see the module docstring)."""
    planexe = load_planexe()
    state = state_dir_of(task)
    name = task.task_family
    shapes, shape = CallShapes(state / SHAPES_DIR_NAME), CallShapes.key(run_inner)
    record_ahead = not shapes.one_call_only(shape)
    session = Speculation(
        task=name, store=AnswerStore(state / ANSWERS_DIR_NAME / name), max_in_flight=settings_for(task).max_parallel,
        record_ahead=record_ahead,
    )
    if not record_ahead:
        session.report.stopped_early = f"not recorded: {CallShapes.EVIDENCE}+ tasks with this run_inner made one call each"
    uuids = UuidReplay(planexe.pipeline.__name__.split(".")[0])
    scratch = ScratchRunDir(task, state / SCRATCH_DIR_NAME / f"{name}-{os.getpid()}")

    def body() -> None:
        with uuids.pass_():
            run_inner(task)

    def record_once() -> None:
        with scratch.copy_pass() as copy_, uuids.pass_():
            run_inner(copy_)

    def record(_pass: int) -> None:
        scratch.with_the_rest_if_needed(record_once, before_again=restart_pass)

    task._planexe_concurrency_executor = speculative_executor_class()(task, session)  # type: ignore[attr-defined]
    try:
        with uuids.installed():
            report = session.run(
                body, record=record, send=_send(task), live=_live(task), aside=uuids.aside,
                stop_exceptions=(planexe.PipelineStopRequested,),
            )
    finally:
        task.__dict__.pop("_planexe_concurrency_executor", None)
        scratch.close()
        _save_report(state, session.report)
    shapes.note(shape, name, report.calls)
    if report.fell_back:
        _tell_unavailable(name, report.fell_back)
    if report.sent_early or report.wasted:
        log = logger.warning if report.wasted else logger.info
        log(
            "task=%s speculation: %d record passes, %d rounds, %d calls sent early, %d used, %d wasted, %d asked in order"
            " (%d after a chain), %d from saved answers",
            name, report.passes, report.rounds, report.sent_early, report.used, report.wasted, report.asked_live,
            report.chained, report.replayed_from_store,
        )


def _save_report(state: Path, report: Any) -> None:
    (state / REPORTS_DIR_NAME).mkdir(parents=True, exist_ok=True)
    atomic_write_text(state / REPORTS_DIR_NAME / f"{report.task}.json", json.dumps(report.as_dict(), indent=1))


def _tell_unavailable(name: str, reason: str) -> None:
    with _told_lock:
        if name in _told_unavailable:
            return
        _told_unavailable.add(name)
    logger.warning("task=%s runs as PlanExe does (one call at a time): its code rejected a stand-in answer: %s",
                   name, one_line(reason))


def speculative_run(original_run: Callable[[luigi.Task], None]) -> Callable[[luigi.Task], None]:
    """Stands in for ``PlanTask.run``: PlanExe's own ``run`` (stop flag, error wrapping) around a speculative ``run_inner``."""

    def run(self: luigi.Task) -> None:
        inner = getattr(type(self), "run_inner", None)
        if inner is None or not wants_speculation(self):
            return original_run(self)
        from .relaxed import relaxed_runner

        runner = relaxed_runner(self) or run_speculatively
        self.run_inner = lambda: runner(self, inner)  # type: ignore[method-assign]  # shadows the class's, for this run only
        try:
            return original_run(self)
        finally:
            self.__dict__.pop("run_inner", None)

    run.__wrapped__ = original_run  # type: ignore[attr-defined]
    return run


__all__ = ["ScratchRunDir", "UuidReplay", "run_speculatively", "in_scratch", "speculative_run", "wants_speculation"]
