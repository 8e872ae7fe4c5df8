"""Speculative record and replay: someone else's sequential LLM code, its independent calls sent at once.

The host's code (a PlanExe task, say) asks an LLM through ``executor.run(fn)`` calls, one
after another, where ``fn(llm)`` sends one or more requests. Without reading that code,
:class:`Speculation` runs it several times:

1. **Record pass.** Every ``fn`` gets a :class:`PassLLM`: a request answered earlier gets
   its real answer, any other request an instant *stand-in* (schema-valid; every string
   carries a marker naming the call that asked). The host writes to a scratch folder.
2. **Independence from the requests themselves.** A call whose unanswered requests hold no
   marker of another call's stand-in cannot depend on any unanswered text: it is sent,
   with the others of its kind, through the host's ``send`` (the engine: concurrency,
   budget, retries, fallback). The real work is the host's own ``fn`` run with the real LLM
   (wrapped in :class:`AnsweringLLM`, which saves every answer at once).
3. **Rounds.** Record again with the answers known so far; repeat until no call is ready.
   A chain becomes one call per round; a loop over an earlier answer fans out once it is in.
4. **Replay.** The last pass runs the host's code for real. A call sent early whose
   ``fn`` is the same as then (code and captured values) and whose requests the last record
   pass found answered gets back what that early ``fn`` returned (or raised), so what the
   host records about a call (duration, model) stays true. Anything else is asked on the
   spot through ``live`` (answers already saved are not asked again).

Correctness never rests on the markers: the replay hands back an answer only to the same
request (byte for byte, same occurrence), so a guess that turns out wrong costs a *wasted*
call, never a different output. Wasted calls are counted in :class:`SpeculationReport`.

>>> spec = Speculation(task="Demo", store=AnswerStore(None))
>>> report = spec.run(body, send=send_many, live=ask_now, sandbox=scratch_folder)
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
from pydantic import PrivateAttr, ValidationError, model_serializer

from .resume import atomic_write_text
from .simllm.generator import ids_in, json_for_schema

logger = logging.getLogger("planexe_concurrency")

__all__ = [
    "AnswerStore",
    "AnsweringLLM",
    "PassLLM",
    "RecordFailed",
    "Request",
    "Speculation",
    "SpeculationReport",
    "frozen",
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
        from llama_index.core.instrumentation.dispatcher import Dispatcher

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
    """A copy of a container (its state now), or the value itself."""
    if isinstance(value, (list, dict, set)):
        try:
            return copy.deepcopy(value)
        except Exception:
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
    """One ``executor.run(fn)`` of one pass."""

    index: int
    fn: Callable[[Any], Any]
    counts_before: Counter[str]  # request digests asked by earlier calls of the pass
    unknown: list[Request] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)  # every request it made, in order
    foreign_markers: bool = False
    settled: bool = False  # ended with the failure its early run met
    first_key: str | None = None  # its first request and occurrence: what the call is, across passes

    @property
    def verified(self) -> bool:
        """Every request it made this pass had a real answer (or it raised its early failure)."""
        return self.settled or (bool(self.digests) and not self.unknown)

    @property
    def ready(self) -> bool:
        return bool(self.unknown) and not self.foreign_markers


@dataclass
class EarlyOutcome:
    fn: Callable[[Any], Any]
    ok: bool
    value: Any = None  # fn's result, or the exception it ended with
    used: bool = False


@dataclass
class SpeculationReport:
    """What one task's speculation did; ``wasted`` calls were sent early and never used."""

    task: str
    calls: int = 0  # executor.run calls of the replay: PlanExe's own count
    passes: int = 0
    rounds: int = 0
    sent_early: int = 0
    overlapped: int = 0  # sent early in a round with at least one other call
    used: int = 0
    wasted: int = 0
    replayed_from_store: int = 0
    asked_live: int = 0
    chained: int = 0  # asked in the host's order after a chain was found (see Speculation.CHAIN_ROUNDS)
    single: int = 0  # a last lone call, asked in the replay (nothing left to overlap it with)
    stopped_early: str = ""
    refused: int = 0  # early calls that would have sent a stand-in's text: not sent (a bug if not 0)
    fell_back: str = ""  # why the host's code ran as it is (the first record pass failed)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class StandInInRequest(Exception):
    """A call about to send a stand-in answer's text to the provider: refused, the call is asked in the replay."""


class RecordFailed(Exception):
    """The host's code did not get through a record pass (it rejected a stand-in): run it as it is."""


