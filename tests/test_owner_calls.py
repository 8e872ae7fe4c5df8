"""OwnerCallServer: forked children's calls run in the owner, one at a time, and nothing hangs."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from planexe_concurrency.owner_calls import OwnerCallServer, OwnerGone

FORK = multiprocessing.get_context("fork")


class Recorder:
    """A handler that notes who ran it and whether two calls ever overlapped."""

    def __init__(self, slow: dict[str, float] | None = None) -> None:
        self.slow = slow or {}
        self.calls: list[dict[str, Any]] = []
        self.active = 0
        self.peak = 0
        self.guard = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        with self.guard:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(self.slow.get(request.get("name", ""), 0.01))
        with self.guard:
            self.active -= 1
            self.calls.append({**request, "pid": os.getpid()})
        if request.get("name") == "boom":
            raise RuntimeError("the handler failed")
        return {"outcome": "continue", "echo": request.get("n"), "pid": os.getpid()}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder({"slow": 0.6})


@pytest.fixture
def server(recorder: Recorder):  # type: ignore[no-untyped-def]
    srv = OwnerCallServer(recorder).start()
    yield srv
    srv.stop()


def _child_calls(server: OwnerCallServer, first: int, count: int, out: Any) -> None:
    replies = [server.call({"name": "x", "n": first + i}) for i in range(count)]
    out.send(replies)


def test_calls_from_forked_children_run_in_the_owner_one_at_a_time(server: OwnerCallServer, recorder: Recorder) -> None:
    pipes = []
    children = []
    for c in range(4):
        mine, theirs = FORK.Pipe()
        child = FORK.Process(target=_child_calls, args=(server, c * 10, 5, theirs))
        child.start()
        children.append(child)
        pipes.append(mine)
    replies = [p.recv() for p in pipes]
    for child in children:
        child.join(10)
        assert child.exitcode == 0
    assert [[r["echo"] for r in rs] for rs in replies] == [[c * 10 + i for i in range(5)] for c in range(4)]
    assert {r["pid"] for rs in replies for r in rs} == {os.getpid()}  # the handler ran in the owner only
    assert len(recorder.calls) == 20
    assert recorder.peak == 1  # never two calls at once


def test_the_owners_own_calls_queue_with_the_childrens(server: OwnerCallServer, recorder: Recorder) -> None:
    threads = [threading.Thread(target=server.call, args=({"name": "x", "n": i},)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(recorder.calls) == 6 and recorder.peak == 1


def test_a_handler_error_is_a_reply_and_the_channel_lives_on(server: OwnerCallServer) -> None:
    mine, theirs = FORK.Pipe()

    def child() -> None:
        theirs.send([server.call({"name": "boom"}), server.call({"name": "x", "n": 1})])

    proc = FORK.Process(target=child)
    proc.start()
    failed, fine = mine.recv()
    proc.join(10)
    assert failed == {"outcome": "error", "type": "RuntimeError", "message": "the handler failed"}
    assert fine["echo"] == 1


def test_a_child_killed_mid_call_holds_up_nobody(server: OwnerCallServer, recorder: Recorder) -> None:
    dying = FORK.Process(target=lambda: server.call({"name": "slow", "n": 0}))
    dying.start()
    deadline = time.time() + 5
    while recorder.active == 0 and time.time() < deadline:  # the owner is inside the dying child's call
        time.sleep(0.01)
    os.kill(dying.pid, signal.SIGKILL)
    dying.join(5)
    # a silent connection (connected, never asks) must not block either
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(server.address)  # type: ignore[arg-type]
    mine, theirs = FORK.Pipe()
    proc = FORK.Process(target=_child_calls, args=(server, 100, 2, theirs))
    started = time.time()
    proc.start()
    assert mine.poll(10), "a call after the killed one was never answered"
    assert [r["echo"] for r in mine.recv()] == [100, 101]
    assert time.time() - started < 5
    proc.join(5)
    silent.close()
    assert any(c.get("n") == 0 for c in recorder.calls)  # the dead child's call was still made, once


def test_a_child_whose_owner_dies_stops_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner dies while it runs a grandchild's call: the grandchild gets OwnerGone, it does not hang,
    even though another process still holds the connection open (so no end-of-file arrives)."""
    from planexe_concurrency import forksafe

    monkeypatch.setattr(forksafe, "FORK_WAIT", 0.1)  # the sibling below forks during the call on purpose
    result = tmp_path / "result.json"

    def owner() -> None:
        srv = OwnerCallServer(lambda request: time.sleep(30) or {"outcome": "continue"}).start()
        pid = os.fork()
        if pid == 0:
            started = time.time()
            try:
                srv.call({"name": "never answered"})
                outcome = "answered"
            except OwnerGone as exc:
                outcome = f"gone: {exc}"
            result.write_text(json.dumps({"outcome": outcome, "waited": time.time() - started}))
            os._exit(0)
        time.sleep(0.5)
        if os.fork() == 0:  # a sibling forked now inherits the accepted connection: no EOF will come
            time.sleep(6)
            os._exit(0)
        os._exit(0)  # the owner dies in the middle of the call

    proc = FORK.Process(target=owner)
    proc.start()
    proc.join(10)
    deadline = time.time() + 10
    while not result.exists() and time.time() < deadline:
        time.sleep(0.05)
    data = json.loads(result.read_text())
    assert data["outcome"].startswith("gone: ") and "is gone" in data["outcome"]
    assert data["waited"] < 3


