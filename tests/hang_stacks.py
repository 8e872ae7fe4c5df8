"""A test that runs out of time says where every process it started was stuck.

pytest-timeout prints the stacks of the pytest process only, but our end-to-end tests hang, if
ever, in one of the processes Luigi forks per task. So every process of the run knows a signal
that writes its threads' stacks to one file (a handler installed here is inherited across
``fork``), shortly before the test's timeout that signal goes to the pytest process and every
process forked from it, and the file is printed at the end of the session.
"""
from __future__ import annotations

import faulthandler
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Iterator

import pytest

# Luigi's worker takes SIGUSR1 ("stop scheduling"); SIGUSR2 is free.
DUMP_SIGNAL = signal.SIGUSR2
BEFORE_TIMEOUT = 15.0  # seconds: time for every process to write its stacks before pytest-timeout fires

PROCESS_MARK = "--- process "
INNERMOST = 4  # frames per thread in the closing summary: where it waits, not how it got there

# Frames of pytest's own machinery, the same in every stack: left out of the summary.
NOISE = ("/_pytest/", "/pluggy/", "<frozen runpy>", "/pytest/__main__.py")

_dump_file: IO[str] | None = None
_dump_path = Path(tempfile.gettempdir()) / f"planexe-concurrency-test-stacks-{os.getpid()}.txt"


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _dump_all(test: str) -> None:
    assert _dump_file is not None
    # Only processes forked from this one (same command line, never exec'd) have the handler;
    # to another program (PostgreSQL, luigid, a CLI run) SIGUSR2 means something else or death.
    own = _cmdline(os.getpid())
    pids = [os.getpid(), *(pid for pid in descendants(os.getpid()) if _cmdline(pid) == own)]
    _dump_file.write(f"\n=== {test}: near its timeout, stacks of processes {pids} ===\n")
    _dump_file.flush()
    for pid in pids:
        _dump_file.write(f"{PROCESS_MARK}{pid}{' (pytest)' if pid == os.getpid() else ''}\n")
        _dump_file.flush()  # before the process writes its stacks after it, through its own copy of the descriptor
        try:
            os.kill(pid, DUMP_SIGNAL)
        except OSError:
            continue
        time.sleep(0.2)  # one process at a time, so their dumps do not interleave


def pytest_configure(config: pytest.Config) -> None:
    global _dump_file
    if not hasattr(signal, "SIGUSR2"):  # pragma: no cover - not POSIX
        return
    _dump_file = open(_dump_path, "w", encoding="utf-8")
    faulthandler.register(DUMP_SIGNAL, file=_dump_file, all_threads=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Timed as pytest-timeout times a test: setup, call and teardown together."""
    marker = item.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else float(item.config.getini("timeout") or 0)
    if _dump_file is None or limit <= BEFORE_TIMEOUT:
        yield
        return
    timer = threading.Timer(limit - BEFORE_TIMEOUT, _dump_all, args=(item.nodeid,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def where_they_wait(text: str) -> list[str]:
    """One line per thread of each process in a dump: its innermost frames, innermost first."""
    lines, process, thread, frames = [], "", "", []  # type: ignore[var-annotated]

    def close() -> None:
        if thread and frames and not frames[0].startswith("_dump_all ("):  # the thread that asked for the dumps
            lines.append(f"{process} {thread}: " + " < ".join(frames))

    for line in text.splitlines():
        if line.startswith(PROCESS_MARK) or line.startswith("Thread 0x") or line.startswith("Current thread 0x"):
            close()
            thread, frames = "", []
            if line.startswith(PROCESS_MARK):
                process = "pid " + line[len(PROCESS_MARK):]
            else:
                thread = line.split(" (")[0].replace("Current thread", "current")
        elif line.startswith("  File ") and thread and len(frames) < INNERMOST:
            where, _, function = line.strip()[len("File "):].rpartition(" in ")
            path, _, number = where.rpartition(", line ")
            frames.append(f"{function} ({Path(path.strip(chr(34))).name}:{number})")
    close()
    return lines


@pytest.hookimpl(trylast=True)  # after the coverage table: the last lines of a CI log are what one sees first
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _dump_file is None:
        return
    _dump_file.flush()
    text = _dump_path.read_text(encoding="utf-8", errors="replace")
    if text.strip():
        terminalreporter.section("stacks of a test that ran out of time")
        for line in text.splitlines():
            if not any(noise in line for noise in NOISE):
                terminalreporter.write_line(line)
        terminalreporter.section("where each process of that test waited (innermost frames first)")
        for line in where_they_wait(text):
            terminalreporter.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _dump_file is not None:
        faulthandler.unregister(DUMP_SIGNAL)
        _dump_file.close()
        _dump_path.unlink(missing_ok=True)
