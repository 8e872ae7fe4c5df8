"""One watched ``luigi.build`` of PlanExe's pipeline: event files, live display, summary, timeline.

Used by ``planexe-concurrency run`` and by the flag entry points (``flag_toggle.py``), so a
plan looks the same however it was started, and ``planexe-concurrency status RUN_DIR`` can
follow it from anywhere that sees the run directory.
"""
from __future__ import annotations

import logging
import shlex
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import luigi

from planexe_concurrency.config import read_config, set_config_values
from planexe_concurrency.console import ProgressReporter, summary_lines
from planexe_concurrency.plots import write_timeline
from planexe_concurrency.progress import (
    CONSOLE_FILE, DONE, EVENTS_FILE, FAILED, LOG_FILE, STOPPED, TASKS_FILE, RunInfo, RunSummary, summarise,
)
from planexe_concurrency.timing import record_task_events, task_graph

from .rundir import state_dir_for

logger = logging.getLogger("planexe_concurrency")

_events_file_we_set: dict[str, str] = {}  # the events_file start_watch set last (only the parent sets it)


def complete_families(root: luigi.Task, graph: dict[str, list[str]]) -> list[str]:
    """Tasks already complete before the build (a resume): counted as done from the start.

    ``graph`` is ``task_graph(root)``: everything under a complete task counts as complete too,
    as far as this build is concerned, without asking it.
    """
    done, seen, stack = [], set(), [root]
    while stack:
        task = stack.pop()
        if task.task_id in seen:
            continue
        seen.add(task.task_id)
        if task.complete():
            done.append(task.task_family)
        else:
            stack.extend(luigi.task.flatten(task.requires()))
    closed, below = set(done), list(done)
    while below:
        for dep in graph.get(below.pop(), ()):
            if dep not in closed:
                closed.add(dep)
                below.append(dep)
    return sorted(closed)


def log_file_of(state_dir: Path, run_dir: Path) -> Path | None:
    """Ours (``run``), or PlanExe's own (its entry points keep their logging), if there is one."""
    return next((path for path in (state_dir / LOG_FILE, run_dir / LOG_FILE) if path.exists()), None)


def lines_of_summary(summary: RunSummary, state_dir: Path, run_dir: Path, timeline: Path | None, resume: str) -> list[str]:
    """The summary's lines with where the run's report, log and timeline are (``run``, ``status``)."""
    reports = sorted(run_dir.glob("*report.html"))
    return summary_lines(
        summary, run_dir=run_dir, report=reports[-1] if reports else None, log_file=log_file_of(state_dir, run_dir),
        timeline=timeline, resume=resume,
    )


@dataclass
class WatchedRun:
    """A run being watched; ``finish`` writes how it ended and returns the summary's lines."""

    root: luigi.Task
    state_dir: Path
    info: RunInfo
    reporter: ProgressReporter
    resume_command: str
    _stop_recording: Any = field(default=None, repr=False)

    @property
    def run_dir(self) -> Path:
        return Path(self.root.run_id_dir)

    def finish(self, ok: bool, wall: float, stopped: bool = False) -> tuple[RunSummary, list[str]]:
        self.reporter.stop()
        if self._stop_recording is not None:
            self._stop_recording()
        state = DONE if ok else STOPPED if stopped else FAILED
        summary = summarise(self.state_dir, wall, state)
        self.info.state, self.info.ended = state, self.info.started + wall
        self.info.summary = asdict(summary)
        self.info.write(self.state_dir)
        timeline: Path | None = None
        try:
            timeline = write_timeline(self.state_dir, f"{self.run_dir.name} ({state})", png=False)[0]
        except Exception as exc:  # a picture must never turn a finished plan into a failure
            logger.warning("planexe-concurrency: the timeline could not be drawn: %s", exc)
        return summary, lines_of_summary(summary, self.state_dir, self.run_dir, timeline, self.resume_command)


def start_watch(
    root: luigi.Task,
    *,
    workers: int,
    command: Sequence[str] | None = None,
    live: bool | None = None,
    interval: float = 10.0,
    console_printer: Any = None,
    plain_printer: Any = None,
) -> WatchedRun:
    """Point every process's event files at the run's state folder, write ``run.json``, start drawing.

    ``console_printer`` is the console handler to route through the display (``run``);
    PlanExe's own entry points keep their logging.
    """
    run_dir = Path(root.run_id_dir)
    state_dir = state_dir_for(run_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / CONSOLE_FILE).unlink(missing_ok=True)
    # This run's events file, unless the user named one. A long-lived process (PlanExe's database
    # worker runs plan after plan) must not keep the previous run's: what we set, we set again.
    configured = read_config().events_file
    if not configured or configured == _events_file_we_set.get("path"):
        _events_file_we_set["path"] = str(state_dir / EVENTS_FILE)
        set_config_values({"events_file": _events_file_we_set["path"]})
    stop_recording = record_task_events(state_dir / TASKS_FILE)
    argv = list(command) if command is not None else list(sys.argv)
    graph = task_graph(root)
    info = RunInfo(
        run_dir=str(run_dir), graph=graph, command=argv, workers=workers, complete_at_start=complete_families(root, graph),
    )
    info.write(state_dir)
    reporter = ProgressReporter(
        state_dir, live=live, interval=interval, title=f"PlanExe: {run_dir}", plain_printer=plain_printer,
        host=socket.gethostname(),  # under luigid on several hosts: the tasks this host runs
    )
    if console_printer is not None:
        console_printer.printer = reporter.print_line
    reporter.start()
    return WatchedRun(root, state_dir, info, reporter, shlex.join(argv), stop_recording)