def test_a_forked_child_does_not_serve_and_cannot_start(server: OwnerCallServer) -> None:
    mine, theirs = FORK.Pipe()

    def child() -> None:
        try:
            server.start()
            theirs.send("started")
        except RuntimeError as exc:
            theirs.send(str(exc))

    proc = FORK.Process(target=child)
    proc.start()
    assert "must be called in the process that created it" in mine.recv()
    proc.join(5)


def test_stop_removes_the_socket_and_later_calls_say_the_owner_is_gone(recorder: Recorder) -> None:
    srv = OwnerCallServer(recorder).start()
    folder = Path(srv.address).parent  # type: ignore[arg-type]
    mine, theirs = FORK.Pipe()
    go = FORK.Event()

    def child() -> None:
        go.wait(10)
        try:
            srv.call({"name": "x"})
            theirs.send("answered")
        except OwnerGone as exc:
            theirs.send(f"gone: {exc}")

    proc = FORK.Process(target=child)
    proc.start()
    srv.stop()
    go.set()
    assert mine.recv().startswith("gone: ")
    proc.join(5)
    assert not folder.exists()


@pytest.fixture
def child_view(server: OwnerCallServer, monkeypatch: pytest.MonkeyPatch) -> OwnerCallServer:
    """The same server as a forked child sees it, in this process (so coverage sees the child's side)."""
    import copy

    child = copy.copy(server)
    monkeypatch.setattr(OwnerCallServer, "in_owner", property(lambda self: self is not child))
    return child


