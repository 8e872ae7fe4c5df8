"""Atomic writes, item caches, and the request budget shared between processes."""
from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from planexe_concurrency.ratelimit import RequestPacer, SharedSlotFile
from planexe_concurrency.resume import atomic_write_text, json_item_cache


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
