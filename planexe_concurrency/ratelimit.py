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

And one cap on the requests in flight at once (``max_in_flight``), for local servers that
serve K at a time and hosted keys with a concurrency limit: :class:`SharedInFlightCap`,
record locks on a file that every process (and host) of a run names.

Requests that wait for a budget slot or an in-flight slot go in order of priority (the
caller's: the longest chain of tasks still ahead), then of arrival, whichever process they
wait in (:class:`WaitingBoard`). :func:`gate_llm_requests` applies both to every request
llama-index sends, from the moment it goes out to the moment its answer is in.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import struct
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Generator, Iterator, TypeVar

from aiolimiter import AsyncLimiter

R = TypeVar("R")


def _try_lock(fd: int, offset: int) -> bool:
    """Lock one byte of ``fd`` at ``offset`` for this process, if no other process holds it."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
    except OSError:
        return False
    return True


def _unlock(fd: int, offset: int) -> None:
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)


_WAITER = struct.Struct("<dd")  # priority, waiting since (time.time()); (0, 0) is a free place
_FREE_PLACE = _WAITER.pack(0.0, 0.0)
WAITING_PLACES = 1024
LIVE_FOR = 0.25  # seconds a waiter seen live is trusted (a dead one's place is skipped that much later)


class WaitingBoard:
    """Who waits for a shared resource, with what priority and since when, across processes.

    ``<file>.waiting`` holds places of (priority, waiting since); each taken place is held by
    an ``fcntl`` record lock of its own, so a dead process's places do not count (the kernel
    drops its locks) and are cleared by the next reader. Record locks belong to a process,
    not a thread, so this process also keeps a dict of its own places. One instance per file
    and process (closing any descriptor of the file would release all of the process's locks).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        self._places: dict[int, tuple[float, float]] = {}
        self._seen_live: dict[int, tuple[tuple[float, float], float]] = {}  # place -> (its entry, in which LIVE_FOR period)
        os.register_at_fork(after_in_child=self._forget_parents_places)

    def _forget_parents_places(self) -> None:  # pragma: no cover - runs in a forked child (tests fork; coverage is the parent's)
        # A forked child holds none of its parent's locks (they are not inherited).
        self._lock = threading.Lock()
        self._places = {}
        self._seen_live = {}

    def take_place(self, priority: float, since: float) -> int | None:
        with self._lock:
            for place in range(WAITING_PLACES):
                if place in self._places or not _try_lock(self._fd, place * _WAITER.size):  # ours, or another process's
                    continue
                os.pwrite(self._fd, _WAITER.pack(priority, since), place * _WAITER.size)
                self._places[place] = (priority, since)
                return place
        return None  # the board is full: wait without a place (first come is then not assured)

    def leave_place(self, place: int) -> None:
        with self._lock:
            if self._places.pop(place, None) is not None:
                os.pwrite(self._fd, _FREE_PLACE, place * _WAITER.size)
                _unlock(self._fd, place * _WAITER.size)

    def _live(self, place: int, entry: tuple[float, float]) -> bool:
        """Another process's place counts while that process holds its lock; a dead one's is cleared.

        A place seen live is trusted until the current LIVE_FOR period ends, then probed again (every
        waiter looks at every place ahead of it on each look; the probes were most of the cost).
        """
        now = time.monotonic()
        with self._lock:
            if place in self._places or self._seen_live.get(place) == (entry, now - now % LIVE_FOR):
                return True
            if not _try_lock(self._fd, place * _WAITER.size):
                self._seen_live[place] = (entry, now - now % LIVE_FOR)
                return True
            try:
                os.pwrite(self._fd, _FREE_PLACE, place * _WAITER.size)
            finally:
                _unlock(self._fd, place * _WAITER.size)
            return False

    def waiting(
        self, priority: float, attempt: Callable[[int], R | None], pause: Callable[[int], float]
    ) -> Generator[float, None, R]:
        """One waiter's turn, in the board's order, for whatever it waits for.

        Each look counts the live waiters ``ahead`` of it and calls ``attempt(ahead)``; what that
        returns, once not None, is the generator's return value. Until then the waiter has a
        place on the board and the generator yields ``pause(ahead)``, the seconds to sleep
        before the next look. The caller only sleeps, so one wait serves a thread and an event
        loop alike; closing it early (the waiter was cancelled) leaves the board too.
        """
        since, place = time.time(), None
        try:
            while True:
                ahead = self.waiting_before(priority, since, place)
                got = attempt(ahead)
                if got is not None:
                    return got
                if place is None:
                    place = self.take_place(priority, since)
                yield pause(ahead)
        finally:
            if place is not None:
                self.leave_place(place)

    def waiting_before(self, priority: float, since: float, place: int | None = None) -> int:
        """How many live waiters go before one of ``priority`` waiting since ``since`` (at ``place``):
        a higher priority, or the same and waiting longer."""
        board = os.pread(self._fd, _WAITER.size * WAITING_PLACES, 0).rstrip(b"\0")  # places are taken lowest first
        board += b"\0" * (-len(board) % _WAITER.size)
        mine = place if place is not None else WAITING_PLACES
        before = 0
        for other, (p, s) in enumerate(_WAITER.iter_unpack(board)):
            if s == 0.0 or other == place:
                continue
            if p > priority or (p == priority and (s < since or (s == since and other < mine))):
                before += self._live(other, (p, s))
        return before


_boards: dict[str, WaitingBoard] = {}
_boards_lock = threading.Lock()


def waiting_board(path: str | os.PathLike[str]) -> WaitingBoard:
    """The process's one board for ``path`` (see :class:`WaitingBoard` for why only one)."""
    key = str(Path(path).resolve())
    with _boards_lock:
        board = _boards.get(key)
        if board is None:
            board = _boards[key] = WaitingBoard(path)
        return board


def _sleep_through(waiting: Generator[float, None, R], sleep: Callable[[float], None]) -> R:
    """Run a :meth:`WaitingBoard.waiting` to its end in this thread."""
    try:
        while True:
            sleep(next(waiting))
    except StopIteration as done:
        return done.value
    finally:
        waiting.close()


def _waiting_pause(poll: float, ahead: int) -> float:
    """How long a waiter sleeps before it looks again: the first in line looks often (a slot it
    misses is idle time at the provider), the ones behind it less often the further back they are;
    with jitter, so processes waiting together do not move in step."""
    base = poll * 0.2 if ahead == 0 else min(0.05, poll * ahead)
    return base * (1.0 + random.random())


class SharedSlotFile:
    """A cross-process "next free slot" clock kept in a small file.

    >>> slots = SharedSlotFile("/tmp/llm-budget.slot", requests_per_minute=120)
    >>> delay = slots.reserve()   # seconds to sleep before sending the request

    :meth:`wait_for_slot` takes slots in order of priority instead: a request takes the next
    slot only when it is due and no live waiter goes before it (``<file>.waiting``), so a
    critical request that comes late still goes before side requests that wait longer.
    """

    __slots__ = ("path", "interval", "poll", "_clock")

    def __init__(
        self, path: str | os.PathLike[str], requests_per_minute: float, clock: Callable[[], float] = time.time,
        poll: float = 0.005,
    ) -> None:
        if requests_per_minute <= 0:
            raise ValueError("requests_per_minute must be > 0 for a shared slot file")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.interval = 60.0 / requests_per_minute
        self.poll = poll
        self._clock = clock

    def reserve(self, within: float | None = None) -> float | None:
        """Take the next free slot; returns how long to wait until it starts.

        With ``within``, take it only if it starts within that many seconds (else None).
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 8, 0)
            next_free = struct.unpack("<d", raw)[0] if len(raw) == 8 else 0.0
            now = self._clock()
            slot = max(now, next_free)
            if within is not None and slot - now > within:
                return None
            os.pwrite(fd, struct.pack("<d", slot + self.interval), 0)
            return slot - now
        finally:
            os.close(fd)  # closing releases the lock

    def due_in(self) -> float:
        """Seconds until the next free slot starts (0 when it is free now)."""
        try:
            raw = Path(self.path).read_bytes()[:8]
        except FileNotFoundError:
            return 0.0
        return max(0.0, struct.unpack("<d", raw)[0] - self._clock()) if len(raw) == 8 else 0.0

    def wait_for_slot(self, priority: float = 0.0, sleep: Callable[[float], None] = time.sleep) -> None:
        """Block until this request may go, in order of priority, then of arrival (see the class)."""

        def pause(ahead: int) -> float:
            if ahead == 0:  # first in line: sleep until the slot is nearly due
                return max(_waiting_pause(self.poll, 0), self.due_in() - self.poll)
            return _waiting_pause(self.poll, ahead)

        def attempt(ahead: int) -> float | None:
            return self.reserve(within=self.poll) if ahead == 0 else None

        delay = _sleep_through(waiting_board(f"{self.path}.waiting").waiting(priority, attempt, pause), sleep)
        if delay > 0:
            sleep(delay)

    async def acquire(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        delay = await asyncio.to_thread(self.reserve)
        if delay:
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


# -- gating every request an LLM sends, wherever it is sent from --------------------------

# Wrappers that dispatch a start event of their own and then call the wrapped LLM, which
# dispatches another: only the inner one is a request.
_WRAPPER_CLASS_NAMES = frozenset({"structured_llm"})

# .priority: of the requests this thread sends; .held: (cap, slot); .due: (cap, priority), a request
# announced whose slot is taken as it goes out (httpx); .learning: (routes, LLM class), a request
# holding its slot from its start event, whose class may be seen going out through httpx
_this_thread = threading.local()
_gate: dict[str, Any] = {}  # "key", "handlers", "priority" (the process's default)
_gate_lock = threading.Lock()


@contextlib.contextmanager
def request_priority(priority: float) -> Iterator[None]:
    """The requests this thread sends inside the block wait with ``priority``; any
    in-flight slot the block's last request still holds (one that raised: llama-index
    dispatches no end event then) is given back at the end."""
    before = getattr(_this_thread, "priority", None)
    _this_thread.priority = priority
    try:
        yield
    finally:
        _this_thread.priority = before
        end_of_request()


def release_request_slot() -> None:
    held = getattr(_this_thread, "held", None)
    if held is not None:
        _this_thread.held = None
        held[0].give_back(held[1])


def end_of_request() -> None:
    """The thread's request is over (its end event, or its attempt ended): no slot kept, none due."""
    _this_thread.due = None
    _this_thread.learning = None
    release_request_slot()


