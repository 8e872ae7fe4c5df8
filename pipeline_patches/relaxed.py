"""``fidelity = relaxed``: PlanExe's chained loops asked side by side (opt-in, changes answers).

ReviewPlan (one growing conversation), SelfAudit (each item's prompt carries the earlier
answers), Premortem (chained rounds) and QuestionsAndAnswers (a follow-up that sees the
first answer) each ask their questions one after another because each prompt contains
the earlier answers. In relaxed mode each question is asked at once, without them.

The prompts and questions live inside PlanExe, so nothing is rebuilt here. It is a policy
on the speculative mechanism (``speculative.py``: same executor hook, same scratch folder,
same engine), with one rule changed: every request may go out at once, relaxed, and the
replay hands the answers back by position, not by request. The task runs PlanExe's own
``run_inner`` three times over:

1. *record*: with an LLM that answers every request at once with a schema-valid stand-in
   and keeps the request (messages, answer type); files go to a scratch folder;
2. the recorded requests, relaxed (see :data:`RELAXATIONS`), go through the engine side by
   side, with fallback, retries, the request budget and stop handling;
3. *replay*: with an LLM that hands back the real answers in order, so PlanExe's own code
   assembles and writes its usual files (names, schemas, order).

If the record pass fails (PlanExe's code rejects a stand-in answer), the task runs exactly
as PlanExe's. The requests actually sent are kept in ``.planexe_concurrency/relaxed/``;
see docs/relaxed.md for what each task no longer sees.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import luigi
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.custom import CustomLLM
from pydantic import PrivateAttr

from planexe_concurrency.config import read_config, task_value
from planexe_concurrency.events import one_line
from planexe_concurrency.resume import atomic_write_text
from planexe_concurrency.simllm.generator import json_for_schema

from .base import executor_for, settings_for, state_dir_of
from .planexe import load_planexe

logger = logging.getLogger("planexe_concurrency")


@dataclass
class Request:
    messages: list[ChatMessage]
    output_cls: type | None  # None: a plain chat


@dataclass
class Answer:
    value: Any  # the structured object, or the ChatResponse of a plain chat
    metadata: Any
    class_name: str


# -- how a recorded request is relaxed ------------------------------------------------------
def _system(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    return [m for m in messages if m.role == MessageRole.SYSTEM]


def last_question(requests: Sequence[Request], i: int) -> list[ChatMessage]:
    """The system prompt and this request's own question: no earlier turns at all."""
    messages = requests[i].messages
    return _system(messages) + [messages[-1]]


def without_answers(requests: Sequence[Request], i: int) -> list[ChatMessage]:
    """Every earlier question, none of the earlier answers."""
    return [m for m in requests[i].messages if m.role != MessageRole.ASSISTANT]


def first_prompt(requests: Sequence[Request], i: int) -> list[ChatMessage]:
    """This request's system prompt with the first request's user prompt (which had no earlier answers)."""
    return _system(requests[i].messages) + [m for m in requests[0].messages if m.role != MessageRole.SYSTEM]


Relaxation = Callable[[Sequence[Request], int], list[ChatMessage]]

# task -> (relaxation, relaxation with relaxed_reconcile = questions)
RELAXATIONS: dict[str, tuple[Relaxation, Relaxation]] = {
    "ReviewPlanTask": (last_question, without_answers),
    "PremortemTask": (last_question, without_answers),
    "QuestionsAndAnswersTask": (without_answers, without_answers),
    "SelfAuditTask": (first_prompt, first_prompt),
}


# -- the two stand-in LLMs ------------------------------------------------------------------
class RecordingLLM(CustomLLM):
    """Answers every request at once with a schema-valid stand-in, and keeps the request."""

    _requests: list[Request] = PrivateAttr(default_factory=list)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="planexe-concurrency-recorder")

    @property
    def requests(self) -> list[Request]:
        return self._requests

    def structured_predict(self, output_cls: Any, prompt: Any, llm_kwargs: Any = None, **prompt_args: Any) -> Any:
        messages = list(prompt.format_messages(**prompt_args))
        self._requests.append(Request(messages, output_cls))
        schema = output_cls.model_json_schema()
        return output_cls.model_validate(json_for_schema(schema, seed=f"stand-in-{len(self._requests)}"))

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        self._requests.append(Request(list(messages), None))
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content="stand-in"))

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self._requests.append(Request([ChatMessage(role=MessageRole.USER, content=prompt)], None))
        return CompletionResponse(text="stand-in")

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        raise NotImplementedError("PlanExe's chained loops do not stream")


