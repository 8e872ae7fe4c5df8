"""Speculative fan-out: someone else's sequential LLM code, its independent calls sent at once.

The host's code (a PlanExe task, say) asks an LLM through ``executor.run(fn)`` calls, one
after another, where ``fn(llm)`` sends one or more requests. Without reading that code,
:class:`Speculation` runs it twice over at the same time:

1. **The real pass** runs the host's code as it is, from the start, writing the host's
   files. At each call it looks at the call's first request: a call already sent early
   gets back what that early ``fn`` returned (or raised), if its ``fn`` is the same
   (code and captured values) and every request it makes now has its answer saved; any
   other call is asked on the spot through ``live``, in the host's order.
2. **Record passes** run the same code on a thread beside it, where the host's files go
   to scratch. Every ``fn`` gets a :class:`PassLLM`: a request answered earlier gets its
   real answer, any other request an instant *stand-in* (schema-valid; every string
   carries a marker naming the call that asked).
3. **Early sends.** A recorded call whose unanswered requests hold no marker of another
   call's stand-in cannot depend on any unanswered text: unless the real pass already
   asked it, it is sent with the others of its pass through the host's ``send`` (the
   engine: concurrency, budget, retries, fallback). The real work is the host's own
   ``fn`` run with the real LLM (wrapped in :class:`AnsweringLLM`, which saves every
   answer at once), so what the host records about a call (duration, model) stays true.
4. **Rounds.** Once answers come in, the code is recorded again; a loop over an earlier
   answer fans out once that answer is in. When passes in a row find nothing new (a
   chain: the real pass is ahead), recording stops.

A task with one call costs what the host's own code costs: the real pass asks it while
the record pass runs beside it. Correctness never rests on the markers: the real pass
takes an early answer only for the same request (byte for byte, same occurrence), so a
guess that turns out wrong costs a *wasted* call, never a different output. Wasted calls
are counted in :class:`SpeculationReport`.

>>> spec = Speculation(task="Demo", store=AnswerStore(None))
>>> report = spec.run(body, record=body_in_scratch, send=send_many, live=ask_now)
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
import json
import logging
import re
import secrets
import threading
import types
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.instrumentation.dispatcher import Dispatcher
from pydantic import PrivateAttr, ValidationError, model_serializer

from .resume import atomic_write_text
from .simllm.generator import ids_in, json_for_schema

logger = logging.getLogger("planexe_concurrency")

__all__ = [
    "AnswerStore",
    "AnsweringLLM",
    "PassLLM",
    "Request",
    "Speculation",
    "SpeculationReport",
    "frozen",
    "restart_pass",
    "same_function",
]


# -- requests and answers ----------------------------------------------------------------------
def _content(message: ChatMessage) -> str:
    content = message.content
    return content if isinstance(content, str) else json.dumps(content, default=str)


@dataclass(frozen=True)
class Request:
    """One request as the provider would see it: kind, answer type and messages."""

    kind: str  # "structured" | "chat" | "complete"
    output_cls: type | None
    messages: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, kind: str, output_cls: type | None, messages: Sequence[ChatMessage]) -> "Request":
        return cls(kind, output_cls, tuple((m.role.value, _content(m)) for m in messages))

    @property
    def text(self) -> str:
        name = f"{self.output_cls.__module__}.{self.output_cls.__qualname__}" if self.output_cls else None
        return json.dumps([self.kind, name, self.messages], ensure_ascii=False)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def all_text(self) -> str:
        return "\n".join(content for _, content in self.messages)


@dataclass
class Answer:
    """A real answer: what the LLM method returned, and which model gave it."""

    value: Any  # pydantic object (structured), ChatResponse (chat) or CompletionResponse (complete)
    metadata: LLMMetadata
    class_name: str

    def value_for(self, request: Request) -> Any:
        """The value, as an instance of the class this request asked for (classes may be made per pass)."""
        cls = request.output_cls
        if request.kind == "structured" and cls is not None and type(self.value) is not cls:
            return cls.model_validate(self.value.model_dump(mode="json"))  # type: ignore[attr-defined]
        return self.value

    def to_json(self, request: Request) -> str:
        if request.kind == "structured":
            value: Any = self.value.model_dump(mode="json")
        elif request.kind == "chat":
            value = {"role": self.value.message.role.value, "content": self.value.message.content}
        else:
            value = {"text": self.value.text}
        return json.dumps(
            {"request": request.text, "value": value, "metadata": self.metadata.model_dump(mode="json"), "class_name": self.class_name},
            ensure_ascii=False, indent=1,
        )

    @classmethod
    def from_json(cls, text: str, request: Request) -> "Answer":
        data = json.loads(text)
        if data.get("request") != request.text:
            raise ValueError("saved for another request")
        raw = data["value"]
        if request.kind == "structured":
            assert request.output_cls is not None
            value: Any = request.output_cls.model_validate(raw)  # type: ignore[attr-defined]
        elif request.kind == "chat":
            value = ChatResponse(message=ChatMessage(role=MessageRole(raw["role"]), content=raw["content"]))
        else:
            value = CompletionResponse(text=raw["text"])
        return cls(value, LLMMetadata.model_validate(data["metadata"]), data["class_name"])


class AnswerStore:
    """Real answers by request content and occurrence: in memory, and one atomic file each in ``folder``.

    Saved the moment an answer arrives, so a crashed or stopped run asks nothing twice.
    ``folder=None`` keeps them in memory only.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._answers: dict[str, Answer] = {}
        self._lock = threading.Lock()
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(request: Request, occurrence: int) -> str:
        return f"{request.digest[:40]}-{occurrence}"

    def get(self, request: Request, occurrence: int) -> Answer | None:
        key = self.key(request, occurrence)
        with self._lock:
            if key in self._answers:
                return self._answers[key]
        if self.folder is None:
            return None
        path = self.folder / f"{key}.json"
        try:
            answer = Answer.from_json(path.read_text(encoding="utf-8"), request)
        except FileNotFoundError:
            return None
        except Exception as exc:  # truncated, or another schema: ask again
            logger.warning("resume: %s cannot be used (%s); the request will be asked again", path, exc)
            return None
        with self._lock:
            self._answers[key] = answer
        return answer

    def put(self, request: Request, occurrence: int, answer: Answer) -> None:
        key = self.key(request, occurrence)
        if self.folder is not None:
            atomic_write_text(self.folder / f"{key}.json", answer.to_json(request))
        with self._lock:
            self._answers[key] = answer


