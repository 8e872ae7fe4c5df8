"""Item state changes as structured events, and the listeners that make them visible.

Every item of a fan-out moves ``pending -> running -> completed | failed`` (or
``cancelled``); each change is one :class:`ItemEvent`. Listeners are plain callables,
so a caller can add its own. The defaults write one JSON line per event (readable by
another process: under ``luigi --workers N`` each task runs in a forked child, so
in-memory state never reaches the parent; the parent's display reads the file) and log one
line naming the task and the item. A forked worker never draws (see ``console.py``).
"""
from __future__ import annotations

import enum
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

logger = logging.getLogger("planexe_concurrency")


class ItemState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class ItemEvent:
    """One state change of one item. ``attempt`` counts tries across retries and fallback models."""

    task: str
    item: int
    total: int
    state: ItemState
    attempt: int = 0
    duration: float = 0.0
    time: float = 0.0
    pid: int = 0
    label: str = ""
    cached: bool = False
    error: str = ""
    limit: int = 0  # the run's cap on calls in flight when this attempt started (0: none)

    def to_json(self) -> str:
        data: dict[str, Any] = asdict(self)
        data["state"] = self.state.value
        return json.dumps(data, sort_keys=True)


class Listener(Protocol):
    def __call__(self, event: ItemEvent) -> None: ...


def one_line(value: object) -> str:
    """``str(value)`` on one line, so a log line never spills onto lines that name no task or item."""
    return " | ".join(part.strip() for part in str(value).splitlines() if part.strip())


def make_event(task: str, item: int, total: int, state: ItemState, **kwargs: Any) -> ItemEvent:
    return ItemEvent(task=task, item=item, total=total, state=state, time=time.time(), pid=os.getpid(), **kwargs)


class EventBus:
    """Hands each event to every listener; a failing listener is logged, never fatal to the run."""

    __slots__ = ("_listeners", "_lock")

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self._listeners: list[Listener] = list(listeners)
        self._lock = threading.Lock()

    def add(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def emit(self, event: ItemEvent) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception as exc:  # a broken listener must not fail an LLM run
                logger.error(
                    "task=%s item=%d/%d event listener %r failed: %s",
                    event.task, event.item + 1, event.total, listener, one_line(repr(exc)),
                )


def append_text(path: str | os.PathLike[str], text: str) -> None:
    """Append ``text`` (whole lines) with one ``os.write`` on an ``O_APPEND`` descriptor: lines
    from several processes never interleave mid-line on a local file system."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode("utf-8", errors="replace"))
    finally:
        os.close(fd)


class JsonlEventLog:
    """Appends one JSON line per event to ``path``.

    Each line is written with a single ``os.write`` on an ``O_APPEND`` descriptor, so
    lines from several forked workers never interleave mid-line on a local file system.
    """

    __slots__ = ("path", "_lock")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def __call__(self, event: ItemEvent) -> None:
        line = event.to_json() + "\n"
        with self._lock:
            # Here, not in __init__: an unwritable log then fails the listener (logged), not the run.
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_text(self.path, line)


def read_events(path: str | os.PathLike[str]) -> list[ItemEvent]:
    """Parse a file written by :class:`JsonlEventLog` (benchmarks, tests, timelines)."""
    known = set(ItemEvent.__dataclass_fields__)
    events = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            data = json.loads(line)
            data["state"] = ItemState(data["state"])
            # a field a newer version added (a run resumed by an older one, a status from elsewhere)
            events.append(ItemEvent(**{k: v for k, v in data.items() if k in known}))
    return events


class LoggingListener:
    """One log line per transition, naming the task and the item (``task=X item=3/8``)."""

    __slots__ = ("log",)

    def __init__(self, log: logging.Logger | None = None) -> None:
        self.log = log or logger

    def __call__(self, event: ItemEvent) -> None:
        level = logging.WARNING if event.state is ItemState.FAILED else logging.INFO
        if event.state is ItemState.PENDING:
            level = logging.DEBUG
        extra = []
        if event.label:
            extra.append(f"label={event.label!r}")
        if event.attempt:
            extra.append(f"attempt={event.attempt}")
        if event.state in (ItemState.COMPLETED, ItemState.FAILED):
            extra.append(f"duration={event.duration:.2f}s")
        if event.cached:
            extra.append("cached=true")
        if event.error:
            extra.append(f"error={one_line(event.error)}")
        self.log.log(
            level,
            "task=%s item=%d/%d state=%s %s",
            event.task,
            event.item + 1,
            event.total,
            event.state.value,
            " ".join(extra),
        )


def default_listeners(events_file: str | os.PathLike[str] | None = None) -> list[Callable[[ItemEvent], None]]:
    """Logging, plus a JSON-lines file when one is named (which the parent's display reads:
    a forked worker never draws, see planexe_concurrency.console)."""
    listeners: list[Callable[[ItemEvent], None]] = [LoggingListener()]
    if events_file:
        listeners.append(JsonlEventLog(events_file))
    return listeners