class ReplayLLM(CustomLLM):
    """Hands back the real answers in the order the requests come; looks like the model that answered."""

    _answers: list[Answer] = PrivateAttr(default_factory=list)
    _current: Answer | None = PrivateAttr(default=None)

    def load(self, answers: Sequence[Answer]) -> "ReplayLLM":
        self._answers = list(answers)
        return self

    @property
    def remaining(self) -> int:
        return len(self._answers)

    def _next(self) -> Any:
        if not self._answers:
            raise RuntimeError("relaxed replay: PlanExe asked more than it asked when recorded")
        self._current = self._answers.pop(0)
        return self._current.value

    @property
    def metadata(self) -> LLMMetadata:
        return self._current.metadata if self._current is not None else LLMMetadata()

    def class_name(self) -> str:  # type: ignore[override]  # PlanExe records the answering model's class
        return self._current.class_name if self._current is not None else "ReplayLLM"

    def structured_predict(self, output_cls: Any, prompt: Any, llm_kwargs: Any = None, **prompt_args: Any) -> Any:
        return self._next()

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._next()

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        response = self._next()
        return CompletionResponse(text=response.message.content or "")

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        raise NotImplementedError("PlanExe's chained loops do not stream")


def _executor_with(task: luigi.Task, llm: Any) -> Any:
    """A PlanExe ``LLMExecutor`` (PlanExe checks the type) that hands ``llm`` to every call."""
    pe = load_planexe()

    class StandInExecutor(pe.LLMExecutor):  # type: ignore[misc, name-defined]
        def run(self, execute_function: Callable[[Any], Any]) -> Any:
            return execute_function(llm)

    return StandInExecutor(llm_models=pe.LLMModelFromName.from_names(list(task.llm_models)))


@contextlib.contextmanager
def _handing(task: luigi.Task, llm: Any) -> Any:
    task._planexe_concurrency_executor = _executor_with(task, llm)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        task.__dict__.pop("_planexe_concurrency_executor", None)


def relaxed_runner(task: luigi.Task) -> Callable[[luigi.Task, Callable[[luigi.Task], None]], None] | None:
    """The relaxed runner for a task listed in :data:`RELAXATIONS` with ``fidelity = relaxed``, else None."""
    if task.task_family not in RELAXATIONS:
        return None
    if task_value(read_config(), "fidelity", task.task_family) != "relaxed":
        return None
    return run_relaxed


def run_relaxed(task: luigi.Task, run_inner: Callable[[luigi.Task], None]) -> None:
    requests = _record(task, run_inner)
    if requests is None:
        return run_inner(task)
    answers = _ask_relaxed(task, requests)
    replay = ReplayLLM().load(answers)
    with _handing(task, replay):
        run_inner(task)
    if replay.remaining:
        raise RuntimeError(f"{task.task_family}: relaxed replay left {replay.remaining} answers unused")


def _record(task: luigi.Task, run_inner: Callable[[luigi.Task], None]) -> list[Request] | None:
    from .speculative import in_scratch

    def record() -> list[Request]:
        recorder = RecordingLLM()  # a fresh one for each pass (a second pass when the scratch lacked a file)
        with _handing(task, recorder):
            run_inner(task)
        return recorder.requests

    try:
        return in_scratch(task, state_dir_of(task) / "relaxed" / "scratch" / task.task_family, record)
    except Exception as exc:  # PlanExe rejected a stand-in answer: run exactly instead
        logger.warning("task=%s relaxed mode unavailable, running as PlanExe does: %r", task.task_family, exc)
        return None


def _ask_relaxed(task: luigi.Task, requests: list[Request]) -> list[Answer]:
    pe = load_planexe()
    reconcile = task_value(read_config(), "relaxed_reconcile", task.task_family)
    relax = RELAXATIONS[task.task_family][reconcile == "questions"]
    relaxed = [relax(requests, i) for i in range(len(requests))]
    folder = state_dir_of(task) / "relaxed"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        folder / f"{task.task_family}.json",
        json.dumps([[{"role": m.role.value, "content": m.content} for m in msgs] for msgs in relaxed], indent=1),
    )

    def call(request: Request, messages: list[ChatMessage]) -> Callable[[Any], Answer]:
        def ask(llm: Any) -> Answer:
            if request.output_cls is not None:
                value = llm.as_structured_llm(request.output_cls).chat(messages).raw
            else:
                value = llm.chat(messages)
            return Answer(value, llm.metadata, llm.class_name())

        return ask

    settings = replace(settings_for(task), failure_mode="fail_fast")
    fns = [call(r, m) for r, m in zip(requests, relaxed)]
    try:
        return executor_for(task, settings).run_batch(fns, labels=[f"request {i + 1}" for i in range(len(fns))])
    except pe.PipelineStopRequested:
        raise
    except Exception as exc:
        failure = getattr(exc, "failure", None)
        if failure is not None:
            logger.error(
                "task=%s item=%d/%d failed: %s: %s", task.task_family, failure.index + 1, len(fns),
                type(failure.error).__name__, one_line(failure.error),
            )
        raise ValueError(f"{task.task_family}: relaxed LLM interaction failed.") from exc
