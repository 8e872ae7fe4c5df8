"""The speculative record and replay engine, on host code written here (no PlanExe, no double).

The host code is a plain sequential function that asks an LLM through ``executor.run(fn)``;
each test compares what it returns under speculation with what it returns run sequentially.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import pytest
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, LLMMetadata, MessageRole
from llama_index.core.llms.custom import CustomLLM
from pydantic import BaseModel, Field, PrivateAttr

from planexe_concurrency.config import FanOutSettings, RetryPolicy
from planexe_concurrency.fanout import FanOut, FanOutError, ItemFailedError
from planexe_concurrency.llm_executor import ConcurrentLLMExecutor
from planexe_concurrency.speculation import (
    AnswerStore,
    Request,
    Speculation,
    frozen,
    same_function,
)


class Text(BaseModel):
    text: str


class Names(BaseModel):
    names: list[str] = Field(min_length=2, max_length=4)


class Stopped(Exception):
    pass


class FakeLLM(CustomLLM):
    """A deterministic provider: the answer is a function of the last message; counts what it is asked."""

    _log: Any = PrivateAttr()
    _delay: float = PrivateAttr(default=0.05)
    _fail: Any = PrivateAttr(default=None)

    def __init__(self, log: "Calls", delay: float = 0.05, fail: Callable[[str], bool] | None = None) -> None:
        super().__init__()
        self._log = log
        self._delay = delay
        self._fail = fail

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="fake-model")

    def structured_predict(self, output_cls: Any, prompt: Any, llm_kwargs: Any = None, **prompt_args: Any) -> Any:
        question = prompt.format_messages(**prompt_args)[-1].content
        self._log.enter(question)
        try:
            time.sleep(self._delay)
            if self._fail is not None and self._fail(question):
                raise ValueError(f"provider refused {question!r}")
            if output_cls is Names:
                return Names(names=[f"{question}-n{i}" for i in range(3)])
            return output_cls(text=f"A({question})")
        finally:
            self._log.leave()

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=f"chat({messages[-1].content})"))

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=f"complete({prompt})")

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError


class Calls:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.questions: list[str] = []
        self.in_flight = 0
        self.peak = 0

    def enter(self, question: str) -> None:
        with self.lock:
            self.questions.append(question)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1


class Model:
    def __init__(self, llm: FakeLLM) -> None:
        self.llm = llm

    def create_llm(self) -> FakeLLM:
        return self.llm


def ask(executor: Any, question: str, cls: type[BaseModel] = Text) -> Any:
    def execute_function(llm: Any) -> Any:
        return llm.as_structured_llm(cls).chat([ChatMessage(role=MessageRole.USER, content=question)]).raw

    return executor.run(execute_function)


class Host:
    """Runs a body either sequentially (a plain executor) or under speculation (the session's ``call``)."""

    def __init__(self, tmp_path: Path, *, fail: Callable[[str], bool] | None = None, failure_mode: str = "fail_fast") -> None:
        self.calls = Calls()
        self.llm = FakeLLM(self.calls, fail=fail)
        self.tmp_path = tmp_path
        self.failure_mode = failure_mode

    def engine(self) -> ConcurrentLLMExecutor:
        settings = FanOutSettings(max_parallel=8, failure_mode=self.failure_mode, retry=RetryPolicy(attempts=1))  # type: ignore[arg-type]
        return ConcurrentLLMExecutor([Model(self.llm)], fanout=FanOut(settings, task="Host", stop_exceptions=(Stopped,)))

    def sequential(self, body: Callable[[Any], Any]) -> Any:
        class Plain:
            def run(inner, fn: Callable[[Any], Any]) -> Any:  # noqa: N805
                return self.engine().run(fn)

        return body(Plain())

    def speculative(
        self, body: Callable[[Any], Any], store: AnswerStore | None = None, record_ahead: bool = True,
        send: Callable[[Sequence[Callable[[Any], Any]], Sequence[str]], dict[int, tuple[bool, Any]]] | None = None,
    ) -> tuple[Any, Any]:
        spec = Speculation(task="Host", store=store or AnswerStore(None), record_ahead=record_ahead)
        box: dict[str, Any] = {}

        class Session:
            def run(inner, fn: Callable[[Any], Any]) -> Any:  # noqa: N805
                return spec.call(fn)

        def run_body() -> None:
            box["result"] = body(Session())

        def engine_send(fns: Sequence[Callable[[Any], Any]], labels: Sequence[str]) -> dict[int, tuple[bool, Any]]:
            outcomes: dict[int, tuple[bool, Any]] = {}

            def keep(i: int, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
                def job(llm: Any) -> Any:
                    outcomes[i] = (True, fn(llm))
                    return outcomes[i][1]

                return job

            try:
                self.engine().run_batch([keep(i, f) for i, f in enumerate(fns)], labels=list(labels))
            except ItemFailedError as exc:
                outcomes[exc.index] = (False, exc.failure.error)
            except FanOutError as exc:
                for f in exc.failures:
                    outcomes[f.index] = (False, f.error)
            return outcomes

        def live(fn: Callable[[Any], Any], label: str) -> Any:
            try:
                return self.engine().run(fn)
            except ItemFailedError as exc:
                raise exc.failure.error from None

        def record(_pass: int) -> None:
            body(Session())

        report = spec.run(run_body, record=record, send=send or engine_send, live=live, stop_exceptions=(Stopped,))
        return box["result"], report


def independent_loop(executor: Any) -> list[str]:
    return [ask(executor, f"q{i}").text for i in range(6)]


def chained_loop(executor: Any) -> list[str]:
    answers: list[str] = []
    for i in range(4):
        answers.append(ask(executor, f"q{i} after {' | '.join(answers)}").text)
    return answers


def finder_then_each(executor: Any) -> list[str]:
    names = ask(executor, "who", Names).names
    return [ask(executor, f"criticise {name}").text for name in names]


def test_an_independent_loop_goes_out_at_once_and_comes_back_in_order(tmp_path: Path) -> None:
    host = Host(tmp_path)
    expected = host.sequential(independent_loop)
    assert host.calls.peak == 1
    host2 = Host(tmp_path)
    result, report = host2.speculative(independent_loop)
    assert result == expected
    assert host2.calls.peak > 1
    assert sorted(host2.calls.questions) == sorted(host.calls.questions)  # each asked once
    # the real pass asks the first call itself; the record pass, beside it, sends the other five at once
    assert (report.rounds, report.sent_early, report.used, report.wasted, report.asked_live) == (1, 5, 5, 0, 1)


def test_a_chained_loop_is_asked_in_the_host_order_and_recording_stops(tmp_path: Path) -> None:
    host = Host(tmp_path)
    expected = host.sequential(chained_loop)
    host2 = Host(tmp_path)
    result, report = host2.speculative(chained_loop)
    assert result == expected
    assert host2.calls.questions == host.calls.questions
    assert host2.calls.peak == 1
    # the real pass is always a link ahead: nothing to send early; the record side sees the chain and stops
    assert (report.sent_early, report.asked_live, report.wasted) == (0, 4, 0)
    assert report.passes == 1 and report.stopped_early.startswith("a chain")  # seen from the first pass


def test_a_loop_over_an_earlier_answer_fans_out_once_that_answer_is_in(tmp_path: Path) -> None:
    host = Host(tmp_path)
    expected = host.sequential(finder_then_each)
    host2 = Host(tmp_path)
    result, report = host2.speculative(finder_then_each)
    assert result == expected
    # the finder and (usually) the first criticism by the real pass, the rest sent once the finder's answer is in
    assert report.rounds == 1 and report.used == report.sent_early >= 2 and report.wasted == 0
    assert report.used + report.asked_live == 4
    assert host2.calls.peak == 3


def test_control_flow_on_an_unmarked_value_costs_a_wasted_call_never_a_different_result(tmp_path: Path) -> None:
    class Count(BaseModel):
        n: int = Field(ge=0, le=9)

    def body(executor: Any) -> list[str]:
        def execute_function(llm: Any) -> Any:
            return llm.as_structured_llm(Count).chat([ChatMessage(role=MessageRole.USER, content="how many")]).raw

        n = executor.run(execute_function).n
        # the question holds no text of the answer, only a count the host derived from it
        return [ask(executor, f"item {i} of {'many' if n > 4 else 'few'}").text for i in range(2)]

    class CountingLLM(FakeLLM):
        def structured_predict(self, output_cls: Any, prompt: Any, llm_kwargs: Any = None, **prompt_args: Any) -> Any:
            if output_cls.__name__ == "Count":
                self._log.enter("how many")
                self._log.leave()
                return output_cls(n=7)
            return super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)

    host = Host(tmp_path)
    host.llm = CountingLLM(host.calls)
    expected = host.sequential(body)
    host2 = Host(tmp_path)
    host2.llm = CountingLLM(host2.calls)
    result, report = host2.speculative(body)
    assert result == expected
    assert report.used + report.asked_live == 3
    assert report.wasted == report.sent_early - report.used


def test_a_failed_call_is_raised_where_the_host_asks_it_and_the_host_decides(tmp_path: Path) -> None:
    def body(executor: Any) -> list[str]:
        out = []
        for i in range(4):
            try:
                out.append(ask(executor, f"lens {i}").text)
            except Exception as exc:  # the host skips a failed lens, as PlanExe's PremiseAttack does
                out.append(f"skipped: {type(exc).__name__}")
        return out

    refuse = lambda q: q == "lens 2"  # noqa: E731
    expected = Host(tmp_path, fail=refuse).sequential(
        lambda ex: [_unwrap(ask, ex, f"lens {i}") for i in range(4)]
    )
    host = Host(tmp_path, fail=refuse, failure_mode="continue_on_error")
    result, report = host.speculative(body)
    assert result[2].startswith("skipped: ")
    assert [r for i, r in enumerate(result) if i != 2] == [e for i, e in enumerate(expected) if i != 2]
    assert report.used == 3 and report.asked_live == 1 and report.wasted == 0
    assert host.calls.questions.count("lens 2") == 1  # not asked again by the real pass


def _unwrap(fn: Callable[..., Any], executor: Any, question: str) -> str:
    try:
        return fn(executor, question).text
    except Exception as exc:
        return f"skipped: {type(exc).__name__}"


def test_code_that_rejects_a_stand_in_runs_as_it_is(tmp_path: Path) -> None:
    def strict(executor: Any) -> list[str]:
        text = ask(executor, "exact").text
        if text != "A(exact)":
            raise ValueError("unexpected answer")
        return [text] + [ask(executor, f"more {i}").text for i in range(2)]

    host = Host(tmp_path)
    result, report = host.speculative(strict)
    assert result == Host(tmp_path).sequential(strict)
    assert report.fell_back.startswith("ValueError: unexpected answer")
    assert (report.passes, report.sent_early, report.asked_live) == (1, 0, 3)


def test_saved_answers_are_not_asked_again(tmp_path: Path) -> None:
    store_dir = tmp_path / "answers"
    first = Host(tmp_path)
    result, _ = first.speculative(finder_then_each, AnswerStore(store_dir))
    assert len(list(store_dir.glob("*.json"))) == 4
    again = Host(tmp_path)
    result2, report = again.speculative(finder_then_each, AnswerStore(store_dir))
    assert result2 == result
    assert again.calls.questions == []
    assert report.replayed_from_store == 4 and report.sent_early == 0


def test_a_truncated_answer_file_is_asked_again(tmp_path: Path) -> None:
    store_dir = tmp_path / "answers"
    Host(tmp_path).speculative(independent_loop, AnswerStore(store_dir))
    victim = sorted(store_dir.glob("*.json"))[0]
    victim.write_text(victim.read_text()[:20])
    again = Host(tmp_path)
    result, report = again.speculative(independent_loop, AnswerStore(store_dir))
    assert result == Host(tmp_path).sequential(independent_loop)
    assert len(again.calls.questions) == 1


def test_a_stop_passes_through_unwrapped(tmp_path: Path) -> None:
    class StoppingLLM(FakeLLM):
        def structured_predict(self, *args: Any, **kwargs: Any) -> Any:
            raise Stopped("user closed the tab")

    host = Host(tmp_path)
    host.llm = StoppingLLM(host.calls)
    with pytest.raises(Stopped):
        host.speculative(independent_loop)


def test_stand_ins_carry_markers_in_every_free_string_and_keep_prompt_ids() -> None:
    class Item(BaseModel):
        id: str
        title: str
        kind: Literal["a", "b"]

    class Items(BaseModel):
        items: list[Item]

    spec = Speculation(task="T", store=AnswerStore(None))
    request = Request.of("structured", Items, [ChatMessage(role=MessageRole.USER, content="ids: 3f2c9a1e-0000-4000-8000-000000000001")])
    value = spec.stand_in(request, 5, 1)
    for item in value.items:
        assert spec.markers_in(item.title) == ["5"]
        assert item.kind in ("a", "b")
    assert spec.markers_in(value.model_dump_json()) and all(m == "5" for m in spec.markers_in(value.model_dump_json()))


def test_frozen_keeps_the_loop_value_and_same_function_compares_captures() -> None:
    fns = []
    for i in range(3):
        def fn(llm: Any) -> int:
            return i + llm

        fns.append(frozen(fn))
    assert [f(10) for f in fns] == [10, 11, 12]
    messages = ["q0"]

    def reads(llm: Any) -> list[str]:
        return list(messages)

    at_the_call = frozen(reads)
    messages.append("a stand-in answer")  # what a record pass appends after the call
    assert at_the_call(None) == ["q0"] and reads(None) == ["q0", "a stand-in answer"]
    assert same_function(fns[0], frozen(fns[0]))
    assert not same_function(fns[0], fns[1])


def test_attempts_carry_the_hosts_instrumentation_tags_where_the_host_tags_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from llama_index.core.instrumentation.dispatcher import instrument_tags

    from pipeline_patches.base import attempt_tags

    assert attempt_tags(SimpleNamespace(llm_executor=SimpleNamespace()), "T") is None  # an older PlanExe tags nothing
    context = attempt_tags(SimpleNamespace(llm_executor=SimpleNamespace(instrument_tags=instrument_tags)), "T")
    assert context is not None
    seen: list[Any] = []
    host = Host(tmp_path)
    settings = FanOutSettings(max_parallel=2, retry=RetryPolicy(attempts=1))
    executor = ConcurrentLLMExecutor([Model(host.llm)], fanout=FanOut(settings, task="T"), attempt_context=context)

    def fn(llm: Any) -> None:
        from llama_index.core.instrumentation.dispatcher import active_instrument_tags

        seen.append(dict(active_instrument_tags.get()))

    with caplog.at_level(logging.INFO, logger="planexe_concurrency"):
        executor.run_batch([fn, fn])
    assert len(seen) == 2 and all(set(tags) == {"llm_executor_uuid"} for tags in seen)
    assert seen[0] != seen[1]
    # the log names each attempt's id, as PlanExe's own executor does, to read beside the activity log
    for tags in seen:
        assert any(f"task=T llm_executor_uuid={tags['llm_executor_uuid']} attempt answered" in r.getMessage() for r in caplog.records)

    def fails(llm: Any) -> None:
        from llama_index.core.instrumentation.dispatcher import active_instrument_tags

        seen.append(dict(active_instrument_tags.get()))
        raise ValueError("no answer")

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="planexe_concurrency"), pytest.raises(Exception):
        executor.run_batch([fails])
    failed = seen[-1]["llm_executor_uuid"]
    assert any(f"task=T llm_executor_uuid={failed} attempt failed after" in r.getMessage() for r in caplog.records)


