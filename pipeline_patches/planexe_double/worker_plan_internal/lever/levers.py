"""Levers and scenarios: brainstorm, deduplicate, enrich (in batches), focus, combine, select.

Each step takes PlanExe's ``LLMExecutor`` and makes its call(s) through it, as PlanExe's
lever classes do. For a typical plan every step is one call: 5 levers, enriched in batches
of ``BATCH_SIZE`` = 5. Lever ids are ``uuid5`` of the lever (PlanExe draws ``uuid4``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from llama_index.core.llms.llm import LLM
from pydantic import BaseModel, Field, create_model

from worker_plan_internal.llm_util.llm_executor import LLMExecutor, PipelineStopRequested
from worker_plan_internal.llm_util.structured_step import (
    exact_list_model,
    llm_metadata,
    stable_uuid,
    structured_chat,
    system_user,
    write_json,
    write_text,
)

logger = logging.getLogger(__name__)

BATCH_SIZE = 5
TARGET_VITAL_LEVER_COUNT = 5
_IMPORTANCE_ORDER = ("critical", "high", "medium", "low")


def _ask(llm_executor: LLMExecutor, model: type[BaseModel], system_prompt: str, user_prompt: str, what: str) -> dict[str, Any]:
    """One call through the executor: the answer as a dict, plus the model's metadata."""

    def execute_function(llm: LLM) -> dict[str, Any]:
        raw = structured_chat(llm, model, system_user(system_prompt, user_prompt)).raw
        return {"response": raw.model_dump(mode="json"), "metadata": llm_metadata(llm)}

    try:
        return llm_executor.run(execute_function)
    except PipelineStopRequested:
        raise
    except Exception as exc:
        logger.error("%s: LLM interaction failed.", what, exc_info=True)
        raise ValueError(f"{what}: LLM interaction failed.") from exc


# ----------------------------------------------------------------------------- identify


class Lever(BaseModel):
    name: str
    consequences: str
    options: list[str] = Field(min_length=3, max_length=3)
    review: str


class LeverBrainstorm(BaseModel):
    levers: list[Lever] = Field(min_length=5, max_length=5)
    summary: str


@dataclass
class IdentifyPotentialLevers:
    system_prompt: str
    user_prompt: str
    responses: list[dict[str, Any]]
    levers: list[dict[str, Any]]
    metadata: dict[str, Any]

    SYSTEM_PROMPT = "Brainstorm the levers (choices the plan's owner controls) that change its outcome."

    @classmethod
    def execute(cls, llm_executor: LLMExecutor, user_prompt: str) -> "IdentifyPotentialLevers":
        if not isinstance(llm_executor, LLMExecutor):
            raise ValueError("Invalid LLMExecutor instance.")
        responses, metadata = [], {}
        # PlanExe loops over a list of user prompts; today it holds one, so one call.
        for index, prompt in enumerate([user_prompt], start=1):
            result = _ask(llm_executor, LeverBrainstorm, cls.SYSTEM_PROMPT, prompt, "IdentifyPotentialLevers")
            responses.append(result["response"])
            metadata[f"metadata_{index}"] = result["metadata"]
        levers = []
        for response in responses:
            for lever in response["levers"]:
                levers.append({"lever_id": stable_uuid("lever", len(levers), lever["name"]), **lever})
        return cls(cls.SYSTEM_PROMPT, user_prompt, responses, levers, metadata)

    def to_dict(self) -> dict[str, Any]:
        return {"responses": self.responses, "levers": self.levers, "metadata": self.metadata,
                "system_prompt": self.system_prompt, "user_prompt": self.user_prompt}

    def save_raw(self, file_path: str) -> None:
        write_json(file_path, self.to_dict())

    def save_clean(self, file_path: str) -> None:
        write_json(file_path, self.levers)


# ----------------------------------------------------------------------------- deduplicate


class LeverDecision(BaseModel):
    classification: Literal["primary", "secondary", "remove"]
    justification: str


@dataclass
class DeduplicateLevers:
    """One decision per lever, by position; 'remove' drops it (never below 3 levers)."""

    system_prompt: str
    user_prompt: str
    response: dict[str, Any]
    deduplicated_levers: list[dict[str, Any]]
    metadata: dict[str, Any]

    SYSTEM_PROMPT = "Some levers overlap. Classify each lever, in order, as primary, secondary or remove."

    @classmethod
    def execute(cls, llm_executor: LLMExecutor, project_context: str, raw_levers_list: list[dict[str, Any]]) -> "DeduplicateLevers":
        user_prompt = f"{project_context}\n\nLevers:\n{json.dumps(raw_levers_list, indent=2)}"
        model = exact_list_model("LeverDecisions", "decisions", LeverDecision, len(raw_levers_list), "One per lever, in order.")
        result = _ask(llm_executor, model, cls.SYSTEM_PROMPT, user_prompt, "DeduplicateLevers")
        decisions = result["response"]["decisions"]
        kept = [
            {**lever, "deduplication_justification": d["justification"]}
            for lever, d in zip(raw_levers_list, decisions)
            if d["classification"] != "remove"
        ]
        if len(kept) < min(3, len(raw_levers_list)):
            kept_ids = {lever["lever_id"] for lever in kept}
            for lever, d in zip(raw_levers_list, decisions):
                if len(kept) >= 3:
                    break
                if lever["lever_id"] not in kept_ids:
                    kept.append({**lever, "deduplication_justification": d["justification"]})
            order = {lever["lever_id"]: i for i, lever in enumerate(raw_levers_list)}
            kept.sort(key=lambda lever: order[lever["lever_id"]])
        return cls(cls.SYSTEM_PROMPT, user_prompt, result["response"], kept, result["metadata"])

    def to_dict(self) -> dict[str, Any]:
        return {"response": self.response, "deduplicated_levers": self.deduplicated_levers, "metadata": self.metadata,
                "system_prompt": self.system_prompt, "user_prompt": self.user_prompt}

    def save_raw(self, file_path: str) -> None:
        write_json(file_path, self.to_dict())


