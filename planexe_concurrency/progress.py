"""How far a run is, read from the files its processes write (the parent, ``status``, tests).

Under ``luigi --workers N`` every task runs in a forked child and under luigid on other
hosts too, so the only state every process shares is the run's folder. Each process appends
to the same files beside the run directory: ``tasks.jsonl`` (Luigi's start/success/failure
of every task), ``events.jsonl`` (every LLM call's state changes) and, from the process
that started the run, ``run.json`` (the task graph, what ran, how it ended). A
:class:`RunProgress` tails those files and folds them into a :class:`Snapshot`; drawing it
is ``console.py``'s business.

The estimate of time left: every task not finished yet is given the median duration of the
tasks finished so far (a running task: that median less the time it has run, at least
its calls' mean), and the estimate is the longest chain of such tasks through the rest of
the graph (:func:`planexe_concurrency.timing.critical_path`; with one worker, their sum). It knows nothing of a task's
calls before it runs, so a chained loop (a self-audit of 20 calls in order) makes it low
until that task starts; it is shown with a ``~``.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .events import ItemState
from .resume import atomic_write_text
from .timing import critical_path

RUN_FILE = "run.json"
EVENTS_FILE = "events.jsonl"
TASKS_FILE = "tasks.jsonl"
CONSOLE_FILE = "console.log"  # warnings and errors of forked workers, printed by the parent
LOG_FILE = "log.txt"

RUNNING, DONE, FAILED, STOPPED, INTERRUPTED = "running", "done", "failed", "stopped", "interrupted"


@dataclass
class RunInfo:
    """What the process that starts a run writes first (``state`` again when it ends)."""

    run_dir: str
    graph: dict[str, list[str]]
    state: str = RUNNING
    started: float = field(default_factory=time.time)
    ended: float = 0.0
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    command: list[str] = field(default_factory=list)
    workers: int = 1
    complete_at_start: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def write(self, state_dir: str | os.PathLike[str]) -> None:
        atomic_write_text(Path(state_dir) / RUN_FILE, json.dumps(asdict(self), indent=2, sort_keys=True))

    @classmethod
    def read(cls, state_dir: str | os.PathLike[str]) -> "RunInfo | None":
        path = Path(state_dir) / RUN_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def owner_gone(self) -> bool:
        """True if the run says it is running but its process on this host is gone."""
        if self.state != RUNNING or self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


class JsonlTail:
    """New complete lines of a file others append to; a half-written last line waits for its end."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._offset = 0
        self._partial = b""

    def lines(self) -> Iterator[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        for raw in complete:
            if raw.strip():
                yield raw.decode("utf-8", errors="replace")

    def records(self) -> Iterator[dict[str, Any]]:
        for line in self.lines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash: skip it, never stop the display
                continue


@dataclass(frozen=True)
class RunningTask:
    task: str
    started: float
    calls_done: int
    calls_in_flight: int


@dataclass(frozen=True)
class Snapshot:
    """One look at a run. Counts are of this run's events (a resumed run counts what it ran again)."""

    state: str
    elapsed: float
    tasks_total: int
    tasks_done: int
    tasks_failed: int
    running: tuple[RunningTask, ...]
    calls_answered: int
    calls_in_flight: int
    calls_retried: int
    calls_failed: int
    calls_cached: int
    eta: float | None
    failed_task: str = ""
    failed_item: str = ""
    failed_error: str = ""
    carried_on: tuple[str, ...] = ()  # calls given up in tasks that then succeeded (PlanExe went on without them)
    limit: int = 0  # max_in_flight as the latest call saw it (auto: the adapted limit); 0 = no cap


class RunProgress:
    """Folds a run's event files into counts, reading only what was appended since the last look."""

    def __init__(self, state_dir: str | os.PathLike[str], info: RunInfo | None = None, host: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.info = info
        self._info_stamp = -1
        self.host = host  # list only this host's running tasks (luigid, several hosts); None: every host's
        self._tasks = JsonlTail(self.state_dir / TASKS_FILE)
        self._events = JsonlTail(self.state_dir / EVENTS_FILE)
        self._task_state: dict[str, tuple[str, str, float]] = {}  # task_id -> (family, event, time)
        self._task_host: dict[str, str] = {}
        self._durations: list[float] = []
        self._starts: dict[str, float] = {}
        self._calls: dict[tuple[int, str, str, int], tuple[str, float]] = {}  # (pid, task, label, item) -> (state, time)
        self._call_durations: list[float] = []
        self.retried = 0
        self.cached = 0
        self.limit = 0  # the run's cap on calls in flight, as the latest call saw it (0: none)
        self._failed_tasks: list[tuple[str, str]] = []  # (task, error) in the order they failed
        self._failed_items: dict[str, tuple[str, str]] = {}  # task -> (item, error) of its first failed call
        self._given_up: list[tuple[str, str]] = []  # (task, item) of every call given up

    def _read_info(self) -> RunInfo | None:
        """``run.json``, parsed again only when it changed (it holds the whole graph)."""
        try:
            stamp = (self.state_dir / RUN_FILE).stat().st_mtime_ns
        except FileNotFoundError:
            return self.info
        if stamp != self._info_stamp:
            self.info = RunInfo.read(self.state_dir) or self.info
            self._info_stamp = stamp
        return self.info

    def _since(self, records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """This run's records: the files keep an earlier, resumed run's lines too."""
        since = self.info.started if self.info else 0.0
        return (rec for rec in records if float(rec.get("time", 0.0)) >= since)

    def _fold_tasks(self) -> None:
        for rec in self._since(self._tasks.records()):
            task_id, event, when = rec.get("task_id", ""), rec.get("event", ""), float(rec.get("time", 0.0))
            self._task_state[task_id] = (rec.get("task", ""), event, when)
            self._task_host[task_id] = rec.get("host", "")
            if event == "start":
                self._starts[task_id] = when
            elif event in ("success", "failure") and task_id in self._starts:
                if event == "success":
                    self._durations.append(when - self._starts.pop(task_id))
                else:
                    self._starts.pop(task_id)
                    self._failed_tasks.append((rec.get("task", ""), rec.get("error", "")))

    def _fold_events(self) -> None:
        for rec in self._since(self._events.records()):
            state = rec.get("state", "")
            key = (int(rec.get("pid", 0)), rec.get("task", ""), rec.get("label", ""), int(rec.get("item", 0)))
            if state == ItemState.RUNNING.value and int(rec.get("attempt", 0)) > 1:
                self.retried += 1
            if state == ItemState.RUNNING.value and rec.get("limit"):
                self.limit = int(rec["limit"])
            self._calls[key] = (state, float(rec.get("time", 0.0)))
            if state == ItemState.COMPLETED.value and rec.get("cached"):
                self.cached += 1
            elif state == ItemState.COMPLETED.value:
                self._call_durations.append(float(rec.get("duration", 0.0)))
            if state == ItemState.FAILED.value:
                item = f"{int(rec.get('item', 0)) + 1}/{int(rec.get('total', 0))}"
                label = rec.get("label", "")
                where = f"{item} ({label})" if label else item
                self._given_up.append((key[1], where))
                self._failed_items.setdefault(key[1], (where, rec.get("error", "")))

    def poll(self, now: float | None = None) -> Snapshot:
        now = time.time() if now is None else now
        info = self._read_info()
        self._fold_tasks()
        self._fold_events()
        graph = info.graph if info else {}
        finished = {fam for fam, event, _ in self._task_state.values() if event == "success"}
        finished |= set(info.complete_at_start if info else ())
        failed = {fam for fam, event, _ in self._task_state.values() if event == "failure"} - finished
        per_task: dict[str, list[int]] = {}
        for (_, task, _, _), (call_state, _) in self._calls.items():
            counts = per_task.setdefault(task, [0, 0])
            if call_state == ItemState.COMPLETED.value:
                counts[0] += 1
            elif call_state == ItemState.RUNNING.value:
                counts[1] += 1
        running: list[RunningTask] = []
        for task_id, (family, event, when) in self._task_state.items():
            if event == "start" and self.host in (None, self._task_host.get(task_id) or self.host):
                done, in_flight = per_task.get(family, (0, 0))
                running.append(RunningTask(family, when, done, in_flight))
        running.sort(key=lambda r: r.started)
        states = [s for s, _ in self._calls.values()]
        state = info.state if info else RUNNING
        if info is not None and info.owner_gone():
            state = INTERRUPTED
        started = info.started if info else now
        ended = info.ended if info and info.ended else now
        return Snapshot(
            state=state,
            elapsed=max(0.0, ended - started),
            tasks_total=len(graph) or len(finished) + len(running),
            tasks_done=len(finished),
            tasks_failed=len(failed),
            running=tuple(running),
            calls_answered=states.count(ItemState.COMPLETED.value),
            calls_in_flight=states.count(ItemState.RUNNING.value),
            calls_retried=self.retried,
            calls_failed=states.count(ItemState.FAILED.value),
            calls_cached=self.cached,
            eta=self._eta(graph, finished, running, now) if state == RUNNING else 0.0,
            carried_on=tuple(f"{task} item {item}" for task, item in self._given_up if task in finished),
            limit=self.limit,
            **self._failure(),
        )

    def _failure(self) -> dict[str, str]:
        """The first task that failed, its first failed call and the error, for the summary."""
        if not self._failed_tasks:
            return {}
        task, task_error = self._failed_tasks[0]
        item, item_error = self._failed_items.get(task, ("", ""))
        return {"failed_task": task, "failed_item": item, "failed_error": item_error or task_error}

    def _eta(self, graph: Mapping[str, Sequence[str]], finished: set[str], running: list[RunningTask], now: float) -> float | None:
        if not graph or not self._durations:
            return None
        typical = statistics.median(self._durations)
        call = statistics.fmean(self._call_durations) if self._call_durations else 0.0
        left: dict[str, float] = {}
        for task in graph:
            if task not in finished:
                left[task] = typical
        for r in running:
            left[r.task] = max(typical - (now - r.started), call)
        if self.info is not None and self.info.workers <= 1:
            return sum(left.values())  # one worker: one task after another
        rest = {task: [d for d in deps if d in left] for task, deps in graph.items() if task in left}
        length, _ = critical_path(left, rest)
        return length


def sequential_estimate(task_spans: Sequence[Any], calls: Sequence[Any]) -> float:
    """What the run would have taken one call and one task at a time, from its own measurements.

    Each task's time outside its calls (its span less the time covered by at least one of its
    calls) plus every call's own duration.
    """
    total = 0.0
    for span in task_spans:
        mine = sorted((c.start, c.end) for c in calls if c.pid == span.pid and span.start <= c.start <= span.end)
        covered, reach = 0.0, float("-inf")
        for start, end in mine:
            if end > reach:
                covered += end - max(start, reach)
                reach = end
        total += max(0.0, span.duration - covered) + sum(end - start for start, end in mine)
    return total


@dataclass(frozen=True)
class RunSummary:
    """The numbers the end of a run reports (also kept in ``run.json``)."""

    state: str
    wall: float
    tasks_done: int
    tasks_total: int
    calls_answered: int
    calls_retried: int
    calls_failed: int
    sequential_estimate: float
    critical_path: float
    longest: tuple[tuple[str, float], ...]
    failed_task: str = ""
    failed_item: str = ""
    failed_error: str = ""
    carried_on: tuple[str, ...] = ()

    @property
    def speed_up(self) -> float:
        return self.sequential_estimate / self.wall if self.wall > 0 else 0.0

    @property
    def from_critical_path(self) -> float:
        return self.wall / self.critical_path if self.critical_path > 0 else 0.0


def summarise(state_dir: str | os.PathLike[str], wall: float, state: str) -> RunSummary:
    """Wall time, calls, the sequential time this run's own measurements give, and the
    critical path of its tasks as they ran (how much the scheduling lost)."""
    from .events import read_events
    from .plots import item_spans
    from .timing import read_task_spans

    state_dir = Path(state_dir)
    progress = RunProgress(state_dir)
    snap = progress.poll()
    spans = read_task_spans(state_dir / TASKS_FILE) if (state_dir / TASKS_FILE).exists() else []
    events = read_events(state_dir / EVENTS_FILE) if (state_dir / EVENTS_FILE).exists() else []
    calls = item_spans(events)
    ran = [s for s in spans if s.ok]
    graph = progress.info.graph if progress.info else {}
    length, _ = critical_path({s.task: s.duration for s in ran}, graph) if graph else (0.0, [])
    longest = tuple((s.task, s.duration) for s in sorted(ran, key=lambda s: s.duration, reverse=True)[:3])
    return RunSummary(
        state=state,
        wall=wall,
        tasks_done=snap.tasks_done,
        tasks_total=snap.tasks_total,
        calls_answered=snap.calls_answered,
        calls_retried=snap.calls_retried,
        calls_failed=snap.calls_failed,
        sequential_estimate=sequential_estimate(spans, calls),
        critical_path=length,
        longest=longest,
        failed_task=snap.failed_task,
        failed_item=snap.failed_item,
        failed_error=snap.failed_error,
        carried_on=snap.carried_on,
    )