def test_a_record_pass_raises_no_instrumentation_event_and_logs_nothing_of_the_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers.base import BaseEventHandler

    events: list[str] = []

    class Collect(BaseEventHandler):
        def handle(self, event: Any, **kwargs: Any) -> None:
            events.append(type(event).__name__)

    handler = Collect()
    get_dispatcher().add_event_handler(handler)
    host_log = logging.getLogger("a_host_module")

    def body(executor: Any) -> list[str]:
        answers = independent_loop(executor)
        host_log.warning("host says: %s", answers[0])
        return answers

    try:
        with caplog.at_level("WARNING"):
            Host(tmp_path).speculative(body)
    finally:
        get_dispatcher().event_handlers.remove(handler)
    said = [r.getMessage() for r in caplog.records if r.name == "a_host_module"]
    assert said == ["host says: A(q0)"]  # the replay's line only, with the real answer
    assert events and "StandIn" not in " ".join(events)
    assert events.count("LLMChatStartEvent") == 6  # the six real calls, none of the record pass


def test_a_chat_that_grows_one_message_list_is_sent_as_it_was_at_each_call(tmp_path: Path) -> None:
    """PlanExe's ReviewPlan and SelfAudit keep one list and append each answer and the next question to it."""

    def body(executor: Any) -> list[str]:
        messages = [ChatMessage(role=MessageRole.SYSTEM, content="review")]
        out = []
        for i in range(4):
            messages.append(ChatMessage(role=MessageRole.USER, content=f"question {i}"))

            def execute_function(llm: Any) -> Any:
                return llm.as_structured_llm(Text).chat(messages).raw  # the list itself, not a copy

            answer = executor.run(execute_function).text
            messages.append(ChatMessage(role=MessageRole.ASSISTANT, content=answer))
            out.append(answer)
        return out

    sequential_host = Host(tmp_path)
    expected = sequential_host.sequential(body)
    host = Host(tmp_path)
    result, report = host.speculative(body)
    assert result == expected
    assert host.calls.questions == sequential_host.calls.questions
    assert (report.wasted, report.refused) == (0, 0) and report.used + report.asked_live == 4