# ----------------------------------------------------------------------------- enrich


class LeverCharacterization(BaseModel):
    description: str
    synergy_text: str
    conflict_text: str


@dataclass
class EnrichPotentialLevers:
    """Characterise the levers ``BATCH_SIZE`` at a time; batches are independent calls."""

    characterized_levers: list[dict[str, Any]]
    metadata: list[dict[str, Any]]

    SYSTEM_PROMPT = "For each lever in the batch, describe it and how it helps or hinders the other levers."

    @classmethod
    def execute(cls, llm_executor: LLMExecutor, project_context: str, raw_levers_list: list[dict[str, Any]]) -> "EnrichPotentialLevers":
        all_names = "\n".join(f"- {lever['lever_id']}: {lever['name']}" for lever in raw_levers_list)
        enriched, metadata = [], []
        for start in range(0, len(raw_levers_list), BATCH_SIZE):
            batch = raw_levers_list[start:start + BATCH_SIZE]
            user_prompt = (
                f"{project_context}\n\nAll levers:\n{all_names}\n\nCharacterise these, in order:\n"
                + "\n".join(f"- {lever['name']}" for lever in batch)
            )
            model = exact_list_model("LeverBatch", "characterizations", LeverCharacterization, len(batch), "One per lever.")
            result = _ask(llm_executor, model, cls.SYSTEM_PROMPT, user_prompt, f"EnrichPotentialLevers batch {start // BATCH_SIZE + 1}")
            for lever, char in zip(batch, result["response"]["characterizations"]):
                enriched.append({**lever, **char})
            metadata.append(result["metadata"])
        return cls(enriched, metadata)

    def save_raw(self, file_path: str) -> None:
        write_json(file_path, {"characterized_levers": self.characterized_levers, "metadata": self.metadata})


# ----------------------------------------------------------------------------- focus


class LeverAssessment(BaseModel):
    strategic_importance: Literal["critical", "high", "medium", "low"]
    justification: str


@dataclass
class FocusOnVitalFewLevers:
    system_prompt: str
    user_prompt: str
    response: dict[str, Any]
    vital_levers: list[dict[str, Any]]
    metadata: dict[str, Any]

    SYSTEM_PROMPT = "Rate each lever's importance for the outcome, in order, and summarise."

    @classmethod
    def execute(cls, llm_executor: LLMExecutor, project_context: str, raw_levers_list: list[dict[str, Any]]) -> "FocusOnVitalFewLevers":
        user_prompt = f"{project_context}\n\nLevers:\n{json.dumps(raw_levers_list, indent=2)}"
        base = exact_list_model("VitalLeversBase", "lever_assessments", LeverAssessment, len(raw_levers_list),
                                "One per lever, in order.")
        model = create_model("VitalLeversAssessment", __base__=base, summary=(str, ...))
        result = _ask(llm_executor, model, cls.SYSTEM_PROMPT, user_prompt, "FocusOnVitalFewLevers")
        assessments = result["response"]["lever_assessments"]
        ranked = sorted(
            range(len(assessments)),
            key=lambda i: (_IMPORTANCE_ORDER.index(assessments[i]["strategic_importance"]), i),
        )[:TARGET_VITAL_LEVER_COUNT]
        vital = [raw_levers_list[i] for i in sorted(ranked)]
        return cls(cls.SYSTEM_PROMPT, user_prompt, result["response"], vital, result["metadata"])

    def to_dict(self) -> dict[str, Any]:
        return {"response": self.response, "levers": self.vital_levers, "metadata": self.metadata,
                "system_prompt": self.system_prompt, "user_prompt": self.user_prompt}

    def save_raw(self, file_path: str) -> None:
        write_json(file_path, self.to_dict())


# ----------------------------------------------------------------------------- scenarios


class Scenario(BaseModel):
    scenario_name: str
    strategic_logic: str
    lever_settings: list[str] = Field(min_length=2, max_length=5, description="'lever: chosen option' lines.")


class ScenarioSet(BaseModel):
    core_tension: str
    scenarios: list[Scenario] = Field(min_length=3, max_length=3)


