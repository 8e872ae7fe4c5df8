"""Find experts to review the plan: two chained calls (the second asks for more, seeing the first).

Expert ids are ``uuid5`` of the expert (PlanExe draws ``uuid4``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.llms.llm import LLM
from pydantic import BaseModel, Field

from worker_plan_internal.llm_util.llm_executor import LLMExecutor, PipelineStopRequested
from worker_plan_internal.llm_util.structured_step import PromptedResponse, llm_metadata, stable_uuid, structured_chat, write_json

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "Name experts whose criticism would improve this plan: their title, knowledge, skills and why they help."
FOLLOW_UP = "Name a few more, different experts."


class Expert(BaseModel):
    expert_title: str
    expert_knowledge: str
    expert_skills: str
    expert_why: str


class ExpertList(BaseModel):
    experts: list[Expert] = Field(min_length=2, max_length=3)


@dataclass
class ExpertFinder(PromptedResponse):
    system_prompt: str
    user_prompt: str
    response: dict[str, Any]
    metadata: dict[str, Any]
    expert_list: list[dict[str, Any]]

    @classmethod
    def execute(cls, llm_executor: LLMExecutor, user_prompt: str) -> "ExpertFinder":
        if not isinstance(llm_executor, LLMExecutor):
            raise ValueError("Invalid LLMExecutor instance.")
        if not isinstance(user_prompt, str):
            raise ValueError("Invalid query.")
        messages1 = [
            ChatMessage(role=MessageRole.SYSTEM, content=SYSTEM_PROMPT),
            ChatMessage(role=MessageRole.USER, content=user_prompt),
        ]
        result1 = cls._call(llm_executor, messages1, 1)
        messages2 = messages1 + [
            ChatMessage(role=MessageRole.ASSISTANT, content=result1["content"]),
            ChatMessage(role=MessageRole.USER, content=FOLLOW_UP),
        ]
        result2 = cls._call(llm_executor, messages2, 2)
        experts = json.loads(result1["content"])["experts"] + json.loads(result2["content"])["experts"]
        expert_list = [
            {
                "id": stable_uuid("expert", i, e["expert_title"]),
                "title": e["expert_title"],
                "knowledge": e["expert_knowledge"],
                "skills": e["expert_skills"],
                "why": e["expert_why"],
            }
            for i, e in enumerate(experts)
        ]
        metadata = {"result1": result1["metadata"], "result2": result2["metadata"]}
        return cls(SYSTEM_PROMPT, user_prompt, {"experts": experts}, metadata, expert_list)

    @staticmethod
    def _call(llm_executor: LLMExecutor, messages: list[ChatMessage], number: int) -> dict[str, Any]:
        def execute_function(llm: LLM) -> dict[str, Any]:
            chat_response = structured_chat(llm, ExpertList, messages)
            return {"content": chat_response.message.content, "metadata": llm_metadata(llm)}

        try:
            return llm_executor.run(execute_function)
        except PipelineStopRequested:
            raise
        except Exception as exc:
            logger.error("Expert finder call %d failed.", number, exc_info=True)
            raise ValueError(f"Expert finder call {number} failed.") from exc

    def save_cleanedup(self, file_path: str) -> None:
        write_json(str(file_path), self.expert_list)