def test_the_wrapped_llm_is_serialised_as_the_llm_it_wraps() -> None:
    """Hosts record the model of every LLM event (PlanExe's track_activity.jsonl): the wrapper must not show."""
    from collections import Counter

    from llama_index.core.llms.structured_llm import StructuredLLM

    from planexe_concurrency.simllm import SimulatedLLM
    from planexe_concurrency.speculation import AnsweringLLM

    real = SimulatedLLM(latency=0.0)
    wrapped = AnsweringLLM(real, Speculation(task="T", store=AnswerStore(None)), Counter())
    assert StructuredLLM(llm=wrapped, output_cls=Text).to_dict() == StructuredLLM(llm=real, output_cls=Text).to_dict()
    assert wrapped.class_name() == real.class_name() and wrapped.metadata == real.metadata


def test_plain_chat_and_completion_requests_are_recorded_sent_saved_and_replayed(tmp_path: Path) -> None:
    """Not only structured answers: PlanExe also calls ``llm.chat`` and ``llm.complete``."""

    def body(executor: Any) -> list[str]:
        def chat(llm: Any, q: str = "") -> str:
            return llm.chat([ChatMessage(role=MessageRole.USER, content=q)]).message.content

        def complete(llm: Any, q: str = "") -> str:
            return llm.complete(q).text

        out = []
        for i in range(3):
            out.append(executor.run(lambda llm, i=i: chat(llm, f"chat {i}")))
            out.append(executor.run(lambda llm, i=i: complete(llm, f"complete {i}")))
        return out

    store = tmp_path / "answers"
    expected = Host(tmp_path).sequential(body)
    result, report = Host(tmp_path).speculative(body, AnswerStore(store))
    assert result == expected and (report.asked_live, report.overlapped, report.wasted) == (1, 5, 0)
    again, report2 = Host(tmp_path).speculative(body, AnswerStore(store))  # from disk, both kinds
    assert again == expected and report2.replayed_from_store == 6


