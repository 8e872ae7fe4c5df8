"""A fork never leaves its child a stream that a parent thread was writing at that instant."""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Iterator

import pytest

from planexe_concurrency import forksafe


def _child_ends_within(seconds: float, body: Callable[[], object]) -> tuple[bool, float]:
    """Fork; the child runs ``body`` and exits (status 0 if it returned a true value or None).
    (ended in time with status 0, seconds the fork itself took)."""
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        ok = False
        try:
            ok = body() in (None, True)
        finally:
            os._exit(0 if ok else 3)
    forked_after = time.monotonic() - started
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0, forked_after
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return False, forked_after


class _Entered(logging.Formatter):
    """Tells when a line is being written: format runs inside the handler's lock, before the write."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def format(self, record: logging.LogRecord) -> str:
        self.event.set()
        return super().format(record)


@pytest.fixture
def slow_log() -> Iterator[tuple[logging.Logger, threading.Event]]:
    """A logger whose handler writes to a pipe that nobody reads until 0.5 s after a line is begun."""
    forksafe.install()
    read, write = os.pipe()
    stream = os.fdopen(write, "w")
    handler = logging.StreamHandler(stream)
    entered = _Entered()
    handler.setFormatter(entered)
    log = logging.getLogger("planexe_concurrency.test_forksafe")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    def drain() -> None:
        entered.event.wait(10)
        time.sleep(0.5)
        while os.read(read, 1 << 16):
            pass

    threading.Thread(target=drain, daemon=True).start()
    try:
        yield log, entered.event
    finally:
        log.removeHandler(handler)
        stream.close()


def test_a_child_forked_while_a_parent_thread_writes_a_log_line_can_log(slow_log: tuple[logging.Logger, threading.Event]) -> None:
    # A line larger than a pipe holds: the writing thread blocks inside the stream's write, holding
    # its lock, until the pipe is drained. A fork meanwhile copies that lock as held.
    log, entered = slow_log
    writer = threading.Thread(target=lambda: log.info("x" * 200_000), daemon=True)
    writer.start()
    assert entered.wait(10)
    time.sleep(0.1)  # now inside the write, blocked on the full pipe
    ended, fork_took = _child_ends_within(5.0, lambda: log.info("a line from the child"))
    writer.join(5)
    assert ended  # without the fork hook the child's first line waits for ever on the copied lock
    assert fork_took >= 0.2  # the fork waited for the parent's line to be written


def test_a_registered_lock_is_waited_for_and_no_longer_once_released() -> None:
    forksafe.install()
    lock = threading.Lock()
    token = forksafe.hold_at_fork(lock)
    try:
        lock.acquire()
        threading.Timer(0.5, lock.release).start()
        ended, fork_took = _child_ends_within(5.0, lambda: None)
        assert ended and fork_took >= 0.2
        # the child got its copy of the lock free: it can take it
        assert _child_ends_within(5.0, lambda: lock.acquire(timeout=1))[0]
    finally:
        forksafe.release_at_fork(token)
    lock.acquire()  # held for good now, but no longer registered: the fork does not wait
    try:
        ended, fork_took = _child_ends_within(5.0, lambda: None)
        assert ended and fork_took < forksafe.FORK_WAIT
    finally:
        lock.release()


def test_a_writer_stuck_for_longer_than_fork_wait_does_not_hold_up_the_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    forksafe.install()
    monkeypatch.setattr(forksafe, "FORK_WAIT", 0.2)
    stuck = threading.Lock()
    stuck.acquire()
    token = forksafe.hold_at_fork(lambda: [stuck])
    try:
        ended, fork_took = _child_ends_within(5.0, lambda: None)
        assert ended and 0.15 <= fork_took < 2.0
    finally:
        forksafe.release_at_fork(token)
        stuck.release()


def test_a_thread_that_holds_one_of_the_locks_and_waits_for_another_is_not_deadlocked_by_a_fork() -> None:
    """A handler whose line is printed by our display (its emit takes the display's lock) and a
    display lock registered with the fork hook: taking one and waiting for the other would stall
    every fork for FORK_WAIT; taking all at once when all are free does not."""
    forksafe.install()
    display = threading.Lock()
    token = forksafe.hold_at_fork(display)

    inside = threading.Event()

    class PrintedByTheDisplay(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:  # runs holding this handler's lock
            inside.set()
            time.sleep(0.3)
            with display:
                pass

    handler = PrintedByTheDisplay()
    log = logging.getLogger("planexe_concurrency.test_forksafe.display")
    log.addHandler(handler)
    log.propagate = False
    try:
        writer = threading.Thread(target=lambda: log.warning("a warning"), daemon=True)
        writer.start()
        assert inside.wait(10)  # the writer is inside emit: it holds the handler's lock and will want the display's
        ended, fork_took = _child_ends_within(10.0, lambda: None)
        writer.join(5)
        assert ended and not writer.is_alive()
        assert fork_took < forksafe.FORK_WAIT / 2
    finally:
        log.removeHandler(handler)
        forksafe.release_at_fork(token)
