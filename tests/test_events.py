"""Listeners: JSON lines, log lines, progress bar."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from planexe_concurrency.events import (
    EventBus,
    ItemState,
    JsonlEventLog,
    LoggingListener,
    default_listeners,
    make_event,
    read_events,
)


def test_jsonl_round_trip_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "events.jsonl"
    log = JsonlEventLog(path)
    log(make_event("T", 0, 2, ItemState.FAILED, attempt=3, error="boom", label="x"))
    with path.open("a") as f:
        f.write("\n")
    (event,) = read_events(path)
    assert (event.task, event.item, event.state, event.attempt, event.error, event.label) == ("T", 0, ItemState.FAILED, 3, "boom", "x")


def test_logging_listener_levels_and_fields(caplog: pytest.LogCaptureFixture) -> None:
    listener = LoggingListener()
    with caplog.at_level(logging.DEBUG, logger="planexe_concurrency"):
        listener(make_event("Wbs3", 1, 5, ItemState.PENDING))
        listener(make_event("Wbs3", 1, 5, ItemState.FAILED, attempt=2, duration=1.5, error="ValueError: x"))
        listener(make_event("Wbs3", 2, 5, ItemState.COMPLETED, cached=True))
    levels = [r.levelno for r in caplog.records]
    text = [r.getMessage() for r in caplog.records]
    assert levels == [logging.DEBUG, logging.WARNING, logging.INFO]
    assert "task=Wbs3 item=2/5 state=failed attempt=2 duration=1.50s error=ValueError: x" in text[1]
    assert "cached=true" in text[2]


def test_default_listeners_and_bus_add(tmp_path: Path) -> None:
    assert len(default_listeners()) == 1  # a forked worker logs and writes events; it never draws
    listeners = default_listeners(tmp_path / "e.jsonl")
    assert isinstance(listeners[-1], JsonlEventLog)
    seen = []
    bus = EventBus()
    bus.add(seen.append)
    bus.emit(make_event("T", 0, 1, ItemState.PENDING))
    assert len(seen) == 1


def test_unwritable_event_log_fails_the_listener_not_the_run(tmp_path: Path) -> None:
    from planexe_concurrency.config import FanOutSettings
    from planexe_concurrency.fanout import FanOut

    blocker = tmp_path / "file"
    blocker.write_text("x")
    log = JsonlEventLog(blocker / "events.jsonl")  # its folder can never be made
    assert FanOut(FanOutSettings(), task="T", listeners=[log]).map([lambda: 1]) == [1]


def test_events_read_back_ignore_fields_a_newer_version_added(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text('{"task": "T", "item": 0, "total": 1, "state": "running", "from_the_future": 1}\n')
    (event,) = read_events(path)
    assert event.task == "T" and event.state is ItemState.RUNNING