def test_an_answer_saved_for_another_request_is_not_used(tmp_path: Path) -> None:
    from planexe_concurrency.speculation import Answer

    one = Request.of("chat", None, [ChatMessage(role=MessageRole.USER, content="one")])
    two = Request.of("chat", None, [ChatMessage(role=MessageRole.USER, content="two")])
    answer = Answer(ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content="1")), LLMMetadata(), "X")
    with pytest.raises(ValueError, match="another request"):
        Answer.from_json(answer.to_json(one), two)
    store = AnswerStore(tmp_path)
    store.put(one, 0, answer)
    (tmp_path / f"{AnswerStore.key(two, 0)}.json").write_text(answer.to_json(one))  # a file under the wrong name
    assert AnswerStore(tmp_path).get(two, 0) is None and AnswerStore(tmp_path).get(one, 0) is not None


def test_a_request_that_would_carry_a_stand_in_is_refused_not_sent(tmp_path: Path) -> None:
    """A closure that reads a growing list through an object (not copied at the call) would send stand-in text."""

    class Conversation:
        def __init__(self) -> None:
            self.messages: list[ChatMessage] = []

    def body(executor: Any) -> list[str]:
        talk = Conversation()
        out = [ask(executor, "intro").text]  # the real pass's first call: the loop's first is then recorded ahead
        for i in range(3):
            talk.messages.append(ChatMessage(role=MessageRole.USER, content=f"q{i}"))

            def execute_function(llm: Any) -> Any:
                return llm.as_structured_llm(Text).chat(list(talk.messages)).raw

            answer = executor.run(execute_function).text
            talk.messages.append(ChatMessage(role=MessageRole.ASSISTANT, content=answer))
            out.append(answer)
        return out

    sequential = Host(tmp_path)
    expected = sequential.sequential(body)
    host = Host(tmp_path)
    result, report = host.speculative(body)
    assert result == expected
    assert report.refused >= 1 and report.wasted == 0
    assert not any("sx" in q and "stand-in" in q for q in host.calls.questions)
    assert sorted(host.calls.questions) == sorted(sequential.calls.questions)  # nothing extra reached the provider


