"""Atomic writes, item caches, and the request budget shared between processes."""
from __future__ import annotations

import multiprocessing
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from planexe_concurrency.ratelimit import RequestPacer, SharedSlotFile
from planexe_concurrency.resume import StartMarks, atomic_write_text, json_item_cache


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    atomic_write_text(target, "new content")
    assert target.read_text() == "new content"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def _start_then_wait(folder: Path, key: str, release: Any) -> None:
    StartMarks(folder).started(key)
    release.wait(10)
    os._exit(1)  # no finally, no atexit: as a kill would


def test_start_marks_outlive_the_process_that_did_not_finish(tmp_path: Path) -> None:
    marks = StartMarks(tmp_path / "marks")
    assert not marks.unfinished("job-a")
    marks.started("job-a")
    assert marks.unfinished("job-a")
    marks.finished("job-a")
    marks.finished("job-a")  # twice is fine: a job can be run twice after a lost worker
    assert not marks.unfinished("job-a")

    ctx = multiprocessing.get_context("fork")
    release = ctx.Event()
    child = ctx.Process(target=_start_then_wait, args=(tmp_path / "marks", "job-b", release))
    child.start()
    deadline = time.time() + 10
    while not marks.unfinished("job-b"):
        assert time.time() < deadline
        time.sleep(0.01)
    here = socket.gethostname()
    assert marks.owner("job-b") == (f"process {child.pid} on {here}", False)  # still running it
    release.set()
    child.join(10)
    assert marks.unfinished("job-b")
    assert marks.owner("job-b") == (f"process {child.pid} on {here}", True)
    (tmp_path / "marks" / "job-c.started").write_text('{"pid": 1, "host": "elsewhere"}')
    assert marks.owner("job-c") == ("process 1 on elsewhere", False)  # may still run there
    (tmp_path / "marks" / "job-d.started").write_text("")
    assert marks.owner("job-d") == ("an unknown process", False)
    assert not StartMarks(tmp_path / "other").unfinished("job-b")


def test_json_item_cache_round_trip_and_corrupt_file(tmp_path: Path) -> None:
    cache = json_item_cache(tmp_path / "raw.json")
    assert cache.get() == (False, None)
    cache.put({"a": [1, 2]})
    assert (tmp_path / "raw.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    assert cache.get() == (True, {"a": [1, 2]})
    (tmp_path / "raw.json").write_text("{")
    assert cache.get() == (False, None)


def _take_slots(path: str, n: int, out: "multiprocessing.Queue[float]") -> None:
    slots = SharedSlotFile(path, requests_per_minute=600)
    for _ in range(n):
        delay = slots.reserve()
        time.sleep(delay)
        out.put(time.time())


def test_shared_slot_file_spaces_requests_across_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue: "multiprocessing.Queue[float]" = ctx.Queue()
    path = str(tmp_path / "budget.slot")
    procs = [ctx.Process(target=_take_slots, args=(path, 4, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
    stamps = sorted(queue.get(timeout=5) for _ in range(12))
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert min(gaps) >= 0.1 * 0.7  # 600/min = one every 0.1 s over all three processes
    assert stamps[-1] - stamps[0] >= 11 * 0.1 * 0.9


def test_shared_slot_file_rejects_zero_rate(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        SharedSlotFile(tmp_path / "x", requests_per_minute=0)


def test_pacer_inactive_without_a_rate() -> None:
    import asyncio

    async def main() -> bool:
        pacer = RequestPacer(0)
        await pacer.acquire()
        return pacer.active

    assert asyncio.run(main()) is False


class CountingSlots(SharedSlotFile):
    __slots__ = ("reserved",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reserved = 0

    def reserve(self, within: float | None = None) -> float | None:
        delay = super().reserve(within)
        self.reserved += delay is not None  # a slot taken (a look that found none due takes none)
        return delay


def test_every_llm_request_waits_for_a_slot_whoever_sends_it(sim_server: Any, tmp_path: Path) -> None:
    """One slot per HTTP request, structured or plain, from any thread; none once pacing stops."""
    pytest.importorskip("llama_index.llms.openai_like")
    from concurrent.futures import ThreadPoolExecutor

    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike
    from pydantic import BaseModel

    from planexe_concurrency.ratelimit import gate_llm_requests, ungate_llm_requests
    from planexe_concurrency.simllm.server import max_requests_in_window

    class Answer(BaseModel):
        text: str

    def llm() -> OpenAILike:
        return OpenAILike(model="simulated", api_base=sim_server.url + "/v1", api_key="x", is_chat_model=True, max_retries=0)

    def ask(i: int) -> None:
        llm().as_structured_llm(Answer).chat([ChatMessage(role="user", content=f"structured {i}")])
        llm().chat([ChatMessage(role="user", content=f"plain {i}")])

    slots = CountingSlots(tmp_path / "budget.slots", requests_per_minute=1200)  # one per 0.05 s
    gate_llm_requests(slots)
    gate_llm_requests(slots)  # installing twice is one gate
    try:
        ask(-1)  # the client's lazy imports, outside the measured part
        sim_server.clear_log()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(ask, range(6)))
        assert slots.reserved == 2 + 12 and len(sim_server.log) == 12
        assert max_requests_in_window(sim_server.log, 0.25, accepted_only=False) <= 0.25 / 0.05 + 2
        # a budget for another rate replaces the first pacer rather than adding a second one
        other = CountingSlots(tmp_path / "budget.slots", requests_per_minute=6000)
        gate_llm_requests(other)
        ask(100)
        assert (slots.reserved, other.reserved) == (14, 2)
    finally:
        ungate_llm_requests()
    ask(101)
    assert (slots.reserved, other.reserved) == (14, 2)
