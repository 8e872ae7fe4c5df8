"""The concurrency-safe LLM executor: PlanExe's fallback semantics, many calls at once."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from planexe_concurrency.config import FanOutSettings, RetryPolicy
from planexe_concurrency.events import ItemEvent, ItemState
from planexe_concurrency.fanout import FanOut, ItemFailedError
from planexe_concurrency.llm_executor import ConcurrentLLMExecutor, ExhaustedModelsError, StopCheck
from planexe_concurrency.ratelimit import SharedSlotFile
from planexe_concurrency.resume import json_item_cache


class StopNow(Exception):
    pass


class FakeLLM:
    def __init__(self, name: str, fail: bool = False, delay: float = 0.0) -> None:
        self.name, self.fail, self.delay = name, fail, delay

    def ask(self, q: str) -> str:
        time.sleep(self.delay)
        if self.fail:
            raise ValueError(f"{self.name} cannot answer")
        return f"{self.name}:{q}"


class Model:
    def __init__(self, name: str, fail: bool = False, broken: bool = False, delay: float = 0.0) -> None:
        self.name, self.fail, self.broken, self.delay = name, fail, broken, delay
        self.created = 0
        self.lock = threading.Lock()

    def create_llm(self) -> FakeLLM:
        with self.lock:
            self.created += 1
        if self.broken:
            raise RuntimeError(f"{self.name}: no such model")
        return FakeLLM(self.name, self.fail, self.delay)

    def __repr__(self) -> str:
        return f"Model({self.name!r})"


def executor(models: list[Model], **kw: Any) -> ConcurrentLLMExecutor:
    fan_kw = {k: kw.pop(k) for k in ("listeners", "stop_exceptions", "shared_slots") if k in kw}
    settings = FanOutSettings(max_parallel=kw.pop("max_parallel", 4), retry=RetryPolicy(1, 0, 0, 0), **kw)
    return ConcurrentLLMExecutor(models, fanout=FanOut(settings, task="T", **fan_kw), should_stop_callback=None)


def test_first_model_answers() -> None:
    assert executor([Model("a"), Model("b")]).run(lambda llm: llm.ask("q")) == "a:q"


def test_falls_back_to_next_model_on_failure_and_on_create_failure() -> None:
    ex = executor([Model("broken", broken=True), Model("bad", fail=True), Model("good")])
    assert ex.run(lambda llm: llm.ask("q")) == "good:q"


def test_exhausted_all_llms_message_lists_every_attempt() -> None:
    ex = executor([Model("broken", broken=True), Model("bad", fail=True)])
    with pytest.raises(ItemFailedError) as info:
        ex.run(lambda llm: llm.ask("q"))
    cause = info.value.__cause__
    assert isinstance(cause, ExhaustedModelsError)
    text = str(cause)
    assert "Exhausted all LLMs" in text
    assert "Attempt 0 with Model('broken') failed during 'create' stage" in text
    assert "Attempt 1 with Model('bad') failed during 'execute' stage" in text


def test_stop_callback_after_every_attempt_and_stop_propagates() -> None:
    seen: list[StopCheck] = []

    def callback(check: StopCheck) -> None:
        seen.append(check)

    models = [Model("bad", fail=True), Model("good")]
    ex = ConcurrentLLMExecutor(models, fanout=FanOut(FanOutSettings(retry=RetryPolicy(1, 0, 0, 0)), task="T"), should_stop_callback=callback)
    assert ex.run(lambda llm: llm.ask("q")) == "good:q"
    assert [(c.attempt_index, c.last_attempt.success, c.total_attempts) for c in seen] == [(0, False, 2), (1, True, 2)]

    def stopping(check: StopCheck) -> None:
        raise StopNow("stop")

    ex = ConcurrentLLMExecutor(
        models, fanout=FanOut(FanOutSettings(), task="T", stop_exceptions=(StopNow,)), should_stop_callback=stopping
    )
    with pytest.raises(StopNow):
        ex.run_batch([lambda llm: llm.ask("q")] * 5)


def test_stop_raised_by_the_function_is_not_a_fallback() -> None:
    models = [Model("a"), Model("b")]

    def fn(llm: FakeLLM) -> str:
        raise StopNow("from inside")

    with pytest.raises(StopNow):
        executor(models, stop_exceptions=(StopNow,)).run(fn)
    assert models[1].created == 0


def test_invalid_construction() -> None:
    with pytest.raises(ValueError, match="No LLMs provided"):
        ConcurrentLLMExecutor([], fanout=FanOut(FanOutSettings(), task="T"))
    with pytest.raises(TypeError):
        ConcurrentLLMExecutor([Model("a")], fanout=FanOut(FanOutSettings(), task="T"), should_stop_callback=42)  # type: ignore[arg-type]


def test_batch_runs_concurrently_in_order_with_no_shared_state() -> None:
    models = [Model("flaky", fail=True), Model("good", delay=0.05)]
    events: list[ItemEvent] = []
    ex = executor(models, max_parallel=8, listeners=[events.append])
    t0 = time.monotonic()
    out = ex.run_batch([lambda llm, i=i: llm.ask(str(i)) for i in range(16)], labels=[f"q{i}" for i in range(16)])
    elapsed = time.monotonic() - t0
    assert out == [f"good:{i}" for i in range(16)]
    assert models[0].created == 16 and models[1].created == 16
    assert elapsed < 16 * 0.05  # concurrency happened (sequential would be 0.8 s)
    attempts = {e.item: e.attempt for e in events if e.state is ItemState.COMPLETED}
    assert set(attempts.values()) == {2}  # each item: one failed try, one good one


def test_run_async_and_resume(tmp_path: Path) -> None:
    import asyncio

    ex = executor([Model("a")])
    assert asyncio.run(ex.run_async(lambda llm: llm.ask("x"))) == "a:x"
    caches = [json_item_cache(tmp_path / "0.json"), json_item_cache(tmp_path / "1.json")]
    (tmp_path / "0.json").write_text('"kept"')
    model = Model("a")
    out = executor([model]).run_batch([lambda llm: llm.ask("0"), lambda llm: llm.ask("1")], caches=caches)
    assert out == ["kept", "a:1"] and model.created == 1


def test_shared_slots_pace_calls(tmp_path: Path) -> None:
    events: list[ItemEvent] = []
    slots = SharedSlotFile(tmp_path / "slot", requests_per_minute=1200)  # one every 50 ms
    ex = executor([Model("a")], max_parallel=8, shared_slots=slots, listeners=[events.append])
    ex.run_batch([lambda llm, i=i: llm.ask(str(i)) for i in range(6)])
    starts = sorted(e.time for e in events if e.state is ItemState.RUNNING)
    assert min(b - a for a, b in zip(starts, starts[1:])) >= 0.05 * 0.7