def test_the_childs_side_asks_over_the_socket_and_waits_while_the_owner_lives(
    child_view: OwnerCallServer, server: OwnerCallServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("planexe_concurrency.owner_calls.LIVENESS_INTERVAL", 0.05)
    assert child_view.call({"name": "x", "n": 7})["echo"] == 7
    assert child_view.call({"name": "slow", "n": 8})["echo"] == 8  # waited through several liveness checks
    assert child_view.owner_alive()
    assert [c["n"] for c in recorder.calls] == [7, 8]


def test_the_childs_side_reports_an_owner_that_stopped_serving(child_view: OwnerCallServer, server: OwnerCallServer) -> None:
    server.stop()
    with pytest.raises(OwnerGone, match="no longer serves calls"):
        child_view.call({"name": "x"})


def test_garbage_and_cut_off_requests_are_ignored(server: OwnerCallServer, recorder: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    for payload in (b"not json\n", b'{"name": "x"'):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(server.address)  # type: ignore[arg-type]
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        assert conn.recv(100) == b""  # closed without a reply
        conn.close()
    assert server.call({"name": "x", "n": 1})["echo"] == 1
    assert recorder.calls == [{"name": "x", "n": 1, "pid": os.getpid()}]
    assert "sent no request" in caplog.text


def test_owner_alive_reads_the_parent_pid_first_and_kill_zero_otherwise(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = OwnerCallServer(recorder)
    srv.owner_pid = 4242
    monkeypatch.setattr(os, "getppid", lambda: 4242)
    assert srv.owner_alive()  # still our parent
    monkeypatch.setattr(os, "getppid", lambda: 1)
    srv._forked_directly = True
    assert not srv.owner_alive()  # we were its child and got re-parented: it died
    srv._forked_directly = False
    outcomes = {"gone": ProcessLookupError(), "other user": PermissionError(), "alive": None}
    seen = {}
    for name, error in outcomes.items():
        def kill(pid: int, sig: int, error: BaseException | None = error) -> None:
            if error is not None:
                raise error
        monkeypatch.setattr(os, "kill", kill)
        seen[name] = srv.owner_alive()
    assert seen == {"gone": False, "other user": True, "alive": True}


def test_a_process_forked_before_the_channel_existed_is_told_so(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = OwnerCallServer(recorder)
    monkeypatch.setattr(OwnerCallServer, "in_owner", property(lambda self: False))
    with pytest.raises(OwnerGone, match="set up no channel"):
        srv.call({"name": "x"})


def test_start_is_idempotent_and_exclusive_is_the_calls_lock(server: OwnerCallServer, recorder: Recorder) -> None:
    address = server.address
    assert server.start() is server and server.address == address
    with server.exclusive:  # held: a call waits for it
        t = threading.Thread(target=server.call, args=({"name": "x", "n": 1},))
        t.start()
        time.sleep(0.1)
        assert recorder.calls == []
    t.join(5)
    assert [c["n"] for c in recorder.calls] == [1]


def test_an_owner_that_dies_after_the_request_closes_the_call(child_view: OwnerCallServer, server: OwnerCallServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("planexe_concurrency.owner_calls.LIVENESS_INTERVAL", 0.05)
    monkeypatch.setattr(OwnerCallServer, "owner_alive", lambda self: False)
    with pytest.raises(OwnerGone, match="is gone"):
        child_view.call({"name": "slow"})


def test_folders_of_owners_that_died_are_removed_and_live_ones_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from planexe_concurrency import owner_calls

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    folders = {name: tmp_path / f"{owner_calls.FOLDER_PREFIX}{name}" for name in ("live", "dead", "young", "other")}
    for folder in folders.values():
        folder.mkdir()
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(folders["live"] / "calls.sock"))
    live.listen(1)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(folders["dead"] / "calls.sock"))
    dead.close()  # bound, never listening again: its owner is gone
    (tmp_path / "unrelated").mkdir()
    now = time.time()
    old = now - owner_calls.STALE_AFTER - 1
    for name in ("live", "dead", "other"):
        os.utime(folders[name], (old, old))
    assert owner_calls.remove_stale_folders(now=now) == 2  # dead, and other (old, no socket at all)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folders["live"].name, folders["young"].name, "unrelated"])
    live.close()


def test_the_childs_side_of_a_fork_in_process(child_view: OwnerCallServer, server: OwnerCallServer) -> None:
    """What a forked child does to its copy (run here on a copy, where coverage sees it)."""
    with pytest.raises(RuntimeError, match="must be called in the process that created it"):
        child_view.start()
    copy_of_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a fork duplicates the descriptor
    child_view._listener = copy_of_listener
    child_view._after_fork_in_child()
    assert child_view._listener is None and copy_of_listener.fileno() == -1  # the child's copy is closed
    assert child_view._lock is not server._lock
    assert child_view.call({"name": "x", "n": 5})["echo"] == 5  # and the owner still serves it over the socket


def test_a_reply_that_never_comes_is_owner_gone(child_view: OwnerCallServer, tmp_path: Path) -> None:
    folder = tmp_path / "mute"
    folder.mkdir()
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(folder / "calls.sock"))
    mute.listen(1)

    def hang_up() -> None:
        conn, _ = mute.accept()
        conn.recv(100)
        conn.close()  # read the request, answered nothing

    t = threading.Thread(target=hang_up)
    t.start()
    child_view._folder = folder
    with pytest.raises(OwnerGone, match="closed the call without an answer"):
        child_view.call({"name": "x"})
    t.join(5)
    mute.close()


def test_a_fork_waits_for_a_call_in_progress_so_the_child_inherits_no_held_lock(
    server: OwnerCallServer, recorder: Recorder
) -> None:
    """A call writing (PlanExe's callback writes its log file) while Luigi forks would leave the child a locked stream."""
    caller = threading.Thread(target=lambda: server.call({"name": "slow"}))
    caller.start()
    deadline = time.time() + 5
    while recorder.active == 0 and time.time() < deadline:
        time.sleep(0.005)
    assert recorder.active == 1  # the call is running in one of the owner's threads
    pid = os.fork()
    if pid == 0:  # the child: exit at once, the test is about when the fork happened
        os._exit(0)
    forked_after_call = recorder.active == 0 and len(recorder.calls) == 1
    os.waitpid(pid, 0)
    caller.join(5)
    assert forked_after_call
    assert server.exclusive.acquire(timeout=1)  # and the parent's lock was given back
    server.exclusive.release()
