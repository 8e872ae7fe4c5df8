"""Forks that find no stream half-written.

    forksafe.install()                      # in a process that will fork (Luigi's parent)
    token = forksafe.hold_at_fork(lock)     # a writer of ours: a fork waits while it writes (installs too)
    forksafe.release_at_fork(token)

Why: Luigi forks a process per task while other threads of the parent may be writing a log
line (a simulated server's request log, PlanExe's own logging, our live display). A fork
copies every lock as it is. Python resets logging's handler locks in the child, but not the
lock inside the buffered stream under a handler (a log file, stderr): a child forked while a
parent thread was inside such a write finds that lock held for ever, and its first log line
to that stream, or its flush at exit, hangs (seen in the tests: a forked task stuck on its
first log line while the parent's simulated server logged a request).

So before each fork every logging handler's lock is taken (a handler writes its stream only
while holding it), and so is every lock registered with :func:`hold_at_fork`, all of them at
one moment when all are free; after the fork both sides let them go. They are waited for
:data:`FORK_WAIT` seconds at most: a writer stuck on a full pipe does not hold up the
scheduler; it forks anyway (with the locks it got), as it would without this.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from typing import Any, Callable, Iterable

FORK_WAIT = 5.0

_sources: dict[int, Callable[[], Iterable[Any]]] = {}
_tokens = itertools.count(1)
_sources_lock = threading.Lock()
_held = threading.local()
_installed = False


def hold_at_fork(locks: Any) -> int:
    """A fork waits for ``locks`` (a lock, or a callable giving the locks to wait for now) to be free,
    and holds them while it forks. Returns a token for :func:`release_at_fork`."""
    install()
    source = locks if callable(locks) else (lambda: (locks,))
    with _sources_lock:
        token = next(_tokens)
        _sources[token] = source
    return token


def release_at_fork(token: int) -> None:
    with _sources_lock:
        _sources.pop(token, None)


def _handler_locks() -> list[Any]:
    loggers = [logging.getLogger()] + [
        logger for logger in list(logging.Logger.manager.loggerDict.values()) if isinstance(logger, logging.Logger)
    ]
    seen: dict[int, Any] = {}
    for logger in loggers:
        for handler in list(logger.handlers):
            if handler.lock is not None:
                seen.setdefault(id(handler), handler.lock)
    return list(seen.values())


def _before_fork() -> None:
    # All at once or none: a lock held while waiting for another could meet a thread that
    # holds that other one and waits for the first (a callback logging under its call's lock).
    deadline = time.monotonic() + FORK_WAIT
    with _sources_lock:
        sources = list(_sources.values())
    locks = list({id(lock): lock for lock in [*(lock for source in sources for lock in source()), *_handler_locks()]}.values())
    while True:
        held = [lock for lock in locks if lock.acquire(blocking=False)]
        if len(held) == len(locks) or time.monotonic() >= deadline:
            break
        for lock in reversed(held):
            lock.release()
        time.sleep(0.001)
    _held.locks = held


def _after_fork_in_parent() -> None:
    for lock in reversed(getattr(_held, "locks", ())):
        lock.release()
    _held.locks = []


def _after_fork_in_child() -> None:  # pragma: no cover - runs in a forked child (coverage is the parent's)
    # The child's copies, each taken by this very thread (the one that forked): let them go.
    # logging has reset its handlers' locks in the child already; releasing one of those fails.
    for lock in reversed(getattr(_held, "locks", ())):
        try:
            lock.release()
        except RuntimeError:
            pass
    _held.locks = []


def install() -> None:
    """Register the fork hooks in this process (idempotent)."""
    global _installed
    with _sources_lock:
        if _installed or not hasattr(os, "register_at_fork"):
            return
        _installed = True
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


__all__ = ["FORK_WAIT", "hold_at_fork", "install", "release_at_fork"]
