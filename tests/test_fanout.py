"""The fan-out core: bounds, order, failure modes, stop requests, retries, rate, resume."""
from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from planexe_concurrency.config import FanOutSettings, RetryPolicy, with_overrides
from planexe_concurrency.events import ItemEvent, ItemState, JsonlEventLog, LoggingListener, read_events
from planexe_concurrency.fanout import FanOut, FanOutError, ItemFailedError, run_coroutine
from planexe_concurrency.resume import json_item_cache


class StopNow(Exception):
    """Stands in for PlanExe's PipelineStopRequested."""


class Transient(Exception):
    status_code = 503


class Recorder:
    """Records (start, end) of each call from inside the worker threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[float, float]] = []
        self.started: list[int] = []
        self.finished: list[int] = []

    def work(self, i: int, seconds: float) -> Callable[[], int]:
        def fn() -> int:
            start = time.monotonic()
            with self.lock:
                self.started.append(i)
            time.sleep(seconds)
            with self.lock:
                self.spans.append((start, time.monotonic()))
                self.finished.append(i)
            return i

        return fn

    def peak(self) -> int:
        points = sorted([(s, 1) for s, _ in self.spans] + [(e, -1) for _, e in self.spans], key=lambda p: (p[0], p[1]))
        cur = best = 0
        for _, delta in points:
            cur += delta
            best = max(best, cur)
        return best


FAST_RETRY = RetryPolicy(attempts=3, backoff_base=0.0, backoff_max=0.0, jitter=0.0)


def settings(**kw: Any) -> FanOutSettings:
    return with_overrides(FanOutSettings(retry=FAST_RETRY), **kw)


def test_twelve_items_at_most_four_at_once_and_four_reached() -> None:
    rec = Recorder()
    results = FanOut(settings(max_parallel=4), task="T").map([rec.work(i, 0.05) for i in range(12)])
    assert results == list(range(12))
    assert rec.peak() == 4


def test_thirty_two_items_at_thirty_two_no_deadlock_no_threads_left() -> None:
    before = set(threading.enumerate())
    rec = Recorder()
    results = FanOut(settings(max_parallel=32), task="T").map([rec.work(i, 0.05) for i in range(32)])
    assert results == list(range(32))
    assert rec.peak() > 1
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leftover == []


def test_order_preserved_under_random_finishing_order() -> None:
    rng = random.Random(7)
    delays = [rng.uniform(0, 0.03) for _ in range(20)]
    rec = Recorder()
    results = FanOut(settings(max_parallel=8), task="T").map([rec.work(i, d) for i, d in enumerate(delays)])
    assert results == list(range(20))
    assert rec.finished != sorted(rec.finished)  # they did finish out of order


def test_empty_input_and_length_mismatch() -> None:
    fan = FanOut(settings(), task="T")
    assert fan.map([]) == []
    with pytest.raises(ValueError, match="2 labels for 1 items"):
        fan.map([lambda: 1], labels=["a", "b"])
    with pytest.raises(ValueError, match="0 caches for 1 items"):
        fan.map([lambda: 1], caches=[])


def test_fail_fast_reports_the_failure_a_sequential_loop_meets_first() -> None:
    """Item 3 fails at once, item 1 a moment later: the error is item 1's, as in PlanExe's loop."""

    def item(i: int) -> Callable[[], int]:
        def fn() -> int:
            if i in (0, 2):
                time.sleep(0.1 if i == 0 else 0.0)
                raise ValueError(f"boom {i}")
            time.sleep(0.3)
            return i

        return fn

    events: list[ItemEvent] = []
    fan = FanOut(settings(max_parallel=4), task="Docs", listeners=[events.append])
    with pytest.raises(ItemFailedError) as info:
        fan.map([item(i) for i in range(4)])
    assert info.value.index == 0 and str(info.value.__cause__) == "boom 0"
    # item 4 was cancelled when item 3 failed, item 2 when item 1 did; item 1 was let finish
    assert {e.item for e in events if e.state is ItemState.CANCELLED} == {1, 3}
    assert [e.item for e in events if e.state is ItemState.FAILED] == [2, 0]


def test_fail_fast_cancels_pending_and_names_the_item() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def item(i: int) -> Callable[[], int]:
        def fn() -> int:
            with lock:
                started.append(i)
            if i == 1:
                raise ValueError("boom")
            time.sleep(0.05)
            return i

        return fn

    events: list[ItemEvent] = []
    fan = FanOut(settings(max_parallel=2), task="Docs", listeners=[events.append])
    with pytest.raises(ItemFailedError) as info:
        fan.map([item(i) for i in range(10)], labels=[f"doc-{i}" for i in range(10)])
    assert info.value.index == 1
    assert "Docs: item 2 (doc-1): ValueError: boom" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)
    assert len(started) < 10
    cancelled = {e.item for e in events if e.state is ItemState.CANCELLED}
    never_started = set(range(10)) - set(started)
    assert never_started and never_started <= cancelled  # every item not yet started is reported cancelled


def test_continue_on_error_runs_everything_and_lists_every_failure() -> None:
    def item(i: int) -> Callable[[], int]:
        def fn() -> int:
            if i in (2, 5):
                raise KeyError(f"bad {i}")
            return i * 10

        return fn

    fan = FanOut(settings(max_parallel=3, failure_mode="continue_on_error"), task="T")
    with pytest.raises(FanOutError) as info:
        fan.map([item(i) for i in range(7)])
    err = info.value
    assert [f.index for f in err.failures] == [2, 5]
    assert err.results == [0, 10, None, 30, 40, None, 60]
    assert "2 of 7 items failed" in str(err) and "item 3" in str(err) and "item 6" in str(err)


@pytest.mark.parametrize("mode", ["fail_fast", "continue_on_error"])
def test_stop_request_propagates_unwrapped_and_promptly(mode: str) -> None:
    calls: list[int] = []
    lock = threading.Lock()

    def item(i: int) -> Callable[[], int]:
        def fn() -> int:
            with lock:
                calls.append(i)
            if i == 0:
                raise StopNow("user pressed stop")
            time.sleep(0.1)
            return i

        return fn

    fan = FanOut(settings(max_parallel=2, failure_mode=mode), task="T", stop_exceptions=(StopNow,))
    t0 = time.monotonic()
    with pytest.raises(StopNow, match="user pressed stop"):
        fan.map([item(i) for i in range(40)])
    elapsed = time.monotonic() - t0
    assert len(calls) <= 4  # nothing new started after the stop
    assert elapsed < 2.0  # 40 items x 0.1 s / 2 would take 2 s


def test_stop_request_is_never_retried() -> None:
    calls: list[int] = []

    class TransientStop(StopNow):
        status_code = 503  # looks transient, must still not be retried

    def fn() -> int:
        calls.append(1)
        raise TransientStop()

    with pytest.raises(TransientStop):
        FanOut(settings(), task="T", stop_exceptions=(StopNow,)).map([fn])
    assert calls == [1]


def test_retries_only_transient_errors_up_to_the_limit() -> None:
    counts = {"transient": 0, "permanent": 0, "flaky": 0}

    def transient() -> int:
        counts["transient"] += 1
        raise Transient("503")

    def permanent() -> int:
        counts["permanent"] += 1
        raise ValueError("schema mismatch")

    def flaky() -> int:
        counts["flaky"] += 1
        if counts["flaky"] < 3:
            raise TimeoutError("slow")
        return 42

    fan = FanOut(settings(failure_mode="continue_on_error"), task="T")
    with pytest.raises(FanOutError) as info:
        fan.map([transient, permanent, flaky])
    assert counts == {"transient": 3, "permanent": 1, "flaky": 3}
    assert info.value.results == [None, None, 42]


def test_retry_waits_honour_retry_after_and_backoff() -> None:
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    class RateLimited(Exception):
        status_code = 429
        retry_after = 7

    attempts = {"n": 0}

    def fn() -> str:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise RateLimited()
        if attempts["n"] == 2:
            raise Transient()
        return "ok"

    policy = RetryPolicy(attempts=3, backoff_base=0.5, backoff_max=10, jitter=0)
    fan = FanOut(FanOutSettings(retry=policy), task="T", sleep=fake_sleep)
    assert fan.map([fn]) == ["ok"]
    assert waits == [7.0, 1.0]  # Retry-After wins over 0.5; then 0.5 * 2


def test_a_call_given_up_names_every_attempts_error() -> None:
    events: list[ItemEvent] = []
    tries = {"n": 0}

    def fn() -> None:
        tries["n"] += 1
        raise Transient(f"503 number {tries['n']}")

    with pytest.raises(ItemFailedError):
        FanOut(settings(), task="T", listeners=[events.append]).map([fn], labels=["lens 3"])
    (failed,) = [e for e in events if e.state is ItemState.FAILED]
    assert failed.error.startswith("Transient: 503 number 3 [every attempt: 1) Transient: 503 number 1; 2) ")
    assert failed.error.endswith("3) Transient: 503 number 3]") and failed.label == "lens 3"


def test_no_retry_starts_after_the_calls_time_budget() -> None:
    tries = {"n": 0}

    def fn() -> None:
        tries["n"] += 1
        raise Transient("down")

    policy = RetryPolicy(attempts=10, backoff_base=0.1, backoff_max=0.1, jitter=0, total_seconds=0.25)
    with pytest.raises(ItemFailedError):
        FanOut(FanOutSettings(retry=policy), task="T").map([fn])
    # tries at 0, 0.1 and 0.2 s; the next would start after the 0.25 s budget (a slow machine: 2 tries)
    assert 2 <= tries["n"] <= 3


def test_rate_limit_spaces_request_starts() -> None:
    events: list[ItemEvent] = []
    rpm = 600  # one every 0.1 s
    fan = FanOut(settings(max_parallel=8, requests_per_minute=rpm), task="T", listeners=[events.append])
    fan.map([lambda: None for _ in range(8)])
    starts = sorted(e.time for e in events if e.state is ItemState.RUNNING)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(starts) == 8
    assert min(gaps) >= 0.1 * 0.8  # slack for timer granularity; without a limit the gaps are ~0
    # and no window of 1 s holds more than 60/rpm*... i.e. 10 + 1 starts
    assert all(sum(1 for t in starts if s <= t < s + 0.5) <= 6 for s in starts)


def test_events_and_log_lines_name_task_and_item(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "events.jsonl"
    fan = FanOut(settings(max_parallel=2), task="EstimateTaskDurationsTask", listeners=[JsonlEventLog(path), LoggingListener()])
    with caplog.at_level(logging.DEBUG, logger="planexe_concurrency"):
        fan.map([lambda: 1, lambda: 2], labels=["chunk-a", "chunk-b"])
    events = read_events(path)
    by_item: dict[int, list[str]] = {}
    for e in events:
        by_item.setdefault(e.item, []).append(e.state.value)
        assert e.task == "EstimateTaskDurationsTask" and e.total == 2 and e.pid > 0
    assert by_item == {0: ["pending", "running", "completed"], 1: ["pending", "running", "completed"]}
    lines = [r.getMessage() for r in caplog.records]
    assert any("task=EstimateTaskDurationsTask item=1/2 state=completed" in line and "chunk-a" in line for line in lines)
    assert any("item=2/2 state=running" in line for line in lines)


def test_a_failing_listener_does_not_fail_the_run() -> None:
    def broken(event: ItemEvent) -> None:
        raise RuntimeError("listener bug")

    assert FanOut(settings(), task="T", listeners=[broken]).map([lambda: 5]) == [5]


def test_resume_skips_items_with_valid_files_and_redoes_corrupt_ones(tmp_path: Path) -> None:
    caches = [json_item_cache(tmp_path / f"raw-{i}.json") for i in range(3)]
    (tmp_path / "raw-0.json").write_text(json.dumps({"v": "from disk"}, indent=2))
    (tmp_path / "raw-1.json").write_text('{"v": "trunc')  # a crash mid-write, before atomic writes
    calls: list[int] = []

    def item(i: int) -> Callable[[], dict[str, str]]:
        def fn() -> dict[str, str]:
            calls.append(i)
            return {"v": f"fresh {i}"}

        return fn

    events: list[ItemEvent] = []
    results = FanOut(settings(), task="T", listeners=[events.append]).map([item(i) for i in range(3)], caches=caches)
    assert results == [{"v": "from disk"}, {"v": "fresh 1"}, {"v": "fresh 2"}]
    assert sorted(calls) == [1, 2]
    assert json.loads((tmp_path / "raw-1.json").read_text()) == {"v": "fresh 1"}
    assert (tmp_path / "raw-2.json").read_text() == json.dumps({"v": "fresh 2"}, indent=2)
    assert [e.cached for e in events if e.state is ItemState.COMPLETED and e.item == 0] == [True]
    assert not list(tmp_path.glob("*.tmp"))


def test_map_works_from_inside_a_running_loop() -> None:
    async def main() -> list[int]:
        return FanOut(settings(), task="T").map([lambda: 1, lambda: 2])

    assert asyncio.run(main()) == [1, 2]


def test_run_coroutine_reraises_from_helper_thread() -> None:
    async def boom() -> None:
        raise KeyError("x")

    async def main() -> None:
        run_coroutine(boom())

    with pytest.raises(KeyError):
        asyncio.run(main())


def test_keyboard_interrupt_is_not_wrapped() -> None:
    def fn() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        FanOut(settings(), task="T").map([fn])


def test_outer_cancellation_cancels_items() -> None:
    async def main() -> None:
        fan = FanOut(settings(max_parallel=1), task="T")
        task = asyncio.ensure_future(fan.map_async([lambda: time.sleep(0.05) for _ in range(10)]))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    t0 = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - t0 < 0.4
