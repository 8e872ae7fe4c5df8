"""``fidelity = relaxed``: PlanExe's chained loops asked side by side (opt-in, changes answers).

ReviewPlan (one growing conversation), SelfAudit (each item's prompt carries the earlier
answers), Premortem (chained rounds) and QuestionsAndAnswers (a follow-up that sees the
first answer) each ask their questions one after another because each prompt contains
the earlier answers. In relaxed mode each question is asked at once, without them.

The prompts and questions live inside PlanExe, so nothing is rebuilt here. The task runs
PlanExe's own ``run_inner`` three times over:

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

import json
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
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
from planexe_concurrency.resume import atomic_write_text
from planexe_concurrency.simllm.generator import json_for_schema

from .base import ConcurrentTask
from .planexe import load_planexe

logger = logging.getLogger("planexe_concurrency")
pe = load_planexe()
P = pe.pipeline


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

    class StandInExecutor(pe.LLMExecutor):  # type: ignore[misc, name-defined]
        def run(self, execute_function: Callable[[Any], Any]) -> Any:
            return execute_function(llm)

    return StandInExecutor(llm_models=pe.LLMModelFromName.from_names(list(task.llm_models)))


# -- the task mixin --------------------------------------------------------------------------
class RelaxedTask(ConcurrentTask):
    """Put first in the bases of a PlanExe task listed in :data:`RELAXATIONS`."""

    _stand_in: Any = None
    _scratch: Path | None = None

    def relaxed(self) -> bool:
        return task_value(read_config(), "fidelity", self.task_family) == "relaxed"  # type: ignore[attr-defined]

    def create_llm_executor(self) -> Any:
        if self._stand_in is not None:
            return _executor_with(self, self._stand_in)
        return super().create_llm_executor()  # type: ignore[misc]

    def output(self) -> Any:
        outputs = super().output()  # type: ignore[misc]
        if self._scratch is None:
            return outputs
        return {key: luigi.LocalTarget(str(self._scratch / Path(t.path).name)) for key, t in outputs.items()}

    def run_inner(self) -> None:
        if not self.relaxed():
            return super().run_inner()  # type: ignore[misc]
        requests = self._record()
        if requests is None:
            return super().run_inner()  # type: ignore[misc]
        answers = self._ask_relaxed(requests)
        replay = ReplayLLM().load(answers)
        self._stand_in = replay
        try:
            super().run_inner()  # type: ignore[misc]
        finally:
            self._stand_in = None
        if replay.remaining:
            raise RuntimeError(f"{self.task_family}: relaxed replay left {replay.remaining} answers unused")  # type: ignore[attr-defined]

    def _record(self) -> list[Request] | None:
        recorder = RecordingLLM()
        self._scratch = self.state_dir() / "relaxed" / "scratch" / self.task_family  # type: ignore[attr-defined]
        self._scratch.mkdir(parents=True, exist_ok=True)
        self._stand_in = recorder
        try:
            super().run_inner()  # type: ignore[misc]
        except Exception as exc:  # PlanExe rejected a stand-in answer: run exactly instead
            logger.warning("task=%s relaxed mode unavailable, running as PlanExe does: %r", self.task_family, exc)  # type: ignore[attr-defined]
            return None
        finally:
            self._stand_in = None
            shutil.rmtree(self._scratch, ignore_errors=True)  # the stand-in files
            self._scratch = None
        return recorder.requests

    def _ask_relaxed(self, requests: list[Request]) -> list[Answer]:
        reconcile = task_value(read_config(), "relaxed_reconcile", self.task_family)  # type: ignore[attr-defined]
        relax = RELAXATIONS[self.task_family][reconcile == "questions"]  # type: ignore[attr-defined]
        relaxed = [relax(requests, i) for i in range(len(requests))]
        atomic_write_text(
            self.state_dir() / "relaxed" / f"{self.task_family}.json",  # type: ignore[attr-defined]
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

        settings = replace(self.concurrency_settings(), failure_mode="fail_fast")
        fns = [call(r, m) for r, m in zip(requests, relaxed)]
        try:
            return self.make_executor(settings).run_batch(fns, labels=[f"request {i + 1}" for i in range(len(fns))])
        except pe.PipelineStopRequested:
            raise
        except Exception as exc:
            index = getattr(exc, "index", None)
            if index is not None:
                self._log_failures([exc.failure], len(fns))  # type: ignore[attr-defined]
            raise ValueError(f"{self.task_family}: relaxed LLM interaction failed.") from exc  # type: ignore[attr-defined]


class ReviewPlanTask(RelaxedTask, P.ReviewPlanTask):
    pass


class SelfAuditTask(RelaxedTask, P.SelfAuditTask):
    pass


class PremortemTask(RelaxedTask, P.PremortemTask):
    pass


class QuestionsAndAnswersTask(RelaxedTask, P.QuestionsAndAnswersTask):
    pass