@dataclass
class CandidateScenarios:
    system_prompt: str
    user_prompt: str
    response: dict[str, Any]
    metadata: dict[str, Any]

    SYSTEM_PROMPT = "Combine the levers' options into three coherent scenarios: bold, balanced and cautious."

    @classmethod
    def execute(cls, llm_executor: LLMExecutor, project_context: str, raw_vital_levers: list[dict[str, Any]]) -> "CandidateScenarios":
        levers = "\n".join(f"- {lever['name']}: {', '.join(lever.get('options', []))}" for lever in raw_vital_levers)
        user_prompt = f"{project_context}\n\nVital levers and options:\n{levers}"
        result = _ask(llm_executor, ScenarioSet, cls.SYSTEM_PROMPT, user_prompt, "CandidateScenarios")
        return cls(cls.SYSTEM_PROMPT, user_prompt, result["response"], result["metadata"])

    def to_dict(self) -> dict[str, Any]:
        return {"response": self.response, "metadata": self.metadata,
                "system_prompt": self.system_prompt, "user_prompt": self.user_prompt}

    def save_raw(self, file_path: str) -> None:
        write_json(file_path, self.to_dict())

    def save_clean(self, file_path: str) -> None:
        write_json(file_path, self.response)


class ScenarioFit(BaseModel):
    fit_score: int = Field(ge=1, le=10)
    assessment: str


class FinalChoice(BaseModel):
    chosen_scenario_index: int = Field(ge=1, le=3)
    justification: str


class ScenarioSelection(BaseModel):
    plan_profile: str
    scenario_assessments: list[ScenarioFit] = Field(min_length=3, max_length=3)
    final_choice: FinalChoice


@dataclass
class SelectScenario:
    system_prompt: str
    user_prompt: str
    response: dict[str, Any]
    metadata: dict[str, Any]

    SYSTEM_PROMPT = "Score how well each scenario fits the plan and choose one."

    @classmethod
    def execute(cls, llm_executor: LLMExecutor, project_context: str, scenarios: list[dict[str, Any]]) -> "SelectScenario":
        user_prompt = f"{project_context}\n\nScenarios:\n{json.dumps(scenarios, indent=2)}"
        result = _ask(llm_executor, ScenarioSelection, cls.SYSTEM_PROMPT, user_prompt, "SelectScenario")
        return cls(cls.SYSTEM_PROMPT, user_prompt, result["response"], result["metadata"])

    def to_dict(self) -> dict[str, Any]:
        return {"response": self.response, "metadata": self.metadata,
                "system_prompt": self.system_prompt, "user_prompt": self.user_prompt}

    def save_raw(self, file_path: str) -> None:
        write_json(file_path, self.to_dict())

    def save_clean(self, file_path: str) -> None:
        write_json(file_path, self.response)


# ----------------------------------------------------------------------------- markdown (no LLM)


@dataclass
class StrategicDecisionsMarkdown:
    enriched_levers: list[dict[str, Any]]
    vital_levers: list[dict[str, Any]]
    summary: str

    def to_markdown(self) -> str:
        vital_ids = {lever["lever_id"] for lever in self.vital_levers}
        rows = ["# Strategic Decisions", ""]
        for index, lever in enumerate(self.enriched_levers, start=1):
            marker = " (vital)" if lever["lever_id"] in vital_ids else ""
            rows += [f"## Decision {index}: {lever['name']}{marker}", "", lever.get("description", ""), "",
                     "Options:"] + [f"- {o}" for o in lever.get("options", [])] + [""]
        rows += ["## Summary", "", self.summary, ""]
        return "\n".join(rows)

    def save_markdown(self, file_path: str) -> None:
        write_text(file_path, self.to_markdown())


@dataclass
class ScenariosMarkdown:
    scenarios: list[dict[str, Any]]
    selection: dict[str, Any]

    def to_markdown(self) -> str:
        choice = self.selection.get("final_choice", {})
        chosen = choice.get("chosen_scenario_index", 1)
        rows = ["# Scenarios", ""]
        fits = self.selection.get("scenario_assessments", [])
        for index, scenario in enumerate(self.scenarios, start=1):
            tag = " (chosen)" if index == chosen else ""
            rows += [f"## {index}. {scenario['scenario_name']}{tag}", "", scenario["strategic_logic"], ""]
            rows += [f"- {s}" for s in scenario.get("lever_settings", [])]
            if index <= len(fits):
                rows += ["", f"Fit: {fits[index - 1]['fit_score']}/10. {fits[index - 1]['assessment']}"]
            rows.append("")
        rows += ["## Why", "", choice.get("justification", ""), ""]
        return "\n".join(rows)

    def save_markdown(self, file_path: str) -> None:
        write_text(file_path, self.to_markdown())


__all__ = [
    "CandidateScenarios",
    "DeduplicateLevers",
    "EnrichPotentialLevers",
    "FocusOnVitalFewLevers",
    "IdentifyPotentialLevers",
    "ScenariosMarkdown",
    "SelectScenario",
    "StrategicDecisionsMarkdown",
]
