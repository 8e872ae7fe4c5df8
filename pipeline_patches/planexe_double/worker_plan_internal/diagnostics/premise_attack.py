"""Attack the plan's premise through five independent lenses (five calls through the executor).

The lenses do not see each other's answers. As in PlanExe, a lens whose call fails is
skipped (logged) and the others still count; ``PipelineStopRequested`` always propagates.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from llama_index.core.llms.llm import LLM
from pydantic import BaseModel, Field

from worker_plan_internal.llm_util.llm_executor import LLMExecutor, PipelineStopRequested
from worker_plan_internal.llm_util.structured_step import llm_metadata, structured_chat, system_user, write_json, write_text

logger = logging.getLogger(__name__)

# (name, what the lens looks at): the double's own five lenses.
LENSES: list[tuple[str, str]] = [
    ("Feasibility", "whether the goal can be reached at all with the stated means"),
    ("Harm", "who could be hurt if the plan goes ahead"),
    ("Incentives", "whose interests the plan really serves"),
    ("Ripple Effects", "what happens later and elsewhere because of the plan"),
    ("Point of No Return", "what becomes impossible to undo once started"),
]


class PremiseCritique(BaseModel):
    core_thesis: str
    reasons: list[str] = Field(min_length=2, max_length=4)
    second_order_effects: list[str] = Field(min_length=2, max_length=3)
    bottom_line: str


def lens_system_prompt(name: str, focus: str) -> str:
    return f"Question the premise of the plan, not its execution. Lens: {name} - look at {focus}."


@dataclass
class PremiseAttack:
    system_prompt_list: list[str]
    user_prompt: str
    response_list: list[dict[str, Any]]
    metadata: dict[str, Any]
    markdown: str

    @classmethod
    def execute(cls, llm_executor: LLMExecutor, user_prompt: str) -> "PremiseAttack":
        if not isinstance(llm_executor, LLMExecutor):
            raise ValueError("Invalid LLMExecutor instance.")
        if not isinstance(user_prompt, str):
            raise ValueError("Invalid user_prompt.")
        prompts, responses, models, sections = [], [], [], []
        for index, (name, focus) in enumerate(LENSES):
            system_prompt = lens_system_prompt(name, focus)
            messages = system_user(system_prompt, user_prompt.strip())

            def execute_function(llm: LLM) -> dict[str, Any]:
                raw = structured_chat(llm, PremiseCritique, messages).raw
                return {"response": raw.model_dump(mode="json"), "metadata": {**llm_metadata(llm), "lens": name}}

            try:
                result = llm_executor.run(execute_function)
            except PipelineStopRequested:
                raise
            except Exception:
                logger.error("Premise attack lens %d (%s) failed; skipping it.", index + 1, name, exc_info=True)
                continue
            prompts.append(system_prompt)
            responses.append(result["response"])
            models.append(result["metadata"])
            sections.append((name, result["response"]))
        return cls(prompts, user_prompt, responses, {"models": models}, cls.convert_to_markdown(sections))

    @staticmethod
    def convert_to_markdown(sections: list[tuple[str, dict[str, Any]]]) -> str:
        rows: list[str] = []
        for number, (name, r) in enumerate(sections, start=1):
            rows += [f"### Premise Attack {number}: {name}", "", f"**{r['core_thesis']}**", "",
                     f"Bottom line: {r['bottom_line']}", "", "Reasons:"]
            rows += [f"- {x}" for x in r["reasons"]] + ["", "Second-order effects:"]
            rows += [f"- {x}" for x in r["second_order_effects"]] + [""]
        return "\n".join(rows)

    def to_dict(self, include_metadata: bool = True, include_system_prompt: bool = True, include_user_prompt: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"response_list": self.response_list}
        if include_metadata:
            d["metadata"] = self.metadata
        if include_system_prompt:
            d["system_prompt_list"] = self.system_prompt_list
        if include_user_prompt:
            d["user_prompt"] = self.user_prompt
        return d

    def save_raw(self, file_path: str) -> None:
        write_json(str(file_path), self.to_dict())

    def save_markdown(self, file_path: str) -> None:
        write_text(str(file_path), self.markdown)
