"""Review the almost finished plan: a fixed list of questions asked in one growing conversation.

Question n sees every earlier question and answer, so the calls are chained (16 in
ALL_DETAILS mode, the first 3 in FAST mode, as in PlanExe).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.llms.llm import LLM
from pydantic import BaseModel, Field

from worker_plan_api.speedvsdetail import SpeedVsDetailEnum
from worker_plan_internal.llm_util.llm_executor import LLMExecutor, PipelineStopRequested
from worker_plan_internal.llm_util.structured_step import llm_metadata, structured_chat, write_json, write_text

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "You review project plans. Answer each question about the document below in three short bullet points."

# (title, question): the double's own sixteen review questions.
QUESTIONS: list[tuple[str, str]] = [
    ("Biggest Problems", "What are the three biggest problems in this plan?"),
    ("Side Effects", "What could happen as a side effect of carrying out the plan?"),
    ("First Actions", "What should be done first, and why?"),
    ("Unhandled Risks", "Which risks could stop the project and are not handled yet?"),
    ("Load-bearing Assumptions", "Which assumptions must hold for the plan to work?"),
    ("Measures of Success", "How will we know, in numbers, that the project succeeds?"),
    ("Audience", "Who is this document for, and what should they decide after reading it?"),
    ("Weak Data", "Where is the plan's data thin or unverified?"),
    ("Open Questions for Stakeholders", "What must stakeholders clarify before the next version?"),
    ("Outdated Premises", "Which early premises may no longer be true?"),
    ("Budget Gaps", "What is unclear about the budget?"),
    ("Unclear Roles", "Which roles or responsibilities need to be spelled out?"),
    ("Schedule Dependencies", "Which steps depend on each other in ways that could delay the schedule?"),
    ("Long-term Money", "What long-term funding questions are still open?"),
    ("Keeping Momentum", "What keeps the team motivated until the end?"),
    ("Automation", "What could be automated or simplified?"),
]
FAST_QUESTION_COUNT = 3


class ReviewAnswer(BaseModel):
    bullet_points: list[str] = Field(min_length=3, max_length=3)


@dataclass
class ReviewPlan:
    system_prompt: str
    question_answers_list: list[dict[str, Any]]
    metadata: dict[str, Any]
    markdown: str

    @classmethod
    def execute(cls, llm_executor: LLMExecutor, speed_vs_detail: SpeedVsDetailEnum, document: str) -> "ReviewPlan":
        if not isinstance(llm_executor, LLMExecutor):
            raise ValueError("Invalid LLMExecutor instance.")
        if not isinstance(speed_vs_detail, SpeedVsDetailEnum):
            raise ValueError("Invalid SpeedVsDetailEnum instance.")
        if not isinstance(document, str):
            raise ValueError("Invalid document.")
        questions = QUESTIONS
        if speed_vs_detail == SpeedVsDetailEnum.FAST_BUT_SKIP_DETAILS:
            questions = questions[:FAST_QUESTION_COUNT]
        system_prompt = f"{SYSTEM_PROMPT}\n\nDocument:\n{document}"
        messages = [ChatMessage(role=MessageRole.SYSTEM, content=system_prompt)]
        answers: list[dict[str, Any]] = []
        metadata_list: list[dict[str, Any]] = []
        for number, (title, question) in enumerate(questions, start=1):
            messages.append(ChatMessage(role=MessageRole.USER, content=question))
            asked = list(messages)

            def execute_function(llm: LLM) -> dict[str, Any]:
                chat_response = structured_chat(llm, ReviewAnswer, asked)
                return {"chat_response": chat_response, "metadata": llm_metadata(llm)}

            try:
                result = llm_executor.run(execute_function)
            except PipelineStopRequested:
                raise
            except Exception as exc:
                logger.error("Review question %d of %d failed.", number, len(questions), exc_info=True)
                raise ValueError(f"Review question {number} LLM interaction failed.") from exc
            chat_response = result["chat_response"]
            answers.append({"title": title, "question": question, "answers": chat_response.raw.bullet_points})
            metadata_list.append(result["metadata"])
            messages.append(ChatMessage(role=MessageRole.ASSISTANT, content=chat_response.message.content))
        metadata = {"question_count": len(questions), "metadata_list": metadata_list}
        return cls(system_prompt, answers, metadata, cls.convert_to_markdown(answers))

    @staticmethod
    def convert_to_markdown(question_answers_list: list[dict[str, Any]]) -> str:
        rows: list[str] = []
        for number, qa in enumerate(question_answers_list, start=1):
            rows += [f"## Review {number}: {qa['title']}", ""]
            rows += [f"{i}. {answer}" for i, answer in enumerate(qa["answers"], start=1)]
            rows.append("")
        return "\n".join(rows)

    def to_dict(self, include_metadata: bool = True, include_system_prompt: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"question_answers_list": self.question_answers_list}
        if include_metadata:
            d["metadata"] = self.metadata
        if include_system_prompt:
            d["system_prompt"] = self.system_prompt
        return d

    def save_raw(self, file_path: str) -> None:
        write_json(str(file_path), self.to_dict())

    def save_markdown(self, output_file_path: str) -> None:
        write_text(str(output_file_path), self.markdown)