class _HttpxRoutes:
    """LLM classes seen sending their request through ``httpx.Client.send`` in the thread that
    announced it, for every process of a run: ``<cap file>.httpx``, one class name a line (two
    processes that learn a class at the same moment may both write it; it is read as a set)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known: frozenset[str] = frozenset()  # replaced, never changed: threads read it without a lock

    def known(self, llm_class: str) -> bool:
        if llm_class not in self._known:
            try:
                self._known = self._known | set(self.path.read_text(encoding="utf-8").split())
            except OSError:
                pass
        return llm_class in self._known

    def learn(self, llm_class: str) -> None:
        if not llm_class or self.known(llm_class):
            return
        self._known = self._known | {llm_class}
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{llm_class}\n".encode("utf-8"))  # one small O_APPEND write: whole lines
        finally:
            os.close(fd)


_httpx_wrapped = False
_httpx_lock = threading.Lock()


def _take_slots_as_requests_go_out() -> None:
    """Wrap ``httpx.Client.send`` (once per process, for good; it does nothing in a thread with no
    request announced) so a due request takes its in-flight slot right before its bytes go out."""
    try:
        import httpx
    except ImportError:  # pragma: no cover - llama-index depends on httpx
        return
    global _httpx_wrapped
    with _httpx_lock:
        if _httpx_wrapped:
            return
        _httpx_wrapped = True
        send = httpx.Client.send

    def send_when_a_slot_is_free(client: Any, request: Any, **kwargs: Any) -> Any:
        learning = getattr(_this_thread, "learning", None)
        if learning is not None:
            _this_thread.learning = None
            learning[0].learn(learning[1])
        due = getattr(_this_thread, "due", None)
        if due is None:
            return send(client, request, **kwargs)
        if getattr(_this_thread, "held", None) is None:
            _this_thread.held = (due[0], due[0].take(due[1]))
        streamed = bool(kwargs.get("stream"))
        try:
            return send(client, request, **kwargs)
        finally:
            if not streamed:  # the whole answer is read: the provider is done with it (a retry takes a slot anew)
                release_request_slot()

    httpx.Client.send = send_when_a_slot_is_free  # type: ignore[method-assign]


def gate_llm_requests(
    slots: SharedSlotFile | None = None, cap: "SharedInFlightCap | None" = None, priority: float = 0.0
) -> None:
    """Make every llama-index LLM request in this process wait for a slot of the request
    budget ``slots`` first, and hold a slot of the in-flight ``cap`` from its start to its end.

    The fan-out sees one attempt, but an attempt of PlanExe's code may send several requests
    (a task's ``run_with_llm`` often does) and spends time parsing around them. llama-index
    announces each request with an ``LLMChatStartEvent`` / ``LLMCompletionStartEvent`` in the
    calling thread before it goes out, and an end event after the answer: a handler that
    waits at the start and lets go at the end gates every request, whichever code sent it,
    and holds a provider slot only while the provider works. Waiters go in order of the
    thread's :func:`request_priority` (else ``priority``, the process's default), then of
    arrival. Installed once per process (a forked child inherits it); calling it again with
    other slots or another cap replaces the gate, with ``slots=None, cap=None`` removes it.

    The in-flight slot is taken as late as it can be: an LLM class seen (by any process of the
    run, ``<cap file>.httpx``) sending its request through ``httpx.Client.send`` in the thread
    that announced it takes the slot there, right before the bytes go out, and gives it back
    once the whole answer is read (a streamed one: at the end event); building the request
    (~14 ms a call on a busy machine, measured) then happens outside the slot. Any other
    class, and the first request of each class in a run, holds it from the start event.

    Limits: a provider class whose ``chat`` is built on its own ``complete`` (llama-index's
    ``CustomLLM``) announces one request twice and is paced twice as strictly (it takes one
    in-flight slot, held for the inner request); an async call is paced but holds no
    in-flight slot here (waiting would block its event loop; PlanExe's calls are synchronous).
    """
    key = "|".join((
        f"{slots.path.resolve()}@{slots.interval!r}" if slots is not None else "",
        f"{cap.path.resolve()}@{cap.limit}" if cap is not None else "",
    ))
    with _gate_lock:
        _gate["priority"] = priority
        if _gate.get("key") == key:
            return
        _remove_gate()
        if slots is None and cap is None:
            return
        from llama_index.core.instrumentation import get_dispatcher
        from llama_index.core.instrumentation.event_handlers import BaseEventHandler
        from llama_index.core.instrumentation.events.llm import (
            LLMChatEndEvent, LLMChatStartEvent, LLMCompletionEndEvent, LLMCompletionStartEvent,
        )

        starts, ends = (LLMChatStartEvent, LLMCompletionStartEvent), (LLMChatEndEvent, LLMCompletionEndEvent)
        routes = _HttpxRoutes(Path(f"{cap.path}.httpx")) if cap is not None else None

        class _RequestGateHandler(BaseEventHandler):
            """``ends``: the first handler a request's end event meets (the slot is free before hosts
            log the answer); else the last one its start event meets (taken after they log the request)."""

            ends: bool = False

            @classmethod
            def class_name(cls) -> str:
                return "PlanExeConcurrencyRequestGate"

            def handle(self, event: Any, **kwargs: Any) -> None:
                if self.ends:
                    if isinstance(event, ends):
                        end_of_request()
                    return
                if not isinstance(event, starts):
                    return
                model = getattr(event, "model_dict", None) or {}
                if model.get("class_name") in _WRAPPER_CLASS_NAMES:
                    return
                chosen = getattr(_this_thread, "priority", None)
                wait_with = _gate.get("priority", 0.0) if chosen is None else chosen
                if slots is not None:
                    slots.wait_for_slot(wait_with)
                if cap is not None and getattr(_this_thread, "held", None) is None and not _in_event_loop():
                    llm_class = str(model.get("class_name") or "")
                    if llm_class and routes.known(llm_class):
                        _this_thread.due = (cap, wait_with)
                    else:
                        _this_thread.held = (cap, cap.take(wait_with))
                        _this_thread.learning = (routes, llm_class)

        if cap is not None:
            _take_slots_as_requests_go_out()
        at_start, at_end = _RequestGateHandler(), _RequestGateHandler(ends=True)
        root = get_dispatcher()
        root.add_event_handler(at_start)
        root.event_handlers.insert(0, at_end)
        _gate.update(key=key, handlers=(at_start, at_end))


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def ungate_llm_requests() -> None:
    """Remove the handler :func:`gate_llm_requests` installed in this process."""
    with _gate_lock:
        _remove_gate()


def _remove_gate() -> None:
    handlers = _gate.pop("handlers", ())
    _gate.pop("key", None)
    if not handlers:
        return
    from llama_index.core.instrumentation import get_dispatcher

    root = get_dispatcher()
    root.event_handlers = [h for h in root.event_handlers if all(h is not mine for mine in handlers)]


# -- one cap on requests in flight, for every process (and host) of a run ----------------


class SharedInFlightCap:
    """At most ``limit`` requests in flight across every process that names the same file.

    The file has ``limit`` bytes; holding a slot is holding an ``fcntl`` record lock on one
    of them. The kernel drops a dead process's locks, so a crashed worker never keeps a slot;
    on storage shared between hosts (working POSIX locks, as NFSv4 has) the cap spans hosts.
    Record locks belong to a process, not a thread, so the threads of one process also keep
    a set of the slots they hold. Get one instance per file and process with :func:`in_flight_cap`:
    closing any descriptor of the file would release all of the process's locks on it.

    A request that finds no slot free takes a place on a :class:`WaitingBoard`
    (``<file>.waiting``) and takes a slot only once no live waiter goes before it (a higher
    priority, or the same and waiting longer), unless more slots are free than waiters go
    before it. With equal priorities that is first come, first served.
    """

    def __init__(self, path: str | os.PathLike[str], limit: int, poll: float = 0.005) -> None:
        if limit <= 0:
            raise ValueError("an in-flight cap needs a limit > 0")
        self.path = Path(path)
        self.limit = limit
        self.poll = poll
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self.board = waiting_board(f"{self.path}.waiting")
        self._lock = threading.Lock()
        self._held: set[int] = set()
        os.register_at_fork(after_in_child=self._forget_parents_slots)

    def _forget_parents_slots(self) -> None:  # pragma: no cover - runs in a forked child (tests fork; coverage is the parent's)
        # A forked child holds none of its parent's locks (they are not inherited).
        self._lock = threading.Lock()
        self._held = set()

    def waiting_before(self, priority: float, since: float, place: int | None = None) -> int:
        return self.board.waiting_before(priority, since, place)

    def _free_slots(self) -> int:
        """Slots no process holds now (each probed, then let go)."""
        free = 0
        with self._lock:
            for slot in range(self._open_slots()):
                if slot not in self._held and _try_lock(self._fd, slot):
                    _unlock(self._fd, slot)
                    free += 1
        return free

    def _open_slots(self) -> int:
        """How many of the slots may be used now (an adaptive cap: fewer, or none while held)."""
        return self.limit

    def try_take(self) -> int | None:
        """A free slot, taken, or None when all open ones are in use."""
        open_slots = self._open_slots()
        with self._lock:
            for slot in range(open_slots):
                if slot not in self._held and _try_lock(self._fd, slot):  # else ours, or another process holds it
                    self._held.add(slot)
                    return slot
        return None

    def give_back(self, slot: int) -> None:
        with self._lock:
            if slot in self._held:
                _unlock(self._fd, slot)
                self._held.discard(slot)

    def in_use_here(self) -> int:
        with self._lock:
            return len(self._held)

    def current_limit(self) -> int:
        return self.limit

    def succeeded(self) -> None:
        """A call went through (an adaptive cap grows; a fixed one does nothing)."""

    def overloaded(self, retry_after: float | None = None) -> None:
        """The provider turned a call away for load (an adaptive cap shrinks; a fixed one does nothing)."""

    def _waiting(self, priority: float) -> Generator[float, None, int]:
        def attempt(ahead: int) -> int | None:
            return self.try_take() if ahead == 0 or ahead < self._free_slots() else None

        return self.board.waiting(priority, attempt, lambda ahead: _waiting_pause(self.poll, ahead))

    async def acquire(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, priority: float = 0.0) -> int:
        """Wait for a slot, in the board's order."""
        waiting = self._waiting(priority)
        try:
            while True:
                await sleep(next(waiting))
        except StopIteration as done:
            return done.value
        finally:
            waiting.close()

    def take(self, priority: float = 0.0, sleep: Callable[[float], None] = time.sleep) -> int:
        """:meth:`acquire` for a thread that is not in an event loop (a request's own thread)."""
        return _sleep_through(self._waiting(priority), sleep)

    def hold(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, priority: float = 0.0) -> "_HeldSlot":
        return _HeldSlot(self, sleep, priority)


