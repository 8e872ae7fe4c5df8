"""One cap on LLM calls in flight for the whole run (``max_in_flight``), across threads and processes."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import luigi
import pytest

from planexe_concurrency.config import ConfigError, FanOutSettings, RetryPolicy, load_settings
from planexe_concurrency.fanout import FanOut
from planexe_concurrency.ratelimit import SharedInFlightCap, in_flight_cap
from planexe_concurrency.simllm import SimServer
from planexe_concurrency.simllm.server import most_at_once
from tests.conftest import PipelineRunner, differing_files, set_concurrency


def test_threads_of_one_process_share_the_slots(tmp_path: Path) -> None:
    cap = SharedInFlightCap(tmp_path / "cap", 2)
    taken = [cap.try_take(), cap.try_take()]
    assert sorted(taken) == [0, 1] and cap.try_take() is None and cap.in_use_here() == 2
    cap.give_back(taken[0])
    assert cap.try_take() == taken[0]
    with pytest.raises(ValueError):
        SharedInFlightCap(tmp_path / "cap0", 0)
    assert in_flight_cap(tmp_path / "one", 3) is in_flight_cap(tmp_path / "one", 3)


def test_forked_processes_never_hold_more_than_the_cap(tmp_path: Path) -> None:
    cap = in_flight_cap(tmp_path / "cap", 2)
    log = tmp_path / "spans.jsonl"

    async def work(n: int) -> None:
        async def one() -> None:
            async with cap.hold():
                start = time.time()
                await asyncio.sleep(0.03)
                with open(log, "a") as f:
                    f.write(json.dumps([start, time.time()]) + "\n")

        await asyncio.gather(*(one() for _ in range(n)))

    held_by_parent = cap.try_take()  # a slot the parent holds while its children run
    children = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            asyncio.run(work(4))
            os._exit(0)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    spans = [tuple(json.loads(line)) for line in log.read_text().splitlines()]
    assert len(spans) == 12
    assert most_at_once(spans) == 1  # the parent's slot left one for all three children together
    cap.give_back(held_by_parent)  # type: ignore[arg-type]


def test_a_dead_process_leaves_no_slot_taken(tmp_path: Path) -> None:
    path = tmp_path / "cap"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        child_cap = SharedInFlightCap(path, 1)
        child_cap.try_take()
        os._exit(0)  # dies holding it
    os.waitpid(pid, 0)
    assert SharedInFlightCap(path, 1).try_take() == 0


def test_a_fanout_holds_a_slot_for_an_attempt_only_and_runs_no_more_threads_than_slots(tmp_path: Path) -> None:
    cap = SharedInFlightCap(tmp_path / "cap", 2)
    lock = threading.Lock()
    now = [0]
    peak = [0]

    def call() -> int:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.02)
        with lock:
            now[0] -= 1
        return 1

    fan = FanOut(FanOutSettings(max_parallel=8), task="T", in_flight=cap)
    assert fan.map([call] * 10) == [1] * 10
    assert peak[0] == 2 and cap.in_use_here() == 0
    # when the requests hold the cap themselves, the fan-out still runs no more calls than slots at once:
    # each extra thread would build an HTTP client of its own only to wait for a slot
    peak[0] = 0
    fan = FanOut(FanOutSettings(max_parallel=8), task="T", in_flight=cap, in_flight_per_request=True)
    assert fan.map([call] * 10) == [1] * 10
    assert peak[0] == 2


def test_a_waiting_request_of_higher_priority_overtakes_one_that_waited_longer(tmp_path: Path) -> None:
    cap = SharedInFlightCap(tmp_path / "cap", 1, poll=0.002)
    order: list[str] = []

    async def ask(name: str, priority: float, after: float) -> None:
        await asyncio.sleep(after)
        async with cap.hold(priority=priority):
            order.append(name)
            await asyncio.sleep(0.01)

    async def scene() -> None:
        held = cap.try_take()  # the slot is busy while three requests queue up
        waiting = [asyncio.ensure_future(ask(f"side branch {n}", 1.0, 0.01 * n)) for n in range(1, 5)]
        waiting.append(asyncio.ensure_future(ask("critical chain", 9.0, 0.06)))
        await asyncio.sleep(0.1)
        assert held is not None
        cap.give_back(held)
        await asyncio.gather(*waiting)

    asyncio.run(scene())
    # the critical request came last and goes first; the two of equal priority keep their order
    assert order == ["critical chain", "side branch 1", "side branch 2", "side branch 3", "side branch 4"]
    assert cap.waiting_before(0.0, time.time()) == 0  # everybody left the board


def test_the_waiting_order_holds_across_processes_and_a_dead_waiter_is_skipped(tmp_path: Path) -> None:
    path, log = tmp_path / "cap", tmp_path / "order.txt"
    cap = in_flight_cap(path, 1)
    held = cap.try_take()
    assert held is not None

    def waiter(name: str, priority: float, die: bool = False) -> int:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            child = SharedInFlightCap(path, 1, poll=0.002)
            if die:  # takes a place on the board, then dies without leaving it
                child.board.take_place(priority, time.time())
                os._exit(0)

            async def one() -> None:
                async with child.hold(priority=priority):
                    with open(log, "a") as f:
                        f.write(name + "\n")
                    await asyncio.sleep(0.01)

            asyncio.run(one())
            os._exit(0)
        return pid

    dead = waiter("dead", 50.0, die=True)
    os.waitpid(dead, 0)
    children = [waiter("off path", 1.0)]
    time.sleep(0.1)
    children.append(waiter("critical", 7.0))
    time.sleep(0.1)
    assert cap.waiting_before(0.0, time.time()) == 2  # the two live ones; the dead one's place is cleared
    cap.give_back(held)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert log.read_text().splitlines() == ["critical", "off path"]


def test_a_fanout_waits_for_the_cap_with_its_tasks_priority(tmp_path: Path) -> None:
    cap = SharedInFlightCap(tmp_path / "cap", 1)
    seen: list[float] = []
    original = cap.acquire

    async def acquire(sleep: Callable[[float], object] = asyncio.sleep, priority: float = 0.0) -> int:
        seen.append(priority)
        return await original(priority=priority)

    cap.acquire = acquire  # type: ignore[method-assign]
    fan = FanOut(FanOutSettings(max_parallel=2), task="T", in_flight=cap, priority=12.0)
    assert fan.map([lambda: 1, lambda: 2]) == [1, 2]
    assert seen == [12.0, 12.0]


def test_max_in_flight_is_checked_before_anything_runs(luigi_config: luigi.configuration.LuigiConfigParser) -> None:
    set_concurrency(luigi_config, max_in_flight=-1)
    with pytest.raises(ConfigError, match=r"max_in_flight = -1 is not allowed: expected an integer in 0..4096 \(0 = no cap\) or auto"):
        load_settings()


@pytest.mark.slow
def test_the_cap_holds_from_the_servers_side_across_four_workers(
    http_reference: Path,
    sim_server_factory: Callable[..., SimServer],
    new_run_dir: Callable[[str], Path],
    run_pipeline: PipelineRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = sim_server_factory(latency=0.03)
    monkeypatch.setenv("PLANEXE_SIMLLM_URL", server.url)
    run_dir = new_run_dir("capped")
    assert run_pipeline(run_dir, concurrent=True, workers=4, fast=True, llm_models=("simulated-http",), max_parallel=8, max_in_flight=2)
    assert differing_files(http_reference, run_dir, lenient=True) == []
    # never more, and reached (without the cap this plan's fan-outs put 4 or more in flight at once:
    # the no-cap row of scripts/results/provider-limits-refuse-double.md was refused by a server of 2)
    assert server.peak_in_flight() == 2
    assert (run_dir.parent / ".planexe_concurrency" / run_dir.name / "in_flight.slots").exists()


def test_auto_starts_low_grows_on_success_and_halves_on_overload(tmp_path: Path) -> None:
    from planexe_concurrency.ratelimit import AdaptiveInFlightCap

    now = {"t": 100.0}
    cap = AdaptiveInFlightCap(tmp_path / "auto", ceiling=8, clock=lambda: now["t"])
    assert cap.current_limit() == 2
    first, second = cap.try_take(), cap.try_take()
    assert cap.try_take() is None  # two at first
    for _ in range(3):
        cap.succeeded()  # 2 + 1/2 + 1/2.5 + 1/2.9 = 3.24
    assert cap.current_limit() == 3 and cap.try_take() == 2
    for slot in (first, second, 2):
        cap.give_back(slot)  # type: ignore[arg-type]
    for _ in range(40):
        cap.succeeded()  # about one slot more per round of `limit` successes
    assert cap.current_limit() == 8  # never above the ceiling
    cap.overloaded()
    assert cap.current_limit() == 4
    cap.overloaded()  # the same burst of refusals (within the cooldown) counts once
    assert cap.current_limit() == 4
    now["t"] += 2
    cap.overloaded(retry_after=5)
    assert cap.current_limit() == 2
    other = AdaptiveInFlightCap(tmp_path / "auto", ceiling=8, clock=lambda: now["t"])  # another process's view
    assert other.current_limit() == 2 and other.try_take() is None  # everyone waits out the Retry-After
    now["t"] += 5.1
    assert other.try_take() is not None


def test_auto_does_not_grow_back_into_a_limit_that_was_refused_until_it_probes_again(tmp_path: Path) -> None:
    from planexe_concurrency.ratelimit import AdaptiveInFlightCap

    now = {"t": 100.0}
    cap = AdaptiveInFlightCap(tmp_path / "auto", ceiling=8, clock=lambda: now["t"], probe_after=30.0)
    assert cap.current_limit() == 2
    cap.overloaded()  # a provider of one slot refuses the second call
    assert cap.current_limit() == 1
    for _ in range(20):
        now["t"] += 1.0
        cap.succeeded()  # 1 + 1/1 would be 2 at once: the provider refused 2, so 1 it stays
    assert cap.current_limit() == 1
    now["t"] += 10.1  # 30 s since the refusal: probe again
    cap.succeeded()
    assert cap.current_limit() == 2
    now["t"] += 2
    for _ in range(10):
        cap.succeeded()
    assert cap.current_limit() >= 4  # nothing refused the probe: AIMD as before, up to the ceiling


@pytest.mark.slow
def test_auto_finds_a_refusing_servers_limit_and_the_plan_comes_out_the_same(
    http_reference: Path,
    sim_server_factory: Callable[..., SimServer],
    new_run_dir: Callable[[str], Path],
    run_pipeline: PipelineRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from planexe_concurrency.events import ItemState, read_events

    server = sim_server_factory(latency=0.05, max_concurrent=3)  # refuses (429) above 3 in flight
    monkeypatch.setenv("PLANEXE_SIMLLM_URL", server.url)
    run_dir = new_run_dir("auto")
    events = run_dir.parent / "auto-events.jsonl"
    assert run_pipeline(
        run_dir, concurrent=True, workers=4, fast=True, llm_models=("simulated-http",), max_parallel=8,
        max_in_flight="auto", events_file=str(events), retry_backoff_base=0.05, retry_backoff_max=0.5, retry_jitter=0.05,
    )
    assert differing_files(http_reference, run_dir, lenient=True) == []
    limits = [e.limit for e in read_events(events) if e.state is ItemState.RUNNING]
    assert limits and min(limits) >= 1 and max(limits) <= 32
    refused = sum(1 for r in server.log if r.status == 429)
    assert refused < len(server.log) / 4  # it adapted: most requests were not turned away


def test_what_counts_as_the_provider_turning_a_call_away() -> None:
    from planexe_concurrency.ratelimit import is_overload

    class HTTPError(Exception):
        def __init__(self, status: int) -> None:
            super().__init__(f"HTTP {status}")
            self.status_code = status

    class ReadTimeout(Exception):
        pass

    assert [is_overload(HTTPError(s)) for s in (429, 503, 529, 500, 400)] == [True, True, True, False, False]
    assert is_overload(TimeoutError()) and is_overload(ReadTimeout()) and not is_overload(ValueError("schema"))
    wrapped = RuntimeError("Exhausted all LLMs")
    wrapped.__cause__ = HTTPError(429)
    assert is_overload(wrapped)


def test_a_fixed_cap_ignores_feedback_and_auto_has_one_instance_per_file(tmp_path: Path) -> None:
    fixed = SharedInFlightCap(tmp_path / "fixed", 3)
    fixed.succeeded()
    fixed.overloaded(retry_after=9)
    assert fixed.current_limit() == 3 and fixed.try_take() == 0
    fixed.give_back(2)  # not held: nothing to give back
    assert fixed.in_use_here() == 1
    auto = in_flight_cap(tmp_path / "auto", "auto")
    assert in_flight_cap(tmp_path / "auto", "auto") is auto and auto.current_limit() == 2


def test_an_adaptive_cap_feeds_on_the_fanouts_outcomes(tmp_path: Path) -> None:
    from planexe_concurrency.events import ItemEvent, ItemState
    from planexe_concurrency.ratelimit import AdaptiveInFlightCap

    class Refused(Exception):
        status_code = 429
        retry_after = 0

    cap = AdaptiveInFlightCap(tmp_path / "auto", ceiling=8, cooldown=0.0)
    tries = {"n": 0}

    def flaky() -> str:
        tries["n"] += 1
        if tries["n"] == 1:
            raise Refused()
        return "ok"

    events: list[ItemEvent] = []
    settings = FanOutSettings(retry=RetryPolicy(attempts=3, backoff_base=0, backoff_max=0, jitter=0))
    assert FanOut(settings, task="T", in_flight=cap, listeners=[events.append]).map([flaky]) == ["ok"]
    assert [e.limit for e in events if e.state is ItemState.RUNNING] == [2, 1]  # halved by the 429
    # the success feeds it too, but not back into the 2 the provider refused (until it probes again)
    assert cap.current_limit() == 1 and cap._update(None)[3] == 1.0


def test_max_in_flight_must_be_a_number_or_auto(luigi_config: luigi.configuration.LuigiConfigParser) -> None:
    set_concurrency(luigi_config, max_in_flight="lots")
    with pytest.raises(ConfigError, match=r"max_in_flight = lots is not allowed"):
        load_settings()
    set_concurrency(luigi_config, max_in_flight="AUTO")
    load_settings()


class _SlowRequestLLM:
    """A llama-index LLM whose requests take ``seconds`` and can be made to fail (built lazily: llama-index imports)."""

    @staticmethod
    def make(on_request: Callable[[str], None]) -> object:
        from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
        from llama_index.core.llms.callbacks import llm_completion_callback

        class SlowRequestLLM(CustomLLM):
            @property
            def metadata(self) -> LLMMetadata:
                return LLMMetadata(model_name="slow-request")

            @llm_completion_callback()
            def complete(self, prompt: str, formatted: bool = False, **kwargs: object) -> CompletionResponse:
                on_request(prompt)
                if prompt.startswith("fail"):
                    raise ConnectionError(f"{prompt}: dropped")
                return CompletionResponse(text=f"answer to {prompt}")

            def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: object) -> object:
                raise NotImplementedError

        return SlowRequestLLM()


def test_a_gated_request_holds_its_slot_only_while_it_is_out(tmp_path: Path) -> None:
    from planexe_concurrency.ratelimit import gate_llm_requests, request_priority, ungate_llm_requests

    cap = SharedInFlightCap(tmp_path / "cap", 1, poll=0.002)
    second_request_started = threading.Event()
    out_at_once, lock, peak = [0], threading.Lock(), [0]

    def on_request(prompt: str) -> None:
        with lock:
            out_at_once[0] += 1
            peak[0] = max(peak[0], out_at_once[0])
        if prompt == "second":
            second_request_started.set()
        time.sleep(0.02)
        with lock:
            out_at_once[0] -= 1

    llm = _SlowRequestLLM.make(on_request)
    seen_while_parsing: list[bool] = []

    def first() -> str:
        answer = llm.chat([_user("first")])  # type: ignore[attr-defined]  # chat built on complete: two start events, one slot
        # PlanExe's code parses the answer here; the slot is free, so the other call's request goes out meanwhile
        seen_while_parsing.append(second_request_started.wait(5.0))
        return str(answer.message.content)

    def second() -> str:
        time.sleep(0.01)
        return llm.complete("second").text  # type: ignore[attr-defined]

    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.llm import LLMCompletionEndEvent, LLMCompletionStartEvent

    held_when_the_host_logs: list[tuple[str, int]] = []
    host = _host_log(cap, (LLMCompletionStartEvent, LLMCompletionEndEvent), held_when_the_host_logs)
    get_dispatcher().add_event_handler(host)  # installed before the gate: its handlers go first
    gate_llm_requests(cap=cap)
    try:
        # two tasks (a fan-out under a cap of 1 runs one call at a time itself)
        fans = [FanOut(FanOutSettings(max_parallel=2), task=t, in_flight=cap, in_flight_per_request=True) for t in "AB"]
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda fan_and_fn: fan_and_fn[0].map([fan_and_fn[1]])[0], zip(fans, [first, second])))
        assert answers[0].startswith("answer to") and answers[1] == "answer to second"
        assert seen_while_parsing == [True] and peak[0] == 1 and cap.in_use_here() == 0
        # the host logs a request before its slot is taken and its answer after the slot is free again
        held_when_the_host_logs.clear()
        with request_priority(1.0):
            llm.complete("alone")  # type: ignore[attr-defined]
        assert held_when_the_host_logs == [("LLMCompletionStartEvent", 0), ("LLMCompletionEndEvent", 0)]
        # a request that raises (llama-index sends no end event then) gives its slot back when its attempt ends
        fan = FanOut(FanOutSettings(max_parallel=2, retry=RetryPolicy(attempts=1)), task="T", in_flight=cap, in_flight_per_request=True)
        with pytest.raises(Exception):
            fan.map([lambda: llm.complete("fail once").text])  # type: ignore[attr-defined]
        assert cap.in_use_here() == 0 and cap.try_take() == 0
    finally:
        ungate_llm_requests()
        get_dispatcher().event_handlers = [h for h in get_dispatcher().event_handlers if h is not host]


def _host_log(cap: SharedInFlightCap, events: tuple[type, ...], seen: list[tuple[str, int]], then: Callable[[], object] = lambda: None) -> Any:
    """A host's activity log (PlanExe's track_activity): notes each of ``events`` with the slots held here then."""
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler

    class HostLog(BaseEventHandler):
        @classmethod
        def class_name(cls) -> str:
            return "HostLog"

        def handle(self, event: object, **kwargs: object) -> None:
            if isinstance(event, events):
                seen.append((type(event).__name__, cap.in_use_here()))
                then()

    return HostLog()


def _user(text: str) -> object:
    from llama_index.core.llms import ChatMessage

    return ChatMessage(role="user", content=text)


def test_the_same_fanout_holds_its_slot_for_the_whole_attempt_without_the_gate(tmp_path: Path) -> None:
    cap = SharedInFlightCap(tmp_path / "cap", 1, poll=0.002)
    first_started, second_started = threading.Event(), threading.Event()
    seen_while_parsing: list[bool] = []

    def first() -> int:
        first_started.set()
        time.sleep(0.01)  # the "request"
        seen_while_parsing.append(second_started.wait(0.3))  # held: the second attempt cannot start meanwhile
        return 1

    def second() -> int:
        second_started.set()
        return 2

    fans = [FanOut(FanOutSettings(max_parallel=2), task=t, in_flight=cap) for t in "AB"]
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(fans[0].map, [first])
        assert first_started.wait(5.0)
        b = pool.submit(fans[1].map, [second])
        assert a.result() == [1] and b.result() == [2]
    assert seen_while_parsing == [False]


def test_budget_slots_go_to_the_highest_priority_waiting_whoever_came_first(tmp_path: Path) -> None:
    from planexe_concurrency.ratelimit import SharedSlotFile

    slots = SharedSlotFile(tmp_path / "budget", requests_per_minute=300, poll=0.002)  # one slot per 0.2 s
    assert slots.reserve() == 0.0  # the slot of now is taken: the next one is 0.2 s away
    order: list[str] = []
    lock = threading.Lock()

    def ask(name: str, priority: float, after: float) -> None:
        time.sleep(after)
        slots.wait_for_slot(priority)
        with lock:
            order.append(name)

    threads = [threading.Thread(target=ask, args=(f"side branch {n}", 1.0, 0.01 * n)) for n in range(1, 4)]
    threads.append(threading.Thread(target=ask, args=("critical chain", 9.0, 0.08)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order == ["critical chain", "side branch 1", "side branch 2", "side branch 3"]
    assert slots.reserve(within=0.0) is None  # the budget still holds: the next slot is ~0.2 s away


def test_a_slot_kept_by_a_request_that_raised_outside_the_executor_is_let_go_when_its_task_ends(tmp_path: Path) -> None:
    import pipeline_patches.pipeline  # noqa: F401  # registers the task event handlers
    from planexe_concurrency.ratelimit import gate_llm_requests, ungate_llm_requests

    cap = SharedInFlightCap(tmp_path / "cap", 1, poll=0.002)
    llm = _SlowRequestLLM.make(lambda prompt: None)

    class SomeTask(luigi.Task):
        pass

    gate_llm_requests(cap=cap)
    try:
        with pytest.raises(ConnectionError):
            llm.complete("fail: sent by the task's own code, not through our executor")  # type: ignore[attr-defined]
        assert cap.in_use_here() == 1  # llama-index sends no end event for a request that raised
        SomeTask().trigger_event(luigi.Event.FAILURE, SomeTask(), RuntimeError("the task failed"))
        assert cap.in_use_here() == 0
    finally:
        ungate_llm_requests()


def test_a_request_through_httpx_takes_its_slot_as_it_goes_out_once_its_class_is_known(
    sim_server_factory: Any, tmp_path: Path
) -> None:
    """The first request of an LLM class holds the slot from its start event; once that request is
    seen going out through httpx, later ones (in any process naming the cap) take it right before
    their bytes go out and give it back once the answer is read: building a request holds no slot."""
    pytest.importorskip("llama_index.llms.openai_like")
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMChatStartEvent
    from llama_index.llms.openai_like import OpenAILike

    from planexe_concurrency.ratelimit import gate_llm_requests, ungate_llm_requests

    server = sim_server_factory(latency=0.05)
    cap = SharedInFlightCap(tmp_path / "cap", 1, poll=0.002)
    seen: list[tuple[str, int]] = []
    started = threading.Event()
    def llm(port: int | None = None) -> OpenAILike:
        base = server.url if port is None else f"http://127.0.0.1:{port}"
        return OpenAILike(model="simulated", api_base=base + "/v1", api_key="x", is_chat_model=True, max_retries=0)

    gate_llm_requests(cap=cap)
    host = _host_log(cap, (LLMChatStartEvent, LLMChatEndEvent), seen, then=started.set)
    get_dispatcher().add_event_handler(host)  # after the gate's start handler: sees what it left held
    try:
        llm().chat([_user("first of its class")])
        assert seen == [("LLMChatStartEvent", 1), ("LLMChatEndEvent", 0)]  # held from the start event
        assert (tmp_path / "cap.httpx").read_text().split() == ["OpenAILike"]
        seen.clear()
        llm().chat([_user("second")])
        assert seen == [("LLMChatStartEvent", 0), ("LLMChatEndEvent", 0)]  # taken as it went out, back before the end event
        assert cap.in_use_here() == 0

        # held elsewhere: an announced request waits at the transport, and the server sees nothing meanwhile
        server.clear_log()
        slot = cap.take()
        started.clear()
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(lambda: llm().chat([_user("waits at the transport")]))
            assert started.wait(5.0)
            time.sleep(0.2)
            assert not waiting.done() and server.count() == 0
            cap.give_back(slot)
            waiting.result(5.0)
        assert server.count() == 1 and cap.in_use_here() == 0

        # a request whose bytes never reach a server gives the slot back at once (no end event comes)
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            dead_port = closed.getsockname()[1]
        with pytest.raises(Exception):
            llm(dead_port).chat([_user("nobody listens")])
        assert cap.in_use_here() == 0

        # a streamed answer keeps the slot until it has been read to its end
        stream = llm().stream_chat([_user("streamed")])
        first = next(stream)
        assert cap.in_use_here() == 1 and first is not None
        for _ in stream:
            pass
        assert cap.in_use_here() == 0
    finally:
        get_dispatcher().event_handlers = [h for h in get_dispatcher().event_handlers if h is not host]
        ungate_llm_requests()


def test_what_one_process_learns_about_a_class_every_process_of_the_run_reads(tmp_path: Path) -> None:
    from planexe_concurrency.ratelimit import _HttpxRoutes

    here, there = _HttpxRoutes(tmp_path / "cap.httpx"), _HttpxRoutes(tmp_path / "cap.httpx")
    assert not here.known("OpenAILike") and not there.known("OpenAILike")
    here.learn("OpenAILike")
    here.learn("OpenAILike")
    here.learn("")
    assert there.known("OpenAILike") and not there.known("Ollama")
    assert (tmp_path / "cap.httpx").read_text() == "OpenAILike\n"