def test_same_function_and_frozen_on_other_callables() -> None:
    class Box:
        def __init__(self, v: int) -> None:
            self.v = v

        def method(self, llm: Any) -> int:
            return self.v

    a, b = Box(1), Box(1)
    assert frozen(a.method) == a.method  # not a plain function: kept as it is
    assert same_function(a.method, b.method)  # same code, equal state
    assert not same_function(a.method, Box(2).method)
    assert not same_function(len, abs)
    from pydantic import create_model

    M1 = create_model("M", x=(int, ...))
    M2 = create_model("M", x=(int, ...))
    M3 = create_model("M", x=(str, ...))

    def f1(llm: Any) -> Any:
        return M1

    def f2(llm: Any) -> Any:
        return M2

    assert _same_types(M1, M2) and not _same_types(M1, M3)


def _same_types(a: Any, b: Any) -> bool:
    from planexe_concurrency.speculation import _same

    return _same(a, b)


def test_saved_answers_only_refuses_everything() -> None:
    from planexe_concurrency.speculation import _NotSaved, _SavedAnswersOnly

    llm = _SavedAnswersOnly()
    for ask in (lambda: llm.chat([]), lambda: llm.complete("x"), lambda: llm.stream_complete("x"), lambda: llm.structured_predict(Text, None)):
        with pytest.raises(_NotSaved):
            ask()


