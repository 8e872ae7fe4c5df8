"""Premortem: imagine the project failed and ask why, in one conversation of three rounds.

Each round sees the earlier rounds (chained calls): 3 in ALL_DETAILS mode, 1 in FAST mode.
As in PlanExe, a failed first round is fatal; a failed later round is skipped.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.llms.llm import LLM
from pydantic import BaseModel, Field

from worker_plan_api.speedvsdetail import SpeedVsDetailEnum
from worker_plan_internal.llm_util.llm_executor import LLMExecutor, PipelineStopRequested
from worker_plan_internal.llm_util.structured_step import PromptedResponse, llm_metadata, structured_chat, write_text

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "The project has failed. Name the assumptions that killed it and how the failure unfolded."
FOLLOW_UPS = [
    "Now name different assumptions and failures than before.",
    "Once more, covering kinds of failure not named yet.",
]


class KillerAssumption(BaseModel):
    statement: str
    test_now: str
    falsifier: str


class FailureMode(BaseModel):
    title: str
    story: str
    likelihood_5: int = Field(ge=1, le=5)
    impact_5: int = Field(ge=1, le=5)
    owner: str


class PremortemAnalysis(BaseModel):
    assumptions_to_kill: list[KillerAssumption] = Field(min_length=2, max_length=3)
    failure_modes: list[FailureMode] = Field(min_length=2, max_length=3)


@dataclass
class Premortem(PromptedResponse):
    system_prompt: str
    user_prompt: str
    response: dict[str, Any]
    metadata: dict[str, Any]
    markdown: str

    @classmethod
    def execute(cls, llm_executor: LLMExecutor, speed_vs_detail: SpeedVsDetailEnum, user_prompt: str) -> "Premortem":
        if not isinstance(llm_executor, LLMExecutor):
            raise ValueError("Invalid LLMExecutor instance.")
        if not isinstance(speed_vs_detail, SpeedVsDetailEnum):
            raise ValueError("Invalid SpeedVsDetailEnum instance.")
        if not isinstance(user_prompt, str):
            raise ValueError("Invalid user_prompt.")
        rounds = [user_prompt] + FOLLOW_UPS
        if speed_vs_detail == SpeedVsDetailEnum.FAST_BUT_SKIP_DETAILS:
            rounds = rounds[:1]
        conversation = [ChatMessage(role=MessageRole.SYSTEM, content=SYSTEM_PROMPT)]
        responses: list[dict[str, Any]] = []
        models: list[dict[str, Any]] = []
        for index, content in enumerate(rounds):
            asked = conversation + [ChatMessage(role=MessageRole.USER, content=content)]

            def execute_function(llm: LLM) -> dict[str, Any]:
                raw = structured_chat(llm, PremortemAnalysis, asked).raw
                return {"response": raw.model_dump(mode="json"), "metadata": llm_metadata(llm)}

            try:
                result = llm_executor.run(execute_function)
            except PipelineStopRequested:
                raise
            except Exception as exc:
                logger.error("Premortem round %d failed.", index + 1, exc_info=True)
                if index == 0:
                    raise ValueError("Premortem round 1 LLM interaction failed.") from exc
                continue
            compact = json.dumps(result["response"], separators=(",", ":"))
            conversation = asked + [ChatMessage(role=MessageRole.ASSISTANT, content=compact)]
            responses.append(result["response"])
            models.append(result["metadata"])
        merged = {
            "assumptions_to_kill": [a for r in responses for a in r["assumptions_to_kill"]],
            "failure_modes": [f for r in responses for f in r["failure_modes"]],
        }
        return cls(SYSTEM_PROMPT, user_prompt, merged, {"models": models}, cls.convert_to_markdown(merged))

    @staticmethod
    def convert_to_markdown(analysis: dict[str, Any]) -> str:
        rows = ["## Assumptions to Kill", "", "| ID | Assumption | Test now | Proven false if |", "|---|---|---|---|"]
        for i, a in enumerate(analysis["assumptions_to_kill"], start=1):
            rows.append(f"| A{i} | {a['statement']} | {a['test_now']} | {a['falsifier']} |")
        rows += ["", "## Failure Modes", "", "| ID | Title | Owner | Risk |", "|---|---|---|---|"]
        for i, f in enumerate(analysis["failure_modes"], start=1):
            rows.append(f"| FM{i} | {f['title']} | {f['owner']} | {f['likelihood_5'] * f['impact_5']}/25 |")
        for i, f in enumerate(analysis["failure_modes"], start=1):
            rows += ["", f"### FM{i} {f['title']}", "", f["story"]]
        return "\n".join(rows) + "\n"

    def to_dict(self, include_metadata: bool = True, include_system_prompt: bool = True, include_user_prompt: bool = True, include_markdown: bool = True) -> dict[str, Any]:
        d = super().to_dict(include_metadata, include_system_prompt, include_user_prompt)
        if include_markdown:
            d["markdown"] = self.markdown
        return d

    def save_markdown(self, output_file_path: str) -> None:
        write_text(str(output_file_path), self.markdown)