# -- the two LLMs the host's fn is handed --------------------------------------------------------
class PassLLM(CustomLLM):
    """A record pass's LLM: real answers where known, stand-ins (with markers) for the rest."""

    _spec: Any = PrivateAttr()
    _call: Any = PrivateAttr()
    _current: Any = PrivateAttr(default=None)

    def __init__(self, spec: "Speculation", call: PassCall) -> None:
        super().__init__()
        self._spec = spec
        self._call = call

    @property
    def metadata(self) -> LLMMetadata:
        return self._current.metadata if self._current is not None else LLMMetadata(model_name="planexe-concurrency-stand-in")

    def class_name(self) -> str:  # type: ignore[override]
        return self._current.class_name if self._current is not None else "StandInLLM"

    def _answer(self, request: Request) -> Any:
        call = self._call
        occurrence = call.counts_before[request.digest] + self._spec._pass_counts[request.digest]
        self._spec._pass_counts[request.digest] += 1
        call.digests.append(request.digest)
        if call.first_key is None:
            call.first_key = AnswerStore.key(request, occurrence)
            early = self._spec.early.get(call.first_key)
            if early is not None and not early.ok and same_function(early.fn, call.fn):
                call.settled = True
                raise early.value  # as it will be raised in the replay, so the host's handling decides
        known = self._spec.store.get(request, occurrence)
        if known is not None:
            self._current = known
            return known.value_for(request)
        self._current = None
        call.unknown.append(request)
        if any(int(m) != call.index for m in self._spec.markers_in(request.all_text())):
            call.foreign_markers = True
        return self._spec.stand_in(request, call.index, len(call.unknown))

    def structured_predict(self, output_cls: Any, prompt: Any, llm_kwargs: Any = None, **prompt_args: Any) -> Any:
        return self._answer(Request.of("structured", output_cls, prompt.format_messages(**prompt_args)))

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._answer(Request.of("chat", None, messages))

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._answer(Request.of("complete", None, [ChatMessage(role=MessageRole.USER, content=prompt)]))

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        raise NotImplementedError("planexe-concurrency: streaming is not recorded")


