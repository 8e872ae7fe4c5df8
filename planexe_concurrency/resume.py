"""Atomic writes and item-level resume.

A crash (or ``kill -9``) in the middle of a plain ``open(path, "w")`` leaves a truncated
file that a resumed run would trust. Everything we write goes to a temporary file in the
same directory and is renamed into place, so a reader sees the old file or the whole new
one, never half of it. An item whose result file exists *and parses* is not asked again;
one that does not parse is redone, with a warning. Files that other code writes with a
plain ``open()`` cannot be made atomic from outside; :class:`StartMarks` lets a later run
tell that the job writing them never finished.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

logger = logging.getLogger("planexe_concurrency")

R = TypeVar("R")


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` so that no reader ever sees a partial file."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o644)  # as open() would make it (mkstemp's 0600 would hide it from other users' status)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def json_text(value: Any) -> str:
    """The text PlanExe writes with ``json.dump(value, f, indent=2)``."""
    return json.dumps(value, indent=2)


@dataclass(frozen=True)
class ItemCache(Generic[R]):
    """Where one item's result lives on disk, and how to read and write it.

    ``load`` must raise on a file it cannot trust (truncated JSON, wrong shape); the item is
    then run again and the file rewritten. ``after_put`` runs once the file is safely on
    disk (e.g. to write a derived file that must never exist without it).
    """

    path: Path
    load: Callable[[Path], R]
    dump: Callable[[R], str]
    after_put: Callable[[R], None] | None = None

    def get(self, who: str = "resume:") -> tuple[bool, R | None]:
        """``(True, value)`` for a file that loads; ``who`` starts the warning otherwise (e.g. ``task=X item=2/5``)."""
        if not self.path.exists():
            return False, None
        try:
            return True, self.load(self.path)
        except Exception as exc:
            reason = " | ".join(str(exc).splitlines())
            logger.warning("%s %s exists but cannot be used (%s); the item will be run again", who, self.path, reason)
            return False, None

    def put(self, value: R) -> None:
        atomic_write_text(self.path, self.dump(value))
        if self.after_put is not None:
            self.after_put(value)


def json_item_cache(path: str | os.PathLike[str]) -> ItemCache[Any]:
    """An :class:`ItemCache` for a JSON file written with ``indent=2`` (PlanExe's raw per-item files)."""

    def load(p: Path) -> Any:
        return json.loads(p.read_text(encoding="utf-8"))

    return ItemCache(path=Path(path), load=load, dump=json_text)


@dataclass(frozen=True)
class StartMarks:
    """Which jobs started and never finished, as seen by a later process.

    Luigi takes a task as done when its output files exist. Code we do not own may write
    those files with a plain ``open()``; a process killed in the middle of its last write
    leaves a truncated file that passes that test. A mark written before the job starts
    and removed once it has finished tells a later run not to trust what the job left.
    A job that fails keeps its mark: what it wrote is not trusted either.
    """

    folder: Path

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.started"

    def started(self, key: str) -> None:
        # Only the mark's existence counts (the content is for a curious reader), and a
        # killed process loses nothing it wrote: no temporary file, no fsync, on every task.
        self.folder.mkdir(parents=True, exist_ok=True)
        mark = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        self._path(key).write_text(json.dumps(mark), encoding="utf-8")

    def finished(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def unfinished(self, key: str) -> bool:
        return self._path(key).exists()

    def owner(self, key: str) -> tuple[str, bool]:
        """Who left the mark ('process P on H'), and whether that process is known to have ended.

        Only a process on this host can be known to have ended; one elsewhere (luigid
        across hosts) may still be running the job.
        """
        try:
            mark = json.loads(self._path(key).read_text(encoding="utf-8"))
            pid, host = int(mark["pid"]), str(mark["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return "an unknown process", False
        return f"process {pid} on {host}", host == socket.gethostname() and not _alive(pid)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier process with our number; this one is only now asking
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
