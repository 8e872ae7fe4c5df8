"""Keeping to a provider's request budget, inside one process and across many.

A provider's limit belongs to the API key, but an ``aiolimiter.AsyncLimiter`` belongs to
one event loop in one process. Under ``luigi --workers N`` every task runs in its own
forked child, so N limiters of R requests/minute would let N x R through. Two layers:

* :class:`RequestPacer` spaces the calls of one fan-out with an ``AsyncLimiter(1, 60/R)``
  (one request every 60/R seconds, no burst), so no 60-second window sees more than R.
* :class:`SharedSlotFile` hands out the same one-request-every-60/R-seconds slots to every
  process that names the same file, under an ``fcntl`` lock; on storage shared between
  hosts (with working POSIX locks) it also spans hosts. Each slot is taken once, so the
  total rate over all processes stays within R.
"""
from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import time
from pathlib import Path
from typing import Awaitable, Callable

from aiolimiter import AsyncLimiter


class SharedSlotFile:
    """A cross-process "next free slot" clock kept in a small file.

    >>> slots = SharedSlotFile("/tmp/llm-budget.slot", requests_per_minute=120)
    >>> delay = slots.reserve()   # seconds to sleep before sending the request
    """

    __slots__ = ("path", "interval", "_clock")

    def __init__(
        self, path: str | os.PathLike[str], requests_per_minute: float, clock: Callable[[], float] = time.time
    ) -> None:
        if requests_per_minute <= 0:
            raise ValueError("requests_per_minute must be > 0 for a shared slot file")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.interval = 60.0 / requests_per_minute
        self._clock = clock

    def reserve(self) -> float:
        """Take the next free slot; returns how long to wait until it starts."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 8, 0)
            next_free = struct.unpack("<d", raw)[0] if len(raw) == 8 else 0.0
            now = self._clock()
            slot = max(now, next_free)
            os.pwrite(fd, struct.pack("<d", slot + self.interval), 0)
            return slot - now
        finally:
            os.close(fd)  # closing releases the lock

    async def acquire(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        delay = await asyncio.to_thread(self.reserve)
        if delay > 0:
            await sleep(delay)


class RequestPacer:
    """The per-fan-out limiter: created inside the running loop, never shared between loops."""

    __slots__ = ("_limiter", "_shared", "_sleep")

    def __init__(
        self,
        requests_per_minute: float,
        shared: SharedSlotFile | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._limiter = AsyncLimiter(1, 60.0 / requests_per_minute) if requests_per_minute > 0 else None
        self._shared = shared
        self._sleep = sleep

    @property
    def active(self) -> bool:
        return self._limiter is not None or self._shared is not None

    async def acquire(self) -> None:
        if self._shared is not None:
            # The shared clock already spaces every request of every process.
            await self._shared.acquire(self._sleep)
        elif self._limiter is not None:
            await self._limiter.acquire()