class _HeldSlot:
    __slots__ = ("_cap", "_sleep", "_slot", "_priority")

    def __init__(self, cap: SharedInFlightCap, sleep: Callable[[float], Awaitable[None]], priority: float) -> None:
        self._cap, self._sleep, self._slot, self._priority = cap, sleep, -1, priority

    async def __aenter__(self) -> int:
        self._slot = await self._cap.acquire(self._sleep, self._priority)
        return self._slot

    async def __aexit__(self, *exc: object) -> None:
        self._cap.give_back(self._slot)


_caps: dict[tuple[str, int | str], SharedInFlightCap] = {}
_caps_lock = threading.Lock()


def in_flight_cap(path: str | os.PathLike[str], limit: int | str) -> SharedInFlightCap:
    """The process's one cap for ``path`` (see :class:`SharedInFlightCap` for why only one):
    ``limit`` slots, or ``"auto"`` for an :class:`AdaptiveInFlightCap`."""
    key = (str(Path(path).resolve()), limit)
    with _caps_lock:
        cap = _caps.get(key)
        if cap is None:
            cap = AdaptiveInFlightCap(path) if limit == "auto" else SharedInFlightCap(path, int(limit))
            _caps[key] = cap
        return cap


# -- max_in_flight = auto: the cap finds the provider's limit (AIMD) -----------------------

