"""Self-audit: a checklist of 20 red flags, one call per item, each prompt carrying all earlier answers.

Item n's user prompt is the plan plus the answers to items 1..n-1, so the calls are chained
(20 in ALL_DETAILS mode; the pipeline passes ``max_number_of_items=2`` in FAST mode).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal, Optional

from llama_index.core.llms.llm import LLM
from pydantic import BaseModel

from worker_plan_internal.llm_util.llm_executor import LLMExecutor, PipelineStopRequested
from worker_plan_internal.llm_util.structured_step import llm_metadata, structured_chat, system_user, write_json, write_text

logger = logging.getLogger(__name__)

# The double's own checklist: (title, what to check).
CHECKLIST: list[tuple[str, str]] = [
    ("Impossible Science", "Does success need something science says cannot be done?"),
    ("Unproven Approach", "Does success rest on an approach nobody has shown to work at this scale?"),
    ("Empty Jargon", "Does the plan lean on fashionable terms instead of concrete mechanisms?"),
    ("Ignored Risks", "Are serious legal, safety or money risks missing or played down?"),
    ("Unrealistic Schedule", "Are the durations and lead times plausible?"),
    ("Funding Gaps", "Is the money there for the whole runway?"),
    ("Budget Too Small", "Does the budget fit the scope?"),
    ("Rosy Forecasts", "Are forecasts one-sided, without a bad case?"),
    ("Shallow Engineering", "Are the hard technical parts specified?"),
    ("Claims Without Proof", "Are key claims backed by evidence?"),
    ("Vague Deliverables", "Is it clear what 'done' means for each deliverable?"),
    ("Gold Plating", "Does the plan add cost that the goal does not need?"),
    ("Wrong Team Size", "Do roles and headcount fit the work?"),
    ("Legal Exposure", "Are permits, licences and liabilities mapped?"),
    ("Cannot Be Sustained", "Can the result be run and paid for after the project ends?"),
    ("Hard Constraints", "Does the plan depend on constraints that are unlikely to be lifted?"),
    ("Fragile Dependencies", "Does it hinge on outside parties without a fallback?"),
    ("Conflicting Interests", "Do key stakeholders want different things?"),
    ("No Course Correction", "Is there a way to measure progress and change course?"),
    ("Anything Else", "Is there a serious red flag the other items missed?"),
]


class ChecklistAnswer(BaseModel):
    level: Literal["low", "medium", "high"]
    justification: str
    mitigation: str


def format_system_prompt(checklist: list[tuple[str, str]], current_index: int) -> str:
    """The whole checklist for context, with only the current item to be answered."""
    if not 0 <= current_index < len(checklist):
        raise ValueError(f"current_index must be in 0..{len(checklist) - 1}, got {current_index}")
    lines = []
    for i, (title, check) in enumerate(checklist):
        status = "ANSWER THIS ONE" if i == current_index else "context only"
        lines.append(f"{i + 1}. {title}: {check} [{status}]")
    return "You audit a project plan against a checklist of red flags.\n" + "\n".join(lines)


@dataclass
class SelfAudit:
    system_prompt_list: list[str]
    user_prompt_list: list[str]
    checklist_answers: list[dict[str, Any]]
    metadata: dict[str, Any]
    markdown: str

    @classmethod
    def execute(cls, llm_executor: LLMExecutor, user_prompt: str, max_number_of_items: Optional[int] = None) -> "SelfAudit":
        if not isinstance(llm_executor, LLMExecutor):
            raise ValueError("Invalid LLMExecutor instance.")
        if not isinstance(user_prompt, str):
            raise ValueError("Invalid user_prompt.")
        if max_number_of_items is not None and not isinstance(max_number_of_items, int):
            raise ValueError("Invalid max_number_of_items.")
        checklist = CHECKLIST if max_number_of_items is None else CHECKLIST[:max_number_of_items]
        system_prompts = [format_system_prompt(checklist, i) for i in range(len(checklist))]
        user_prompts: list[str] = []
        answers: dict[int, dict[str, Any]] = {}
        cleaned: list[dict[str, Any]] = []
        metadata_list: list[dict[str, Any]] = []
        for index, (title, check) in enumerate(checklist):
            prompt = user_prompt
            if answers:
                prompt = f"{user_prompt}\n\n# Answers so far\n{json.dumps(answers, indent=2)}"
            user_prompts.append(prompt)
            messages = system_user(system_prompts[index], prompt)

            def execute_function(llm: LLM) -> dict[str, Any]:
                return {"answer": structured_chat(llm, ChecklistAnswer, messages).raw, "metadata": llm_metadata(llm)}

            try:
                result = llm_executor.run(execute_function)
            except PipelineStopRequested:
                raise
            except Exception as exc:
                logger.error("Self-audit item %d failed.", index + 1, exc_info=True)
                raise ValueError(f"Self-audit item {index + 1} LLM interaction failed.") from exc
            answer = result["answer"].model_dump(mode="json")
            answers[index + 1] = answer
            cleaned.append({"index": index + 1, "title": title, "subtitle": check, **answer})
            metadata_list.append(result["metadata"])
        return cls(system_prompts, user_prompts, cleaned, {"models": metadata_list}, cls.convert_to_markdown(cleaned))

    @staticmethod
    def convert_to_markdown(checklist_answers: list[dict[str, Any]]) -> str:
        rows = ["| # | Red flag | Level | Why | Mitigation |", "|---|---|---|---|---|"]
        for a in checklist_answers:
            rows.append(f"| {a['index']} | {a['title']} | {a['level']} | {a['justification']} | {a['mitigation']} |")
        return "\n".join(rows) + "\n"

    def to_dict(self, include_metadata: bool = True, include_prompts: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"checklist_answers": self.checklist_answers}
        if include_metadata:
            d["metadata"] = self.metadata
        if include_prompts:
            d["system_prompt_list"] = self.system_prompt_list
            d["user_prompt_list"] = self.user_prompt_list
        return d

    def save_raw(self, file_path: str) -> None:
        write_json(str(file_path), self.to_dict())

    def save_markdown(self, file_path: str) -> None:
        write_text(str(file_path), self.markdown)
