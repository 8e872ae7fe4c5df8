"""Task timelines from Luigi's events, and the critical-path bounds a speed-up is measured against.

Recording: :func:`record_task_events` registers Luigi event handlers that append one JSON
line per task start/finish to a file. Under ``--workers N`` the handlers run in the forked
child that runs the task, so only the file system carries them back; each line is one
``O_APPEND`` write, so lines from several children never interleave.

Bounds: given each task's duration, the time of each of its calls that could run in
parallel, and the graph, :func:`critical_path` finds the longest chain. Two bounds matter:

* **graph bound**: every task as long as it took, tasks as parallel as the graph allows
  (what unlimited Luigi workers alone could reach);
* **full bound**: the same, but each fan-out task's parallel calls overlapped completely
  (its duration minus the sum of those calls plus the longest of them).

No scheduler can beat the full bound with the same per-call latencies, so
``wall time / full bound`` says how much is left on the table.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import luigi

from .events import append_text

_registered: dict[str, Callable[[], None]] = {}
_register_lock = threading.Lock()


def _append_line(path: Path, data: dict[str, object]) -> None:
    append_text(path, json.dumps(data, sort_keys=True) + "\n")


def append_task_event(path: str | os.PathLike[str], task: luigi.Task, event: str, error: object = None) -> None:
    """One line for one Luigi task event; ``ppid`` is the worker process that forked the task's process."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, object] = {
        "task": task.task_family,
        "task_id": task.task_id,
        "event": event,
        "time": time.time(),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "host": socket.gethostname(),
    }
    if error is not None:
        data["error"] = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    _append_line(target, data)


def record_task_events(path: str | os.PathLike[str]) -> Callable[[], None]:
    """Append ``{"task", "task_id", "event", "time", "pid", "ppid"}`` lines for every Luigi task to ``path``.

    Call it in the parent before ``luigi.build``; registering the same path twice is a no-op.
    Returns a function that unregisters the handlers again.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    key = str(target.resolve())
    with _register_lock:
        if key in _registered:
            return _registered[key]

    def handler(event: str):  # type: ignore[no-untyped-def]
        def on_event(task: luigi.Task, *args: object) -> None:
            append_task_event(target, task, event, args[0] if event == "failure" and args else None)

        return on_event

    installed = {
        luigi.Event.START: handler("start"),
        luigi.Event.SUCCESS: handler("success"),
        luigi.Event.FAILURE: handler("failure"),
    }
    for event, callback in installed.items():
        luigi.Task.event_handler(event)(callback)

    def stop() -> None:
        for event, callback in installed.items():
            luigi.Task.remove_event_handler(event, callback)
        with _register_lock:
            _registered.pop(key, None)

    with _register_lock:
        _registered[key] = stop
    return stop


@dataclass
class TaskSpan:
    task: str
    start: float
    end: float
    pid: int
    ok: bool

    @property
    def duration(self) -> float:
        return self.end - self.start


def read_task_spans(path: str | os.PathLike[str]) -> list[TaskSpan]:
    """Pair start/finish lines into spans (the last start of a task wins, as on a resume)."""
    starts: dict[str, tuple[float, int]] = {}
    spans: list[TaskSpan] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec["event"] == "start":
            starts[rec["task_id"]] = (rec["time"], rec["pid"])
        elif rec["task_id"] in starts:
            begun, pid = starts.pop(rec["task_id"])
            spans.append(TaskSpan(rec["task"], begun, rec["time"], pid, rec["event"] == "success"))
    return sorted(spans, key=lambda s: s.start)


def task_graph(root: luigi.Task) -> dict[str, list[str]]:
    """``{task family: [families it requires]}`` for the whole graph under ``root``."""
    graph: dict[str, list[str]] = {}
    seen: set[str] = set()
    stack = [root]
    while stack:
        task = stack.pop()
        if task.task_id in seen:
            continue
        seen.add(task.task_id)
        deps = luigi.task.flatten(task.requires())
        graph.setdefault(task.task_family, [])
        for dep in deps:
            if dep.task_family not in graph[task.task_family]:
                graph[task.task_family].append(dep.task_family)
            stack.append(dep)
    return graph


def critical_path(durations: Mapping[str, float], graph: Mapping[str, Sequence[str]]) -> tuple[float, list[str]]:
    """Length and tasks of the longest chain; a task missing from ``durations`` takes 0 s."""
    memo: dict[str, tuple[float, list[str]]] = {}

    def longest(node: str, trail: frozenset[str]) -> tuple[float, list[str]]:
        if node in memo:
            return memo[node]
        if node in trail:
            raise ValueError(f"the task graph has a cycle through {node}")
        best: tuple[float, list[str]] = (0.0, [])
        for dep in graph.get(node, ()):
            candidate = longest(dep, trail | {node})
            if candidate[0] > best[0]:
                best = candidate
        memo[node] = (best[0] + durations.get(node, 0.0), best[1] + [node])
        return memo[node]

    result: tuple[float, list[str]] = (0.0, [])
    for node in graph:
        candidate = longest(node, frozenset())
        if candidate[0] > result[0]:
            result = candidate
    return result


@dataclass
class TaskCalls:
    """A task's measured time and the latencies of its calls that could overlap."""

    duration: float
    parallel_calls: list[float] = field(default_factory=list)

    @property
    def fully_parallel_duration(self) -> float:
        if not self.parallel_calls:
            return self.duration
        return max(0.0, self.duration - sum(self.parallel_calls) + max(self.parallel_calls))

    def duration_at_width(self, slots: int) -> float:
        """The task's time with its overlappable calls at most ``slots`` at a time: they take
        no less than the longest of them, nor than their sum spread over the slots."""
        if not self.parallel_calls:
            return self.duration
        calls = sum(self.parallel_calls)
        return max(0.0, self.duration - calls + max(max(self.parallel_calls), calls / slots))


