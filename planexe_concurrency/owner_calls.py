"""Calls that must run in the process that owns the callee, made on behalf of forked children.

    server = OwnerCallServer(handle).start()   # in the owner, before it forks
    reply = server.call({"task_id": "X", "duration": 1.5})   # anywhere, returns handle()'s dict

Why: Luigi forks a process per task under ``--workers N``. A callable the parent handed to
its tasks (PlanExe's progress/stop callback, a bound method of an object holding a database
connection) still *runs* in a child, but on the child's copies of the parent's sockets:
two processes then talk over one PostgreSQL connection, their replies get crossed and
libpq hangs. So a child never runs such a call; it asks the owner to run it and waits.

The rules, each enforced here:

* ``handle`` only ever runs in the owner, **one call at a time** (the owner's own direct
  calls included), in the order the requests arrive;
* the channel (a Unix socket in a private folder) exists before the fork; each call opens
  its own connection, so no connection is ever shared between processes;
* nothing deadlocks: every connection has its own thread in the owner, so a child that dies
  mid-call, or one that stalls, holds up only itself; a child whose owner is gone stops
  waiting (:class:`OwnerGone`);
* a forked child never serves: its copy of the listening socket is closed at the fork.

Requests and replies are JSON objects (no pickles: nothing a peer sends is executed).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from . import forksafe

logger = logging.getLogger("planexe_concurrency")

Message = dict[str, Any]

# A child checks this often whether the owner still lives while it waits for a reply.
LIVENESS_INTERVAL = 0.5
# How long the owner waits for a connected child to send its request.
REQUEST_TIMEOUT = 30.0

_servers: "weakref.WeakSet[OwnerCallServer]" = weakref.WeakSet()

FOLDER_PREFIX = "planexe-concurrency-calls-"
# A folder younger than this may belong to an owner that has not started listening yet.
STALE_AFTER = 60.0


class OwnerGone(RuntimeError):
    """The process that owns the call is gone (or stopped serving); the call was not answered."""


class OwnerCallServer:
    """Runs ``handle(request) -> reply`` in this process for itself and for its forked children."""

    __slots__ = ("handle", "owner_pid", "_lock", "_folder", "_listener", "_thread", "_forked_directly", "__weakref__")

    def __init__(self, handle: Callable[[Message], Message]) -> None:
        self.handle = handle
        self.owner_pid = os.getpid()
        self._lock = threading.Lock()
        self._folder: Path | None = None
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._forked_directly = False
        _servers.add(self)

    # -- owner side -------------------------------------------------------------------
    @property
    def address(self) -> str | None:
        return str(self._folder / "calls.sock") if self._folder is not None else None

    @property
    def exclusive(self) -> threading.Lock:
        """Held while ``handle`` runs: the owner's own direct calls take it too, so calls never overlap."""
        return self._lock

    @property
    def in_owner(self) -> bool:
        return os.getpid() == self.owner_pid

    def start(self) -> "OwnerCallServer":
        """Listen (idempotent); must be called in the owner before it forks the children that call."""
        if not self.in_owner:
            raise RuntimeError("OwnerCallServer.start() must be called in the process that created it")
        if self._listener is not None:
            return self
        remove_stale_folders()
        self._folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))  # mode 0700: this user only
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.address)  # type: ignore[arg-type]
        listener.listen(64)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="planexe-concurrency-owner-calls", daemon=True)
        self._thread.start()
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Stop listening and remove the socket's folder (in the owner; a child only forgets it)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        if self._folder is not None and self.in_owner:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._folder = None

    def _accept_loop(self) -> None:
        listener = self._listener
        while listener is not None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # stopped
            threading.Thread(target=self._serve, args=(conn,), name="planexe-concurrency-owner-call", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(REQUEST_TIMEOUT)
            try:
                request = _read_message(conn)
            except (OSError, ValueError) as exc:
                logger.warning("owner call: a child connected but sent no request (%s); ignored", exc)
                return
            if request is None:
                return  # the child went away before asking
            reply = self._handle_locked(request)
            try:
                conn.sendall(_encode(reply))
            except OSError:
                # The child died while its call ran: the call was made, nobody waits for the answer.
                logger.info("owner call: the child that asked went away before the reply")

    def _handle_locked(self, request: Message) -> Message:
        with self._lock:
            try:
                return self.handle(request)
            except Exception as exc:  # the handler should turn errors into replies; never lose the channel
                logger.exception("owner call: the handler raised")
                return {"outcome": "error", "type": type(exc).__name__, "message": str(exc)}

    # -- both sides -------------------------------------------------------------------
    def call(self, request: Message) -> Message:
        """The owner's reply to ``request``: run here if this is the owner, else asked over the socket."""
        if self.in_owner:
            return self._handle_locked(request)
        address = self.address
        if address is None:
            raise OwnerGone(f"process {self.owner_pid} set up no channel before this process was forked")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(address)
                conn.sendall(_encode(request))
                return self._wait_for_reply(conn)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise OwnerGone(f"process {self.owner_pid} no longer serves calls ({exc})") from None

    def _wait_for_reply(self, conn: socket.socket) -> Message:
        conn.settimeout(LIVENESS_INTERVAL)
        buffer = bytearray()
        while True:
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                if not self.owner_alive():
                    raise OwnerGone(f"process {self.owner_pid}, which owns the call, is gone") from None
                continue
            if not chunk:
                raise OwnerGone(f"process {self.owner_pid} closed the call without an answer")
            buffer += chunk
            if buffer.endswith(b"\n"):
                return json.loads(buffer)

    def owner_alive(self) -> bool:
        if os.getppid() == self.owner_pid:
            return True
        if self._forked_directly:
            return False  # re-parented: the owner died (it may linger as a zombie, so kill(0) would lie)
        try:
            os.kill(self.owner_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _after_fork_in_child(self) -> None:
        self._forked_directly = os.getppid() == self.owner_pid
        self._lock = threading.Lock()  # a thread of the owner may have held it at the fork
        self._thread = None
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()  # the child's copy only; the owner keeps serving


def remove_stale_folders(now: float | None = None) -> int:
    """Remove this user's socket folders whose owner is gone (killed before its exit handler ran)."""
    now = time.time() if now is None else now
    removed = 0
    for folder in Path(tempfile.gettempdir()).glob(FOLDER_PREFIX + "*"):
        try:
            info = folder.stat()
            if info.st_uid != os.getuid() or now - info.st_mtime < STALE_AFTER:
                continue
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(str(folder / "calls.sock"))  # someone still listens: not stale
        except (ConnectionRefusedError, FileNotFoundError):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
        except OSError:
            continue
    return removed


def _encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


def _read_message(conn: socket.socket) -> Message | None:
    buffer = bytearray()
    while not buffer.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            if buffer:
                raise ValueError("cut-off request")
            return None
        buffer += chunk
    return json.loads(buffer)


# A fork copies every lock as it is. A call running in one of the owner's threads at that moment
# (PlanExe's callback writing its log file, say) would leave the child a stream buffer locked
# for ever: the child's first log line hangs. So a fork waits for the call in progress to end
# (at most forksafe.FORK_WAIT: a stuck callback does not hold up the scheduler).
def _serving_locks() -> list[threading.Lock]:
    return [server._lock for server in list(_servers) if server._listener is not None and server.in_owner]


def _after_fork_in_child() -> None:
    for server in list(_servers):
        server._after_fork_in_child()


forksafe.hold_at_fork(_serving_locks)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