class AnsweringLLM(CustomLLM):
    """The real LLM for one call, looking like it; answers saved at once, known ones not asked again."""

    _real: Any = PrivateAttr()
    _spec: Any = PrivateAttr()
    _counts: Any = PrivateAttr()
    _current: Any = PrivateAttr(default=None)

    _in_pass: bool = PrivateAttr(default=False)

    _call_key: Any = PrivateAttr(default=None)

    def __init__(
        self, real: Any, spec: "Speculation", counts_before: Counter[str], *, in_pass: bool = False, call_key: str | None = None
    ) -> None:
        super().__init__()
        self._real = real
        self._spec = spec
        self._counts = Counter(counts_before)
        self._in_pass = in_pass  # the replay's own calls: occurrences count in the pass
        self._call_key = call_key  # an early call's identity (None in the replay)

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
        if self._in_pass:
            self._spec._pass_counts[request.digest] += 1
        known = self._spec.store.get(request, occurrence)
        if known is not None:
            self._current = known
            return known.value_for(request)
        self._current = None
        if self._call_key is not None and self._spec.markers_in(request.all_text()):
            self._spec._refused.add(self._call_key)
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
    """One run of one task's code: record passes, early sends, and the replay. See the module docstring."""

    MAX_PASSES = 500
    # Rounds in a row that could send only one call while others waited on it: a chain (each
    # prompt holds the previous answer). Recording again after every link would rerun the
    # host's code once per call for nothing; the rest is asked in the host's own order instead.
    CHAIN_ROUNDS = 2

    def __init__(self, *, task: str, store: AnswerStore) -> None:
        self.task = task
        self.store = store
        self.nonce = secrets.token_hex(4)
        self._marker_re = re.compile(rf"sx{self.nonce}c(\d+)x", re.IGNORECASE)
        self.report = SpeculationReport(task)
        self.early: dict[str, EarlyOutcome] = {}  # by the call's first request and occurrence
        self._mode = "record"
        self._calls: list[PassCall] = []
        self._pass_counts: Counter[str] = Counter()
        self._last_record: dict[int, PassCall] = {}
        self._live: Callable[[Callable[[Any], Any], str], Any] | None = None
        self._chain_found = False
        self._single = False
        self._refused: set[str] = set()

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

    # -- what the host's executor calls ---------------------------------------------------------
    def call(self, fn: Callable[[Any], Any]) -> Any:
        """Stands in for ``executor.run(fn)`` in every pass."""
        index = len(self._calls)
        counts_before = Counter(self._pass_counts)
        call = PassCall(index, frozen(fn), counts_before)
        self._calls.append(call)
        if self._mode == "replay":
            return self._replay(call)
        return fn(PassLLM(self, call))

    def _replay(self, call: PassCall) -> Any:
        recorded = self._last_record.get(call.index)
        early = self.early.get(recorded.first_key) if recorded is not None and recorded.first_key else None
        if early is not None and recorded is not None and recorded.verified and same_function(early.fn, call.fn):
            self._pass_counts.update(recorded.digests)
            early.used = True
            self.report.used += 1
            if not early.ok:
                raise early.value
            return early.value
        assert self._live is not None
        counts = call.counts_before
        fn = call.fn
        if recorded is not None and recorded.verified and same_function(recorded.fn, call.fn):
            # answered before (a resumed run): nothing is asked, nothing goes through the engine
            try:
                result = fn(AnsweringLLM(_SavedAnswersOnly(), self, counts, in_pass=True))
            except _NotSaved:
                pass  # the host asked something else after all: ask it live below
            else:
                self.report.replayed_from_store += 1
                return result
        if early is None and self._chain_found:
            self.report.chained += 1
        elif early is None and self._single:
            self.report.single += 1
        else:
            self.report.asked_live += 1
        return self._live(lambda llm: fn(AnsweringLLM(llm, self, counts, in_pass=True)), f"call {call.index + 1}")

    # -- the whole run ------------------------------------------------------------------------
    def run(
        self,
        body: Callable[[], None],
        *,
        send: Callable[[Sequence[Callable[[Any], Any]], Sequence[str]], dict[int, tuple[bool, Any]]],
        live: Callable[[Callable[[Any], Any], str], Any],
        sandbox: Callable[[int], ContextManager[None]],
        stop_exceptions: tuple[type[BaseException], ...] = (),
    ) -> SpeculationReport:
        """Record, send and replay ``body`` (see the module docstring); returns what happened.

        ``send(fns, labels)`` runs each ``fn(llm)`` for real, concurrently, and returns
        ``{position: (ok, result or exception)}`` for those that ended (a fail-fast stop may
        leave some out). ``live(fn, label)`` runs one now and raises what the host's executor would. ``sandbox(pass_number)`` is where a record
        pass runs (the host's files go to scratch). Raises :class:`RecordFailed` if the first
        record pass fails; a stop exception from ``send`` passes through.
        """
        self._live = live
        sent: set[str] = set()  # calls (by first request and occurrence) are sent once each
        single_rounds = 0
        while self.report.passes < self.MAX_PASSES:
            failed = self._record_pass(body, sandbox, stop_exceptions)
            if failed is not None:
                if self.report.passes == 1:
                    raise RecordFailed(failed) from failed
                self.report.stopped_early = f"record pass {self.report.passes} failed: {type(failed).__name__}: {failed}"
                logger.info("task=%s speculation stops after pass %d (%s); the rest is asked live", self.task, self.report.passes, self.report.stopped_early)
                break
            ready = [c for c in self._calls if c.ready and c.first_key not in sent]
            if not ready:
                break
            waiting = any(c.unknown and c.foreign_markers for c in self._calls)
            if len(ready) == 1 and not waiting:
                # One call left and nothing waiting on it: sending it early would overlap nothing
                # and cost one more pass of the host's code. The replay asks it, as the host would.
                self.report.stopped_early = "one call left, nothing to overlap: asked in the replay"
                self._single = True
                break
            single_rounds = single_rounds + 1 if len(ready) == 1 and waiting else 0
            if single_rounds > self.CHAIN_ROUNDS:
                self._chain_found = True
                self.report.stopped_early = "a chain: each call waits for the one before; the rest is asked in order"
                break
            self.report.rounds += 1
            if len(ready) > 1:
                self.report.overlapped += len(ready)
            sent.update(c.first_key for c in ready if c.first_key)
            self.report.sent_early += len(ready)
            outcomes = send(
                [self._early_fn(c) for c in ready],
                [f"call {c.index + 1}" for c in ready],
            )
            for position, (ok, value) in outcomes.items():
                call = ready[position]
                assert call.first_key is not None
                if call.first_key in self._refused:
                    continue  # never sent: the replay asks it
                self.early[call.first_key] = EarlyOutcome(call.fn, ok, value)
        self._mode = "replay"
        self._calls = []
        self._pass_counts = Counter()
        body()
        self.report.calls = len(self._calls)
        self.report.refused = len(self._refused)
        self.report.wasted = self.report.sent_early - self.report.used - self.report.refused
        return self.report

    def _early_fn(self, call: PassCall) -> Callable[[Any], Any]:
        fn, counts, key = call.fn, call.counts_before, call.first_key

        def early(llm: Any) -> Any:
            return fn(AnsweringLLM(llm, self, counts, call_key=key))

        return early

    def _record_pass(
        self, body: Callable[[], None], sandbox: Callable[[int], ContextManager[None]], stop: tuple[type[BaseException], ...]
    ) -> Exception | None:
        self._mode = "record"
        self._calls = []
        self._pass_counts = Counter()
        self.report.passes += 1
        try:
            with sandbox(self.report.passes), recording():
                body()
        except stop:
            raise
        except Exception as exc:
            return exc
        finally:
            self._last_record = {c.index: c for c in self._calls}
        return None


@contextlib.contextmanager
def no_sandbox(_pass: int) -> Iterator[None]:
    yield
