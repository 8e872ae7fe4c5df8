"""What a person sees while a plan is made: a quiet console, one live display, a summary.

* **Logging.** Everything (Luigi's scheduler, PlanExe, ours) goes once to the run's log
  file; the console gets warnings and errors (``-v``: INFO, ``-vv``: DEBUG). Luigi is built
  with ``no_configure_logging`` so its own handler does not print every line a second time.
* **One drawer.** Only the process that started the run draws. A forked Luigi worker's
  console lines go to ``console.log`` beside the run (:class:`ConsoleHandler`); the parent's
  :class:`ProgressReporter` prints them above its display. The counts come from the event
  files every process appends to (``progress.py``), so the display is right under
  ``--workers N`` and, for ``status``, for runs driven by other processes and hosts.
* **A terminal** gets a live display (rich); **anything else** (CI, a log file, ``nohup``)
  one plain line every ``interval`` seconds when something changed, no control characters.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from . import forksafe
from .events import append_text
from .progress import CONSOLE_FILE, JsonlTail, RunProgress, RunSummary, Snapshot

LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
CONSOLE_FORMAT = "%(levelname)s %(name)s: %(message)s"
# Loggers whose INFO/DEBUG belong in the log file at the default verbosity (the rest: INFO).
DETAILED_LOGGERS = ("luigi", "luigi-interface", "planexe_concurrency")
MAX_RUNNING_SHOWN = 6


def console_level(verbosity: int, level: str | None = None, default: str = "WARNING") -> int:
    """``-v``/``-vv`` over the default; an explicit level name (``--log-level``) wins."""
    if level:
        value = logging.getLevelName(level.upper())
        if not isinstance(value, int):
            raise ValueError(f"unknown log level {level!r}: expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value
    if verbosity >= 2:
        return logging.DEBUG
    if verbosity == 1:
        return min(logging.INFO, logging.getLevelName(default))
    return logging.getLevelName(default)


class ConsoleHandler(logging.Handler):
    """The console's share of the log: printed by the process that set it up, relayed by forks."""

    def __init__(self, level: int, console_file: Path | None, printer: Callable[[str], None] | None = None) -> None:
        super().__init__(level)
        self.console_file = console_file
        self.printer: Callable[[str], None] | None = printer
        self._owner = os.getpid()
        self.setFormatter(logging.Formatter(CONSOLE_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if os.getpid() == self._owner or self.console_file is None:
                (self.printer or _print_to_stderr)(line)
            else:  # a forked Luigi worker: never draw, hand it to the parent
                append_text(self.console_file, line + "\n")
        except Exception:  # pragma: no cover - logging must never fail the run
            self.handleError(record)


def _print_to_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


_OURS = "_planexe_concurrency_handler"


def _drop_our_handlers(root: logging.Logger) -> None:
    for handler in list(root.handlers):
        if getattr(handler, _OURS, False):
            root.removeHandler(handler)
            handler.close()


def configure_console(verbosity: int, *, level: str | None = None, default: str = "WARNING") -> ConsoleHandler:
    """The console handler alone (commands without a run's log file, and a run until it has one)."""
    root = logging.getLogger()
    _drop_our_handlers(root)
    console = ConsoleHandler(console_level(verbosity, level, default), None)
    setattr(console, _OURS, True)
    root.addHandler(console)
    root.setLevel(min(console.level, logging.INFO))
    return console


def configure_logging(
    verbosity: int, log_file: Path, console_file: Path | None = None, *, level: str | None = None
) -> ConsoleHandler:
    """One file handler (everything, once) and one console handler, on the root logger.

    Calling it again (another run in the same process) replaces the handlers it added.
    """
    root = logging.getLogger()
    _drop_our_handlers(root)
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    for name in DETAILED_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setLevel(logging.DEBUG)
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    console = ConsoleHandler(console_level(verbosity, level), console_file)
    for handler in (file_handler, console):
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    logging.captureWarnings(True)  # a UserWarning is a log line too: once in the file, on the console
    return console


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def plain_line(snap: Snapshot) -> str:
    """One line, no control characters: CI logs, ``nohup``, ``status --once``."""
    left = f", ~{_clock(snap.eta)} left" if snap.eta else ""
    return (
        f"planexe-concurrency: {snap.state}: {snap.tasks_done}/{snap.tasks_total} tasks"
        f"{f' ({snap.tasks_failed} failed)' if snap.tasks_failed else ''}, "
        f"LLM calls {snap.calls_answered} answered, {snap.calls_in_flight} in flight, {snap.calls_retried} retried, "
        f"{snap.calls_failed} failed{f' (cap {snap.limit})' if snap.limit else ''}, {_clock(snap.elapsed)} elapsed{left}"
    )


def live_renderable(snap: Snapshot, title: str = "") -> Any:
    """The live display: progress, calls, time, and the tasks running now."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    head = Table.grid(padding=(0, 1))
    head.add_row(
        ProgressBar(total=max(1, snap.tasks_total), completed=snap.tasks_done, width=30),
        Text(f"{snap.tasks_done}/{snap.tasks_total} tasks", style="bold"),
        Text(f"{_clock(snap.elapsed)} elapsed" + (f", ~{_clock(snap.eta)} left" if snap.eta else "")),
    )
    calls = Text(
        f"LLM calls: {snap.calls_answered} answered · {snap.calls_in_flight} in flight · "
        f"{snap.calls_retried} retried · {snap.calls_failed} failed" + (f" · cap {snap.limit}" if snap.limit else "")
    )
    lines: list[Any] = [Text(title, style="dim")] if title else []
    lines += [head, calls]
    now = time.time()
    for task in snap.running[:MAX_RUNNING_SHOWN]:
        calls_text = f"{task.calls_done} answered, {task.calls_in_flight} in flight" if task.calls_done or task.calls_in_flight else "starting"
        lines.append(Text(f"  ▸ {task.task}  {calls_text}  {now - task.started:.0f}s", style="cyan"))
    if len(snap.running) > MAX_RUNNING_SHOWN:
        lines.append(Text(f"  … and {len(snap.running) - MAX_RUNNING_SHOWN} more", style="cyan"))
    return Group(*lines)


def _rich_available() -> bool:
    """rich draws the live display; a PlanExe venv given this package with ``--no-deps`` may lack it."""
    try:
        import rich.live  # noqa: F401
    except ImportError:
        return False
    return True


class ProgressReporter:
    """Draws one run's progress in the process that started it (or in ``status``)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        stream: TextIO | None = None,
        live: bool | None = None,
        interval: float = 10.0,
        title: str = "",
        plain_printer: Callable[[str], None] | None = None,
        tick: float | None = None,
        host: str | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.live = (self.stream.isatty() if live is None else live) and _rich_available()
        self.interval = interval
        self.title = title
        self.progress = RunProgress(state_dir, host=host)
        self._console_tail = JsonlTail(Path(state_dir) / CONSOLE_FILE)
        self._plain_printer = plain_printer or self._write_line_alone
        # The parent that draws is Luigi's scheduler too: look at the files only as often as needed.
        self._tick = tick if tick is not None else 0.25 if self.live else min(1.0, max(0.05, interval / 4))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._fork_token: int | None = None
        self._live: Any = None
        self._last_plain = 0.0
        self.last: Snapshot | None = None

    def _write_line(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def _write_line_alone(self, line: str) -> None:
        with self._lock:  # the lock a fork waits for (see start)
            self._write_line(line)

    def print_line(self, line: str) -> None:
        """A console line (a warning, a notice) above the display, never through it."""
        with self._lock:
            if self._live is not None:
                from rich.text import Text

                self._live.console.print(Text(line), soft_wrap=True)  # the terminal wraps; a copied line stays one
            else:
                self._write_line(line)

    def __enter__(self) -> "ProgressReporter":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.live:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, force_terminal=True)
            self._live = Live(console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False, transient=False)
            self._live.start()
        self._last_plain = time.monotonic()
        # This thread draws while Luigi forks the workers: a fork waits for a line or a frame
        # being written, else the child would inherit the stream's lock held (forksafe).
        self._fork_token = forksafe.hold_at_fork(self._lock)
        self._thread = threading.Thread(target=self._loop, name="planexe-concurrency-progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._tick):
            self.refresh()

    def refresh(self, final: bool = False) -> Snapshot:
        for line in self._console_tail.lines():
            self.print_line(line)
        snap = self.progress.poll()
        self.last = snap
        with self._lock:
            if self._live is not None:
                self._live.update(live_renderable(snap, self.title), refresh=True)
                return snap
        if not final and time.monotonic() - self._last_plain >= self.interval:
            self._plain_printer(plain_line(snap))
            self._last_plain = time.monotonic()
        return snap

    def stop(self) -> Snapshot | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fork_token is not None:
            forksafe.release_at_fork(self._fork_token)
            self._fork_token = None
        snap = self.refresh(final=True)
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None
        return snap


def summary_lines(
    summary: RunSummary, *, run_dir: Path, report: Path | None, log_file: Path | None, timeline: Path | None, resume: str
) -> list[str]:
    """The end of a run, in a few lines: how it went, how fast, where everything is."""
    from .events import one_line

    calls = f"{summary.calls_answered} LLM calls answered, {summary.calls_retried} retried, {summary.calls_failed} failed"
    lines = []
    if summary.state == "done":
        lines.append(f"planexe-concurrency: done in {_clock(summary.wall)} ({summary.wall:.1f}s): "
                     f"{summary.tasks_done}/{summary.tasks_total} tasks, {calls}")
        if summary.calls_answered and summary.sequential_estimate > 0:
            lines.append(
                f"  speed-up {summary.speed_up:.2f}x against {summary.sequential_estimate:.1f}s one call at a time "
                f"(estimated from this run's calls and tasks); {summary.from_critical_path:.2f}x its tasks' critical path "
                f"({summary.critical_path:.1f}s)"
            )
        if summary.carried_on:
            lines.append(
                f"  {len(summary.carried_on)} call(s) given up in tasks that went on without them (PlanExe skips such an "
                f"item, so its files lack that part): " + ", ".join(summary.carried_on[:5])
                + (f" and {len(summary.carried_on) - 5} more" if len(summary.carried_on) > 5 else "")
            )
        if summary.longest:
            lines.append("  longest tasks: " + ", ".join(f"{task} {seconds:.1f}s" for task, seconds in summary.longest))
        lines.append(f"  outputs: {run_dir}" + (f"   report: {report}" if report else ""))
    else:
        where = f" in task={summary.failed_task}" if summary.failed_task else ""
        if summary.failed_item:
            where += f" item={summary.failed_item}"
        lines.append(f"planexe-concurrency: {summary.state.upper()} after {summary.wall:.1f}s{where}: {calls}")
        if summary.failed_error:
            lines.append(f"  error: {one_line(summary.failed_error)[:300]}")
        lines.append(f"  resume with: {resume}")
    where = ([f"log: {log_file}"] if log_file else []) + ([f"timeline: {timeline}"] if timeline else [])
    if where:
        lines.append("  " + "   ".join(where))
    return lines