class TaskLike:
    """Equal to another by name only, as a Luigi task equals its copy (same ``task_id``) whatever else it holds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = ""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskLike) and other.name == self.name

    __hash__ = object.__hash__


def test_an_early_call_whose_requests_differ_now_is_asked_again_and_counted_wasted(tmp_path: Path) -> None:
    """Same first request, an equal function, but it reads state set from a real answer: the check catches it."""

    def body(executor: Any) -> list[str]:
        task = TaskLike("t")
        intro = ask(executor, "intro").text
        task.mode = "long" if len(intro) > 20 else "short"  # a stand-in is long, the real answer short

        def item(i: int) -> Callable[[Any], Any]:
            def execute_function(llm: Any) -> Any:
                first = llm.as_structured_llm(Text).chat([ChatMessage(role=MessageRole.USER, content=f"q{i}")]).raw
                follow = ChatMessage(role=MessageRole.USER, content=f"follow {task.mode} {i}")
                return first.text + llm.as_structured_llm(Text).chat([follow]).raw.text

            return execute_function

        return [executor.run(item(i)) for i in range(3)]

    expected = Host(tmp_path).sequential(body)
    host = Host(tmp_path)
    result, report = host.speculative(body)
    assert result == expected
    # the three items went out early with the stand-in's mode; each is asked again with the real one
    assert report.sent_early == 3 and report.wasted == 3 and report.used == 0 and report.asked_live == 4
    assert "follow short 1" in host.calls.questions and "follow long 1" in host.calls.questions


def test_a_record_pass_that_fails_later_stops_recording_and_the_real_pass_goes_on(tmp_path: Path) -> None:
    def body(executor: Any) -> list[str]:
        names = ask(executor, "who", Names).names
        first = ask(executor, f"criticise {names[0]}").text
        if "sx" in first and "sx" not in names[0]:  # the second record pass: a real finder, a stand-in criticism
            raise ValueError("not this time")
        return [first] + [ask(executor, f"criticise {name}").text for name in names[1:]]

    expected = Host(tmp_path).sequential(body)
    result, report = Host(tmp_path).speculative(body)
    assert result == expected
    assert report.stopped_early.startswith("record pass 2 failed: ValueError: not this time")
    assert report.used + report.asked_live == 4 and report.wasted == 0


def test_an_engine_failure_in_an_early_batch_leaves_those_calls_to_the_real_pass(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_send(fns: Sequence[Callable[[Any], Any]], labels: Sequence[str]) -> dict[int, tuple[bool, Any]]:
        raise RuntimeError("the engine broke")

    with caplog.at_level("WARNING", logger="planexe_concurrency"):
        result, report = Host(tmp_path).speculative(independent_loop, send=broken_send)
    assert result == Host(tmp_path).sequential(independent_loop)
    assert report.asked_live == 6 and report.used == 0 and "RuntimeError: the engine broke" in report.stopped_early
    assert any("speculation stopped" in r.getMessage() for r in caplog.records)


def test_a_call_that_asks_nothing_runs_as_it_is(tmp_path: Path) -> None:
    def body(executor: Any) -> list[Any]:
        return [executor.run(lambda llm: 42), ask(executor, "q").text]

    expected = Host(tmp_path).sequential(body)
    result, report = Host(tmp_path).speculative(body)
    assert result == expected == [42, "A(q)"]
    assert report.calls == 2 and report.used + report.asked_live == 2 and report.wasted == 0


def test_a_stop_in_an_early_batch_is_raised_where_the_real_pass_asks(tmp_path: Path) -> None:
    class StopOnThree(FakeLLM):
        def structured_predict(self, output_cls: Any, prompt: Any, llm_kwargs: Any = None, **prompt_args: Any) -> Any:
            if prompt.format_messages(**prompt_args)[-1].content == "q3":
                raise Stopped("user closed the tab")
            return super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)

    host = Host(tmp_path)
    host.llm = StopOnThree(host.calls)
    with pytest.raises(Stopped):
        host.speculative(independent_loop)
    assert "q0" in host.calls.questions  # asked by the real pass; q1-q5 went out early, q3 met the stop


def test_executor_run_outside_a_speculative_run_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="outside a speculative run"):
        Speculation(task="T", store=AnswerStore(None)).call(lambda llm: None)


def test_without_recording_ahead_every_call_is_asked_in_order(tmp_path: Path) -> None:
    host = Host(tmp_path)
    expected = Host(tmp_path).sequential(independent_loop)
    result, report = host.speculative(independent_loop, record_ahead=False)
    assert result == expected and host.calls.peak == 1
    assert (report.passes, report.sent_early, report.asked_live) == (0, 0, 6)


def test_an_early_call_whose_check_fails_is_asked_again(tmp_path: Path) -> None:
    """The real pass checks an early answer by running the call against saved answers; if that raises, it asks anew."""

    def body(executor: Any) -> list[str]:
        def item(i: int) -> Callable[[Any], Any]:
            def execute_function(llm: Any) -> Any:
                if llm.metadata.model_name == "saved-answers":  # code that cannot run against saved answers
                    raise ValueError("not without a model")
                return llm.as_structured_llm(Text).chat([ChatMessage(role=MessageRole.USER, content=f"q{i}")]).raw.text

            return execute_function

        return [executor.run(item(i)) for i in range(3)]

    expected = Host(tmp_path).sequential(body)
    host = Host(tmp_path)
    result, report = host.speculative(body)
    assert result == expected
    assert report.sent_early == 2 and report.used == 0 and report.wasted == 2 and report.asked_live == 3