@dataclass(frozen=True)
class Bounds:
    graph: float
    full: float
    graph_path: tuple[str, ...]
    full_path: tuple[str, ...]


def bounds(tasks: Mapping[str, TaskCalls], graph: Mapping[str, Sequence[str]]) -> Bounds:
    graph_len, graph_path = critical_path({k: v.duration for k, v in tasks.items()}, graph)
    full_len, full_path = critical_path({k: v.fully_parallel_duration for k, v in tasks.items()}, graph)
    return Bounds(graph_len, full_len, tuple(graph_path), tuple(full_path))


def critical_path_at_width(tasks: Mapping[str, TaskCalls], graph: Mapping[str, Sequence[str]], slots: int) -> float:
    """The critical path when no more than ``slots`` calls are in flight at once (a provider of K slots)."""
    return critical_path({k: v.duration_at_width(slots) for k, v in tasks.items()}, graph)[0]


def calls_per_task(spans: Iterable[TaskSpan], calls: Iterable[tuple[float, float]]) -> dict[str, list[float]]:
    """Attribute each call ``(start, end)`` to the task whose span contains it (sequential runs only)."""
    ordered = sorted(spans, key=lambda s: s.start)
    out: dict[str, list[float]] = {s.task: [] for s in ordered}
    for start, end in sorted(calls):
        for span in ordered:
            if span.start <= start and end <= span.end:
                out[span.task].append(end - start)
                break
    return out


def scheduling_gaps(spans: Sequence[TaskSpan], graph: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Seconds from the moment a task could have started to its START, per task.

    That moment is the later of its last dependency finishing and the last finish of any task
    before its start (with every worker busy, a task waits for a slot, not for the scheduler;
    with one worker, for the task before it). What is left is the scheduler's share of
    per-task overhead: Luigi picking the task, forking its process, the child checking its
    dependencies, none of which lies inside a task's own span. Tasks whose dependencies did
    not run in this log (none, or complete beforehand) are left out.
    """
    ends = {s.task: s.end for s in spans}
    finishes = sorted(s.end for s in spans)
    gaps: dict[str, float] = {}
    for s in spans:
        ready = [ends[d] for d in graph.get(s.task, ()) if d in ends]
        if not ready:
            continue
        before = [t for t in finishes if t <= s.start]
        could_start = max(max(ready), before[-1] if before else float("-inf"))
        gaps[s.task] = max(0.0, s.start - could_start)
    return gaps
