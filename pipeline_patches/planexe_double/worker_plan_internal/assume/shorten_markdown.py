"""Shorten one markdown document with a plain-text call (``llm.chat``), as PlanExe does."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.llms.llm import LLM

from worker_plan_internal.llm_util.structured_step import llm_metadata, plain_chat, write_json, write_text

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "Shorten the markdown the user gives you to its essentials, keeping headings. "
    "Put the result between [BEGIN] and [END]."
)


@dataclass
class ShortenMarkdown:
    system_prompt: Optional[str]
    user_prompt: str
    response: dict[str, Any]
    markdown: str
    metadata: dict[str, Any]

    @classmethod
    def execute(cls, llm: LLM, user_prompt: str) -> "ShortenMarkdown":
        if not isinstance(llm, LLM):
            raise ValueError("Invalid LLM instance.")
        if not isinstance(user_prompt, str):
            raise ValueError("Invalid user_prompt.")
        user_prompt = user_prompt.strip()
        messages = [
            ChatMessage(role=MessageRole.SYSTEM, content=SYSTEM_PROMPT),
            ChatMessage(role=MessageRole.USER, content=user_prompt),
        ]
        content = plain_chat(llm, messages).message.content or ""
        start, end = content.find("[BEGIN]"), content.find("[END]")
        if start != -1 and end > start:
            markdown = content[start + len("[BEGIN]"):end].strip()
        else:
            markdown = content.strip()  # no markers: take the whole answer, as PlanExe does
        return cls(SYSTEM_PROMPT, user_prompt, {"response_content": content}, markdown, llm_metadata(llm))

    def to_dict(self, include_metadata: bool = True, include_system_prompt: bool = True, include_user_prompt: bool = True) -> dict[str, Any]:
        d = dict(self.response)
        d["markdown"] = self.markdown
        if include_metadata:
            d["metadata"] = self.metadata
        if include_system_prompt:
            d["system_prompt"] = self.system_prompt
        if include_user_prompt:
            d["user_prompt"] = self.user_prompt
        return d

    def save_raw(self, file_path: str) -> None:
        write_json(str(file_path), self.to_dict())

    def save_markdown(self, file_path: str) -> None:
        write_text(str(file_path), self.markdown)
