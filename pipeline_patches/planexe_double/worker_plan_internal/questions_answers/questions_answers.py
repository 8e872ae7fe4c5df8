"""Questions and answers about the plan: two calls on one LLM, the second seeing the first answer.

Both calls happen inside one ``run_with_llm``, so with a fallback model both are redone.
"""
from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from typing import Any

from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.llms.llm import LLM
from pydantic import BaseModel, Field

from worker_plan_internal.llm_util.structured_step import PromptedResponse, llm_metadata, structured_chat, system_user, write_text

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "Write questions a newcomer would ask about the plan, with short answers from the document."
FOLLOW_UP = "Add more questions and answers, this time about risks and controversial points."


class QuestionAnswer(BaseModel):
    item_index: int = Field(ge=1, le=5)
    question: str
    answer: str


class QAList(BaseModel):
    question_answer_pairs: list[QuestionAnswer] = Field(min_length=3, max_length=4)
    summary: str


@dataclass
class QuestionsAnswers(PromptedResponse):
    system_prompt: str
    user_prompt: str
    response: dict[str, Any]
    metadata: dict[str, Any]
    markdown: str
    html: str

    @classmethod
    def execute(cls, llm: LLM, user_prompt: str) -> "QuestionsAnswers":
        if not isinstance(llm, LLM):
            raise ValueError("Invalid LLM instance.")
        if not isinstance(user_prompt, str):
            raise ValueError("Invalid user_prompt.")
        messages1 = system_user(SYSTEM_PROMPT, user_prompt)
        try:
            chat1 = structured_chat(llm, QAList, messages1)
        except Exception as exc:
            raise ValueError("Questions and answers call 1 failed.") from exc
        messages2 = messages1 + [
            ChatMessage(role=MessageRole.ASSISTANT, content=chat1.message.content),
            ChatMessage(role=MessageRole.USER, content=FOLLOW_UP),
        ]
        try:
            chat2 = structured_chat(llm, QAList, messages2)
        except Exception as exc:
            raise ValueError("Questions and answers call 2 failed.") from exc
        first = chat1.raw.model_dump(mode="json")
        second = chat2.raw.model_dump(mode="json")
        pairs = [dict(p, item_index=i) for i, p in enumerate(first["question_answer_pairs"] + second["question_answer_pairs"], start=1)]
        merged = {"question_answer_pairs": pairs, "summary": f"{first['summary']}\n\n{second['summary']}"}
        return cls(SYSTEM_PROMPT, user_prompt, merged, llm_metadata(llm), cls.convert_to_markdown(merged), cls.convert_to_html(merged))

    @staticmethod
    def convert_to_markdown(response: dict[str, Any]) -> str:
        rows: list[str] = []
        for p in response["question_answer_pairs"]:
            rows += [f"## Question {p['item_index']}", f"**Q**: {p['question']}", f"**A**: {p['answer']}", ""]
        rows += ["## Summary", response["summary"]]
        return "\n".join(rows) + "\n"

    @staticmethod
    def convert_to_html(response: dict[str, Any]) -> str:
        return "\n".join(
            f'<div class="qa"><p><b>{p["item_index"]}.</b> {html.escape(p["question"])}</p><p>{html.escape(p["answer"])}</p></div>'
            for p in response["question_answer_pairs"]
        ) + "\n"

    def save_markdown(self, output_file_path: str) -> None:
        write_text(str(output_file_path), self.markdown)

    def save_html(self, output_file_path: str) -> None:
        write_text(str(output_file_path), self.html)