AUTO_START = 2
AUTO_CEILING = 32
AUTO_PROBE_AFTER = 30.0  # seconds below a limit that was refused, before growing past it again

_AUTO_STATE = struct.Struct("<ddddd")  # limit, held until, last cut, known max, known until


class AdaptiveInFlightCap(SharedInFlightCap):
    """A :class:`SharedInFlightCap` whose limit adapts, as TCP's congestion window does (AIMD).

    It starts at ``start`` slots. Each call that succeeds adds ``1/limit`` (one slot more per
    round of ``limit`` successes); a call the provider turned away for load (429, 503, a
    timeout) halves the limit, at most once per ``cooldown`` seconds so one burst of refusals
    counts once. A refusal at limit L also says the provider takes fewer than L: for
    ``probe_after`` seconds the limit grows to at most L - 1 (else a provider of one slot is
    asked for two after every success, as a limit of 1 + 1/1 allows). A ``Retry-After`` holds
    every process's new calls until it has passed, not only the call that got it. The state
    lives in ``<file>.limit`` (under ``flock``), so every process and host adapts one limit together.
    """

    def __init__(
        self, path: str | os.PathLike[str], ceiling: int = AUTO_CEILING, start: int = AUTO_START,
        poll: float = 0.005, cooldown: float = 1.0, clock: Callable[[], float] = time.time,
        probe_after: float = AUTO_PROBE_AFTER,
    ) -> None:
        super().__init__(path, ceiling, poll)
        self.state_path = Path(f"{self.path}.limit")
        self.start = float(min(start, ceiling))
        self.cooldown = cooldown
        self.probe_after = probe_after
        self._clock = clock
        self._cached: tuple[float, float, float] = (0.0, 0.0, -1.0)  # limit, held until, read at

    def _update(self, change: Callable[..., tuple[float, ...]] | None) -> tuple[float, ...]:
        """Read (and, with ``change``, rewrite) the shared state under the file lock; caches what it read."""
        fd = os.open(self.state_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if change else fcntl.LOCK_SH)
            raw = os.pread(fd, _AUTO_STATE.size, 0)
            state = _AUTO_STATE.unpack(raw) if len(raw) == _AUTO_STATE.size else (self.start, 0.0, 0.0, float(self.limit), 0.0)
            if change is not None:
                state = change(*state)
                os.pwrite(fd, _AUTO_STATE.pack(*state), 0)
        finally:
            os.close(fd)
        self._cached = (state[0], state[1], self._clock())
        return state

    def current_limit(self) -> int:
        return self._allowed()[0]

    def _allowed(self) -> tuple[int, float]:
        now = self._clock()
        limit, held_until, read_at = self._cached
        if now - read_at > 0.05:  # every process re-reads the shared limit often, not on every poll
            limit, held_until = self._update(None)[:2]
        return max(1, int(limit)), held_until - now

    def _open_slots(self) -> int:
        allowed, hold = self._allowed()
        return 0 if hold > 0 else allowed

    def succeeded(self) -> None:
        ceiling, now = float(self.limit), self._clock()

        def grow(limit: float, held: float, cut: float, known_max: float, known_until: float) -> tuple[float, ...]:
            top = min(ceiling, known_max) if now < known_until else ceiling
            return max(limit, min(top, limit + 1.0 / max(1.0, limit))), held, cut, known_max, known_until

        self._update(grow)

    def overloaded(self, retry_after: float | None = None) -> None:
        now = self._clock()

        def cut(limit: float, held: float, last_cut: float, known_max: float, known_until: float) -> tuple[float, ...]:
            if retry_after:
                held = max(held, now + retry_after)
            if now - last_cut >= self.cooldown:
                refused_at = max(1, int(limit))
                return max(1.0, limit / 2.0), held, now, float(max(1, refused_at - 1)), now + self.probe_after
            return limit, held, last_cut, known_max, known_until

        self._update(cut)


def is_overload(exc: BaseException) -> bool:
    """A provider turning a call away for load: 429, 503, 529 or a timeout (not a bad request)."""
    from .retry import _chain, status_code

    for err in _chain(exc):
        code = status_code(err)
        if code is not None:
            return code in (429, 503, 529)
        if isinstance(err, (TimeoutError, asyncio.TimeoutError)) or "Timeout" in type(err).__name__:
            return True
    return False