# -- record passes are silent -------------------------------------------------------------------
_RECORDING: contextvars.ContextVar[bool] = contextvars.ContextVar("planexe_concurrency_recording", default=False)


class _NotWhileRecording(logging.Filter):
    """Drops the host's log records made during a record pass (they speak of stand-in answers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _RECORDING.get()


_QUIET = _NotWhileRecording()
_filtered_loggers = -1
_events_patched = False
_patch_lock = threading.Lock()


def _silence_instrumentation() -> None:
    """llama-index's dispatcher drops events raised in a record pass (hosts log them, e.g. to a JSONL file)."""
    global _events_patched
    with _patch_lock:
        if _events_patched:
            return
        original = Dispatcher.event

        def event(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _RECORDING.get():
                return None
            return original(self, *args, **kwargs)

        Dispatcher.event = event  # type: ignore[method-assign]
        _events_patched = True


@contextlib.contextmanager
def recording() -> Iterator[None]:
    """While a record pass runs in this thread: no instrumentation events, no log records of the host."""
    _silence_instrumentation()
    global _filtered_loggers
    loggers = logging.Logger.manager.loggerDict
    if len(loggers) != _filtered_loggers:  # new loggers (and so maybe new handlers) since the last pass
        handlers = set(logging.getLogger().handlers)
        for logger_ in list(loggers.values()):
            handlers.update(getattr(logger_, "handlers", ()))
        for handler in handlers:
            handler.addFilter(_QUIET)
        _filtered_loggers = len(loggers)
    else:
        for handler in logging.getLogger().handlers:  # cheap: handlers added to the root since (pytest, PlanExe)
            handler.addFilter(_QUIET)
    token = _RECORDING.set(True)
    try:
        yield
    finally:
        _RECORDING.reset(token)


# -- what a call is ----------------------------------------------------------------------------
def _snapshot(value: Any) -> Any:
    """A container as it is now (its items shared, not copied), or the value itself.

    Shallow on purpose: what grows between a call and its early run is the list itself (a
    chat's messages); a deep copy of large captured structures cost tens of milliseconds per
    call. A change deeper down only makes the early answer fail the real pass's check.
    """
    if isinstance(value, (list, dict, set)):
        return copy.copy(value)
    return value


def frozen(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its closure bound to the values it has now.

    A loop's closure sees the loop's later values by the time it runs, and a message list
    it captured may have grown (PlanExe's chats append each answer and the next question
    to one list): lists, dicts and sets are copied as they are at the call.
    """
    if not isinstance(fn, types.FunctionType) or not fn.__closure__:
        return fn
    cells = []
    for cell in fn.__closure__:
        try:
            cells.append(types.CellType(_snapshot(cell.cell_contents)))
        except ValueError:  # an empty cell stays as it is
            cells.append(cell)
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, tuple(cells))
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__annotations__ = fn.__annotations__
    return copy


def _captured(fn: Callable[..., Any]) -> tuple[Any, ...]:
    if isinstance(fn, types.FunctionType):
        cells = []
        for cell in fn.__closure__ or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:
                cells.append(None)
        return (fn.__code__, fn.__defaults__, tuple(cells))
    if isinstance(fn, types.MethodType):
        return (fn.__func__, fn.__self__)
    return (fn,)


def _same(a: Any, b: Any, depth: int = 0) -> bool:
    if a is b:
        return True
    if type(a) is not type(b) or depth > 4:
        return False
    if isinstance(a, type):  # a class made afresh in each pass (e.g. a pydantic model built per call)
        schema = getattr(a, "model_json_schema", None)
        return (
            a.__module__ == b.__module__ and a.__qualname__ == b.__qualname__
            and schema is not None and schema() == b.model_json_schema()  # type: ignore[attr-defined]
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, depth + 1) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], depth + 1) for k in a)
    if type(a).__eq__ is not object.__eq__:
        try:
            return bool(a == b)
        except Exception:
            return False
    state_a, state_b = getattr(a, "__dict__", None), getattr(b, "__dict__", None)
    return state_a is not None and state_b is not None and _same(state_a, state_b, depth + 1)


def same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """Same code and equal captured values: given the same answers, the two compute the same."""
    return _same(_captured(a), _captured(b))


@dataclass
class PassCall:
    """One ``executor.run(fn)`` of one record pass."""

    index: int
    fn: Callable[[Any], Any]
    counts_before: Counter[str]  # request digests asked by earlier calls of the pass
    unknown: list[Request] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)  # every request it made, in order
    waits_on: set[int] = field(default_factory=set)  # the calls whose stand-in text its requests hold
    first_key: str | None = None  # its first request and occurrence: what the call is, across passes

    @property
    def ready(self) -> bool:
        return bool(self.unknown) and not self.waits_on


class _Pass:
    """One run of the host's code: a record pass (stand-ins) or the real pass."""

    def __init__(self, number: int, real: bool) -> None:
        self.number = number
        self.real = real
        self.calls: list[PassCall] = []
        self.counts: Counter[str] = Counter()  # requests asked so far, by digest: each one's occurrence


_PASS: contextvars.ContextVar[_Pass | None] = contextvars.ContextVar("planexe_concurrency_pass", default=None)


def restart_pass() -> None:
    """Forget what the record pass running here has recorded: its host runs it again from the start.

    For a host whose pass failed for a reason of its own making (its scratch folder lacked a
    file, say) and was fixed: the second run's calls get the first run's places and markers.
    Outside a record pass it does nothing.
    """
    pass_ = _PASS.get()
    if pass_ is not None and not pass_.real:
        pass_.calls.clear()
        pass_.counts.clear()


class _Slot:
    """One call, by its first request and occurrence: sent early by the record side, or asked by the real pass."""

    def __init__(self, fn: Callable[[Any], Any] | None, early: bool) -> None:
        self.fn = fn
        self.early = early
        self.sent = False  # an early call that went out (not refused, not cut short by a stop)
        self.ok = False
        self.value: Any = None  # fn's result, or the exception it ended with
        self.used = False
        self.done = threading.Event()


@dataclass
class SpeculationReport:
    """What one task's speculation did; ``wasted`` calls were sent early and never used."""

    task: str
    calls: int = 0  # executor.run calls of the real pass: the host's own count
    passes: int = 0  # record passes
    rounds: int = 0  # batches of early calls
    sent_early: int = 0
    overlapped: int = 0  # sent early in a batch with at least one other call
    used: int = 0
    wasted: int = 0
    replayed_from_store: int = 0
    asked_live: int = 0  # asked by the real pass itself, in the host's order
    chained: int = 0  # of those, asked after the record side found a chain (see Speculation.CHAIN_ROUNDS)
    stopped_early: str = ""  # why the record side stopped before running out of calls
    refused: int = 0  # early calls that would have sent a stand-in's text: not sent (a bug if not 0)
    fell_back: str = ""  # why nothing was recorded (the first record pass failed): every call asked in order

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class StandInInRequest(Exception):
    """A call about to send a stand-in answer's text to the provider: refused, the real pass asks it."""


class _Cancelled(BaseException):
    """The real pass is over: a record pass still running stops at its next call."""


class _Probed(BaseException):
    """A call's first request, caught before it reaches any LLM (BaseException: hosts' ``except Exception`` let it by)."""

    def __init__(self, request: Request) -> None:
        super().__init__()
        self.request = request


# -- the LLMs the host's fn is handed --------------------------------------------------------------
class PassLLM(CustomLLM):
    """A record pass's LLM: real answers where known, stand-ins (with markers) for the rest."""

    _spec: Any = PrivateAttr()
    _pass: Any = PrivateAttr()
    _call: Any = PrivateAttr()
    _current: Any = PrivateAttr(default=None)

    def __init__(self, spec: "Speculation", pass_: _Pass, call: PassCall) -> None:
        super().__init__()
        self._spec = spec
        self._pass = pass_
        self._call = call

    @property
    def metadata(self) -> LLMMetadata:
        return self._current.metadata if self._current is not None else LLMMetadata(model_name="planexe-concurrency-stand-in")

    def class_name(self) -> str:  # type: ignore[override]
        return self._current.class_name if self._current is not None else "StandInLLM"

    def _answer(self, request: Request) -> Any:
        call, counts = self._call, self._pass.counts
        occurrence = counts[request.digest]
        counts[request.digest] += 1
        call.digests.append(request.digest)
        if call.first_key is None:
            call.first_key = AnswerStore.key(request, occurrence)
            slot = self._spec.slot(call.first_key)
            if slot is not None and slot.done.is_set() and slot.sent and not slot.ok and same_function(slot.fn, call.fn):
                raise slot.value  # as the real pass will meet it, so the host's handling decides
        known = self._spec.store.get(request, occurrence)
        if known is not None:
            self._current = known
            return known.value_for(request)
        self._current = None
        call.unknown.append(request)
        call.waits_on.update(int(m) for m in self._spec.markers_in(request.all_text()) if int(m) != call.index)
        return self._spec.stand_in(request, call.index, len(call.unknown))

    def structured_predict(self, output_cls: Any, prompt: Any, llm_kwargs: Any = None, **prompt_args: Any) -> Any:
        return self._answer(Request.of("structured", output_cls, prompt.format_messages(**prompt_args)))

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._answer(Request.of("chat", None, messages))

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._answer(Request.of("complete", None, [ChatMessage(role=MessageRole.USER, content=prompt)]))

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        raise NotImplementedError("planexe-concurrency: streaming is not recorded")


class _ProbeLLM(CustomLLM):
    """Raises a call's first request instead of answering it: what the call is, before choosing how to answer it."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="planexe-concurrency-probe")

    def structured_predict(self, output_cls: Any, prompt: Any, llm_kwargs: Any = None, **prompt_args: Any) -> Any:
        raise _Probed(Request.of("structured", output_cls, prompt.format_messages(**prompt_args)))

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        raise _Probed(Request.of("chat", None, messages))

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise _Probed(Request.of("complete", None, [ChatMessage(role=MessageRole.USER, content=prompt)]))

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        raise NotImplementedError("planexe-concurrency: streaming is not recorded")


class AnsweringLLM(CustomLLM):
    """The real LLM for one call, looking like it; answers saved at once, known ones not asked again.

    ``counts`` (request digests asked before, updated as this call asks) gives each request
    its occurrence, so an answer is saved and found under the same key in every pass.
    """

    _real: Any = PrivateAttr()
    _spec: Any = PrivateAttr()
    _counts: Any = PrivateAttr()
    _current: Any = PrivateAttr(default=None)
    _call_key: Any = PrivateAttr(default=None)

    def __init__(self, real: Any, spec: "Speculation", counts: Counter[str], *, call_key: str | None = None) -> None:
        super().__init__()
        self._real = real
        self._spec = spec
        self._counts = counts
        self._call_key = call_key  # an early call's identity (None in the real pass)

    @model_serializer(mode="plain")
    def _as_the_real_llm(self, info: Any) -> Any:
        """Serialised (in instrumentation events, say) as the LLM it wraps, so what hosts record stays the same."""
        return type(self._real).__pydantic_serializer__.to_python(self._real, mode=info.mode)

    @property
    def metadata(self) -> LLMMetadata:
        return self._current.metadata if self._current is not None else self._real.metadata

    def class_name(self) -> str:  # type: ignore[override]
        return self._current.class_name if self._current is not None else self._real.class_name()

    def _answer(self, request: Request, ask: Callable[[], Any]) -> Any:
        occurrence = self._counts[request.digest]
        self._counts[request.digest] += 1
        known = self._spec.store.get(request, occurrence)
        if known is not None:
            self._current = known
            return known.value_for(request)
        self._current = None
        if self._call_key is not None and self._spec.markers_in(request.all_text()):
            self._spec.refuse(self._call_key)
            raise StandInInRequest(f"{self._spec.task}: a request of an early call holds a stand-in answer; not sent")
        value = ask()
        self._spec.store.put(request, occurrence, Answer(value, self._real.metadata, self._real.class_name()))
        return value

    def structured_predict(self, output_cls: Any, prompt: Any, llm_kwargs: Any = None, **prompt_args: Any) -> Any:
        request = Request.of("structured", output_cls, prompt.format_messages(**prompt_args))
        return self._answer(
            request, lambda: self._real.structured_predict(output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args)
        )

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._answer(Request.of("chat", None, messages), lambda: self._real.chat(messages, **kwargs))

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        request = Request.of("complete", None, [ChatMessage(role=MessageRole.USER, content=prompt)])
        return self._answer(request, lambda: self._real.complete(prompt, formatted=formatted, **kwargs))

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._real.stream_complete(prompt, formatted=formatted, **kwargs)


class _NotSaved(Exception):
    pass


class _SavedAnswersOnly(CustomLLM):
    """The 'real' LLM of a call whose answers are all saved: asking it anything is a miss."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="saved-answers")

    def structured_predict(self, *args: Any, **kwargs: Any) -> Any:
        raise _NotSaved()

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        raise _NotSaved()

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise _NotSaved()

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        raise _NotSaved()


# -- stand-in answers ------------------------------------------------------------------------------
def _mark(value: Any, marker: str, keep: set[str]) -> Any:
    if isinstance(value, str):
        return value if value in keep else f"{marker} {value}"
    if isinstance(value, list):
        return [_mark(v, marker, keep) for v in value]
    if isinstance(value, dict):
        return {k: _mark(v, marker, keep) for k, v in value.items()}
    return value


def _unmark_at(marked: Any, plain: Any, loc: Sequence[Any]) -> None:
    """Put the plain value back where validation refused the marked one."""
    node, original = marked, plain
    for part in loc[:-1]:
        try:
            node, original = node[part], original[part]
        except (KeyError, IndexError, TypeError):
            return
    try:
        node[loc[-1]] = original[loc[-1]]
    except (KeyError, IndexError, TypeError):
        pass



# -- the session --------------------------------------------------------------------------------
class Speculation:
    """One run of one task's code: the real pass, and record passes running ahead of it. See the module docstring."""

    MAX_PASSES = 500
    # Record passes in a row that found nothing new to send while calls still waited: the real
    # pass is ahead (a chain: each prompt holds the previous answer). Recording again after
    # every link would rerun the host's code once per call for nothing.
    CHAIN_ROUNDS = 1
    # How long the real pass waits for a record pass under way to reach a call it may send
    # (a pass slower than a call); past that the real pass asks the call itself.
    WAIT_FOR_PASS = 5.0

    def __init__(
        self, *, task: str, store: AnswerStore, max_in_flight: int | None = None, record_ahead: bool = True
    ) -> None:
        self.task = task
        self.store = store
        self.nonce = secrets.token_hex(4)
        self._marker_re = re.compile(rf"sx{self.nonce}c(\d+)x", re.IGNORECASE)
        self.report = SpeculationReport(task)
        self._slots: dict[str, _Slot] = {}
        self._changed = threading.Condition()  # guards _slots and _answered; notified when a call ends
        self._answered = 0
        self._cancel = threading.Event()
        self._refused: set[str] = set()
        self._chain_found = False
        # the task's calls in flight, early and real together (the engine bounds each batch only)
        self._in_flight = threading.BoundedSemaphore(max_in_flight) if max_in_flight else None
        self._live: Callable[[Callable[[Any], Any], str], Any] | None = None
        self._aside: Callable[[], ContextManager[None]] = contextlib.nullcontext
        self._recorder: threading.Thread | None = None
        self._recording_wanted = record_ahead  # False: the host knows there is nothing to overlap; no record pass
        self._recording_now = False  # a record pass is under way (guarded by _changed)
        self._recorded: set[int] = set()  # call positions some finished record pass reached

    # -- markers and stand-ins ------------------------------------------------------------
    def markers_in(self, text: str) -> list[str]:
        return self._marker_re.findall(text)

    def stand_in(self, request: Request, call_index: int, number: int) -> Any:
        marker = f"sx{self.nonce}c{call_index}x"
        if request.kind != "structured":
            text = f"{marker} stand-in answer {number}"
            if request.kind == "chat":
                return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text))
            return CompletionResponse(text=text)
        cls = request.output_cls
        assert cls is not None
        prompt_ids = ids_in([request.all_text()])
        plain = json_for_schema(cls.model_json_schema(), seed=f"stand-in|{request.digest}", ids=prompt_ids)  # type: ignore[attr-defined]
        marked = _mark(json.loads(json.dumps(plain)), marker, {str(i) for i in prompt_ids})
        for _ in range(20):  # fields that refuse a marked string (patterns, enums) get the plain value
            try:
                return cls.model_validate(marked)  # type: ignore[attr-defined]
            except ValidationError as exc:
                errors = exc.errors()
                before = json.dumps(marked, sort_keys=True)
                for error in errors:
                    _unmark_at(marked, plain, error["loc"])
                if json.dumps(marked, sort_keys=True) == before:
                    break
        return cls.model_validate(plain)  # type: ignore[attr-defined]

    def slot(self, key: str) -> _Slot | None:
        with self._changed:
            return self._slots.get(key)

    def refuse(self, key: str) -> None:
        with self._changed:
            self._refused.add(key)

    def _finish(self, slot: _Slot, ok: bool, value: Any) -> None:
        slot.ok, slot.value = ok, value
        slot.done.set()
        with self._changed:
            self._answered += 1
            self._changed.notify_all()

    @contextlib.contextmanager
    def _one_in_flight(self) -> Iterator[None]:
        if self._in_flight is None:
            yield
            return
        with self._in_flight:
            yield

    # -- what the host's executor calls ---------------------------------------------------------
    def call(self, fn: Callable[[Any], Any]) -> Any:
        """Stands in for ``executor.run(fn)`` in every pass."""
        pass_ = _PASS.get()
        if pass_ is None:
            raise RuntimeError(f"{self.task}: executor.run outside a speculative run")
        if pass_.real:
            return self._real_call(pass_, fn)
        if self._cancel.is_set():
            raise _Cancelled()
        call = PassCall(len(pass_.calls), frozen(fn), Counter(pass_.counts))
        pass_.calls.append(call)
        return fn(PassLLM(self, pass_, call))

    # -- the real pass ----------------------------------------------------------------------
    def _real_call(self, pass_: _Pass, fn: Callable[[Any], Any]) -> Any:
        index = len(pass_.calls)
        start = Counter(pass_.counts)
        pass_.calls.append(PassCall(index, fn, start))
        label = f"call {index + 1}"
        if not self._recording_wanted:
            return self._ask_live(pass_, fn, start, label, None, None)
        request = self._probe(fn)
        if request is None:  # it asked nothing we could see before failing or returning: run it as it is
            self._start_recording()
            return self._ask_live(pass_, fn, start, label, None, None)
        key = AnswerStore.key(request, start[request.digest])
        with self._changed:
            # A record pass under way that has not been this far yet may send this call with the
            # others of its loop: let it (it only happens when the pass is slower than a call).
            # The first call never waits: the first pass starts with it.
            self._changed.wait_for(
                lambda: index == 0 or key in self._slots or not self._recording_now or index in self._recorded,
                timeout=self.WAIT_FOR_PASS,
            )
            slot = self._slots.get(key)
            mine = slot is None
            if mine:
                slot = _Slot(None, early=False)
                self._slots[key] = slot
        assert slot is not None
        self._start_recording()  # from the first call on (claimed above): while it is in flight, the pass costs no waiting
        if mine:
            if self.store.get(request, start[request.digest]) is not None:  # answered before (a resumed run)
                counts = self._from_store(fn, start, quietly=False)
                if counts is not None:
                    self.report.replayed_from_store += 1
                    result, pass_.counts = counts
                    self._finish(slot, True, result)
                    return result
            return self._ask_live(pass_, fn, start, label, request, slot)
        slot.done.wait()
        if slot.sent and same_function(slot.fn, fn):  # type: ignore[arg-type]
            if not slot.ok:
                slot.used = True
                self.report.used += 1
                pass_.counts = start + Counter([request.digest])
                raise slot.value
            verified = self._from_store(fn, start, quietly=True)
            if verified is not None:  # every request it makes now has an answer: the early run's
                slot.used = True
                self.report.used += 1
                pass_.counts = verified[1]
                return slot.value
        return self._ask_live(pass_, fn, start, label, request, None)

    def _probe(self, fn: Callable[[Any], Any]) -> Request | None:
        """The call's first request, from a run of ``fn`` on copies of what it captured (it may change them)."""
        with self._aside(), recording():
            try:
                frozen(fn)(_ProbeLLM())
            except _Probed as probed:
                return probed.request
            except Exception:
                return None
        return None

    def _from_store(self, fn: Callable[[Any], Any], start: Counter[str], *, quietly: bool) -> tuple[Any, Counter[str]] | None:
        """``fn`` answered from saved answers only: (its result, the counts after it), or None on a miss."""
        counts = Counter(start)
        try:
            if quietly:  # only a check: on copies of what fn captured, so the real pass's state stays as it is
                with self._aside(), recording():
                    result = frozen(fn)(AnsweringLLM(_SavedAnswersOnly(), self, counts))
            else:
                result = fn(AnsweringLLM(_SavedAnswersOnly(), self, counts))
        except _NotSaved:
            return None
        except Exception:
            if quietly:
                return None
            raise
        return result, counts

    def _ask_live(
        self, pass_: _Pass, fn: Callable[[Any], Any], start: Counter[str], label: str, request: Request | None, slot: _Slot | None
    ) -> Any:
        after: dict[str, Counter[str]] = {}

        def attempt(llm: Any) -> Any:
            counts = Counter(start)  # each attempt asks from the same place
            with self._one_in_flight():
                result = fn(AnsweringLLM(llm, self, counts))
            after["counts"] = counts
            return result

        if self._chain_found:
            self.report.chained += 1
        self.report.asked_live += 1
        assert self._live is not None
        try:
            result = self._live(attempt, label)
        except BaseException as exc:
            pass_.counts = start + (Counter([request.digest]) if request is not None else Counter())
            if slot is not None:
                self._finish(slot, False, exc)
            raise
        pass_.counts = after.get("counts", start)
        if slot is not None:
            self._finish(slot, True, result)
        return result

    # -- the record side --------------------------------------------------------------------
    def _record_side(self, record: Callable[[int], None], send: Any, stop: tuple[type[BaseException], ...]) -> None:
        try:
            self._record_ahead(record, send, stop)
        except BaseException as exc:  # never the host's failure: the real pass asks what is left itself
            self.report.stopped_early = f"{type(exc).__name__}: {exc}"[:300]
            if not isinstance(exc, stop):
                logger.warning("task=%s speculation stopped: %s; the rest is asked in order", self.task, self.report.stopped_early)
        finally:
            with self._changed:
                self._recording_now = False
                unsent = [slot for slot in self._slots.values() if slot.early and not slot.done.is_set()]
                self._changed.notify_all()
            for slot in unsent:  # claimed, never sent: the real pass asks them
                self._finish(slot, False, None)

    def _record_ahead(self, record: Callable[[int], None], send: Any, stop: tuple[type[BaseException], ...]) -> None:
        quiet = 0
        while not self._cancel.is_set() and self.report.passes < self.MAX_PASSES:
            with self._changed:
                answered_before = self._answered
                self._recording_now = True
            pass_ = _Pass(self.report.passes + 1, real=False)
            failed = self._record_pass(record, pass_)
            with self._changed:  # the calls it can send are claimed before the real pass may ask them
                ready = []
                if failed is None and not self._cancel.is_set():
                    ready = [c for c in pass_.calls if c.ready and c.first_key not in self._slots]
                    for c in ready:
                        assert c.first_key is not None
                        self._slots[c.first_key] = _Slot(c.fn, early=True)
                    self._recorded.update(range(len(pass_.calls)))
                self._recording_now = False
                self._changed.notify_all()
            if self._cancel.is_set():
                return
            if failed is not None:
                reason = f"{type(failed).__name__}: {failed}"[:300]
                if pass_.number == 1:
                    self.report.fell_back = reason
                else:
                    self.report.stopped_early = f"record pass {pass_.number} failed: {reason}"
                    logger.info("task=%s speculation stops after pass %d (%s)", self.task, pass_.number, self.report.stopped_early)
                return
            if ready:
                quiet = 0
                self._send_early(ready, send, stop)
                continue
            waiting = [c for c in pass_.calls if c.unknown and c.waits_on]
            if not waiting:
                return  # nothing waits on an answer: every call is known, sent or the real pass's
            positions = {c.index for c in waiting}
            if sum(1 for c in waiting if not c.waits_on & positions) < 2:
                # At most one call can go once the answers on their way are in, and the rest wait
                # on it: a chain, which the real pass asks link by link anyway.
                self._chain_found = True
                self.report.stopped_early = "a chain: each call waits for the one before; the rest is asked in order"
                return
            quiet += 1
            if quiet > self.CHAIN_ROUNDS:
                self._chain_found = True
                self.report.stopped_early = "a chain: each call waits for the one before; the rest is asked in order"
                return
            with self._changed:  # record again once another answer is in
                self._changed.wait_for(lambda: self._cancel.is_set() or self._answered > answered_before)

    def _record_pass(self, record: Callable[[int], None], pass_: _Pass) -> Exception | None:
        self.report.passes += 1
        token = _PASS.set(pass_)
        try:
            with recording():
                record(pass_.number)
        except _Cancelled:
            return None
        except Exception as exc:
            return exc
        finally:
            _PASS.reset(token)
        return None

    def _send_early(self, ready: list[PassCall], send: Any, stop: tuple[type[BaseException], ...]) -> None:
        self.report.rounds += 1
        self.report.sent_early += len(ready)
        if len(ready) > 1:
            self.report.overlapped += len(ready)
        slots = [self._slots[c.first_key] for c in ready if c.first_key]
        outcomes: dict[int, tuple[bool, Any]] = {}
        try:
            outcomes = send([self._early_fn(c) for c in ready], [f"call {c.index + 1}" for c in ready])
        except BaseException as exc:
            # A stop: each of these calls meets it where the real pass asks it. Anything else is
            # ours, not the host's: the real pass asks those calls itself.
            for slot in slots:
                if not slot.done.is_set():
                    slot.sent = isinstance(exc, stop)
                    self._finish(slot, False, exc)
            raise
        for position, slot in enumerate(slots):
            key = ready[position].first_key
            outcome = outcomes.get(position)
            slot.sent = outcome is not None and key not in self._refused
            ok, value = outcome if outcome is not None else (False, None)
            self._finish(slot, ok, value)

    def _early_fn(self, call: PassCall) -> Callable[[Any], Any]:
        fn, counts, key = call.fn, call.counts_before, call.first_key

        def early(llm: Any) -> Any:
            with self._one_in_flight():
                return fn(AnsweringLLM(llm, self, Counter(counts), call_key=key))

        return early

    # -- the whole run ------------------------------------------------------------------------
    def run(
        self,
        body: Callable[[], None],
        *,
        record: Callable[[int], None],
        send: Callable[[Sequence[Callable[[Any], Any]], Sequence[str]], dict[int, tuple[bool, Any]]],
        live: Callable[[Callable[[Any], Any], str], Any],
        aside: Callable[[], ContextManager[None]] = contextlib.nullcontext,
        stop_exceptions: tuple[type[BaseException], ...] = (),
    ) -> SpeculationReport:
        """The host's code for real (``body``), with record passes (``record``) running ahead of it.

        ``record(pass_number)`` runs one record pass of the same code where its files go to
        scratch. ``send(fns, labels)`` runs each ``fn(llm)`` for real, concurrently, and
        returns ``{position: (ok, result or exception)}`` for those that ended (a fail-fast
        stop may leave some out). ``live(fn, label)`` runs one now and raises what the host's
        executor would. ``aside()`` is where a call's fn runs outside its pass (to find its
        first request, or to check it against saved answers): whatever the host's passes draw
        (ids, say) must not move there. Raises what ``body`` raises.
        """
        self._live = live
        self._aside = aside
        self._recorder = threading.Thread(
            target=self._record_side, args=(record, send, stop_exceptions), name=f"speculation-{self.task}", daemon=True
        )
        real = _Pass(0, real=True)
        token = _PASS.set(real)
        try:
            body()
        finally:
            _PASS.reset(token)
            self._cancel.set()
            with self._changed:
                self._changed.notify_all()
            if self._recorder.ident is not None:
                self._recorder.join()
            self.report.calls = len(real.calls)
            self._close_report()
        return self.report

    def _start_recording(self) -> None:
        if self._recording_wanted and self._recorder is not None and self._recorder.ident is None:
            with self._changed:
                self._recording_now = True
            self._recorder.start()

    def _close_report(self) -> None:
        with self._changed:
            slots = list(self._slots.values())
            self.report.refused = len(self._refused)
        self.report.wasted = sum(1 for s in slots if s.early and s.sent and not s.used)
