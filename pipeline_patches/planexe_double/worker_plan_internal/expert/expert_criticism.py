"""One expert's criticism of the plan: one structured call per expert, independent of the others."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.llms.llm import LLM
from pydantic import BaseModel, Field

from worker_plan_internal.llm_util.structured_step import llm_metadata, structured_chat, write_json


class Concern(BaseModel):
    title: str
    detail: str
    mitigation: str


class Consultation(BaseModel):
    concerns: list[Concern] = Field(min_length=2, max_length=3)
    must_do: list[str] = Field(min_length=1, max_length=3)
    should_do: list[str] = Field(min_length=1, max_length=3)
    next_meeting: str


@dataclass
class ExpertCriticism:
    query: str
    response: dict[str, Any]
    metadata: dict[str, Any]
    feedback_list: list[dict[str, Any]]
    primary_actions: list[str]
    secondary_actions: list[str]
    follow_up: str

    @classmethod
    def format_system(cls, expert: dict[str, Any]) -> str:
        """The system prompt that puts the model in this expert's shoes."""
        if not isinstance(expert, dict):
            raise ValueError("Invalid expert.")
        return (
            f"You are a {expert.get('title', 'domain expert')} "
            f"(knowledge: {expert.get('knowledge', 'unspecified')}; skills: {expert.get('skills', 'unspecified')}). "
            "Criticise the plan frankly and say what must change."
        )

    @classmethod
    def format_query(cls, document_title: str, document_content: str) -> str:
        if not isinstance(document_title, str) or not isinstance(document_content, str):
            raise ValueError("Invalid document.")
        return f"Document '{document_title}':\n{document_content}"

    @classmethod
    def execute(cls, llm: LLM, query: str, system_prompt: Optional[str]) -> "ExpertCriticism":
        if not isinstance(llm, LLM):
            raise ValueError("Invalid LLM instance.")
        if not isinstance(query, str):
            raise ValueError("Invalid query.")
        messages = []
        if system_prompt:
            messages.append(ChatMessage(role=MessageRole.SYSTEM, content=system_prompt))
        messages.append(ChatMessage(role=MessageRole.USER, content=query))
        chat_response = structured_chat(llm, Consultation, messages)
        response = json.loads(chat_response.message.content)
        return cls(
            query=query,
            response=response,
            metadata=llm_metadata(llm),
            feedback_list=[dict(c) for c in response["concerns"]],
            primary_actions=response["must_do"],
            secondary_actions=response["should_do"],
            follow_up=response["next_meeting"],
        )

    def to_dict(self, include_metadata: bool = True, include_query: bool = True) -> dict[str, Any]:
        d = dict(self.response)
        if include_metadata:
            d["metadata"] = self.metadata
        if include_query:
            d["query"] = self.query
        return d

    def save_raw(self, file_path: str) -> None:
        write_json(str(file_path), self.to_dict())
