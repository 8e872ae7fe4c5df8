"""The double's single-call steps: one small class per PlanExe step, all on :class:`StructuredStep`.

Class names are PlanExe's (so the pipeline module exposes the same names); models, field
names and prompts are the double's own and deliberately short. List lengths are bounded so
that the loops fed by these lists get PlanExe's typical sizes (see GRAPH.md).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional

from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.llms.llm import LLM
from pydantic import BaseModel, Field

from worker_plan_internal.llm_util.structured_step import (
    StructuredStep,
    exact_list_model,
    llm_metadata,
    plain_chat,
    render_markdown,
    stable_uuid,
    write_json,
    write_text,
)

# ----------------------------------------------------------------------------- vetting


class RedlineVerdict(BaseModel):
    verdict: Literal["allow", "allow_with_caution", "refuse"]
    rationale: str = Field(description="Why, in one or two sentences.")


class RedlineGate(StructuredStep):
    RESPONSE_MODEL = RedlineVerdict
    SYSTEM_PROMPT = "Decide whether the plan described by the user may be worked on. Give a verdict and a short rationale."
    TITLE = "Redline Gate"


# ----------------------------------------------------------------------------- purpose, type


class PurposeInfo(BaseModel):
    topic: str = Field(description="The plan's topic in a few words.")
    purpose: Literal["business", "personal", "other"]
    purpose_detailed: str = Field(description="One sentence on what kind of plan this is.")


class IdentifyPurpose(StructuredStep):
    RESPONSE_MODEL = PurposeInfo
    SYSTEM_PROMPT = "Classify the plan as business, personal or other, and name its topic."
    TITLE = "Purpose"


class PlanTypeInfo(BaseModel):
    plan_type: Literal["physical", "digital"] = Field(description="physical if any part needs a real place.")
    rationale: str


class IdentifyPlanType(StructuredStep):
    RESPONSE_MODEL = PlanTypeInfo
    SYSTEM_PROMPT = "Say whether carrying out the plan needs physical locations or is purely digital."
    TITLE = "Plan Type"


# ----------------------------------------------------------------------------- locations .. assumptions


class Location(BaseModel):
    name: str
    reason: str


class LocationsInfo(BaseModel):
    locations: list[Location] = Field(min_length=1, max_length=3)
    summary: str


class PhysicalLocations(StructuredStep):
    RESPONSE_MODEL = LocationsInfo
    SYSTEM_PROMPT = "Suggest where the plan could take place and why."
    TITLE = "Physical Locations"


class CurrencyInfo(BaseModel):
    primary_currency: str
    secondary_currencies: list[str] = Field(max_length=2)
    rationale: str


class CurrencyStrategy(StructuredStep):
    RESPONSE_MODEL = CurrencyInfo
    SYSTEM_PROMPT = "Pick the currency the budget should use, given the locations."
    TITLE = "Currency Strategy"


class Risk(BaseModel):
    title: str
    impact: Literal["low", "medium", "high"]
    mitigation: str


class RisksInfo(BaseModel):
    risks: list[Risk] = Field(min_length=3, max_length=5)


class IdentifyRisks(StructuredStep):
    RESPONSE_MODEL = RisksInfo
    SYSTEM_PROMPT = "List the main risks of the plan with a mitigation for each."
    TITLE = "Risks"


class Assumption(BaseModel):
    question: str
    assumption: str


class AssumptionsInfo(BaseModel):
    assumptions: list[Assumption] = Field(min_length=3, max_length=5)


class MakeAssumptions(StructuredStep):
    RESPONSE_MODEL = AssumptionsInfo
    SYSTEM_PROMPT = "State the assumptions the plan needs where the description is silent."
    TITLE = "Assumptions"

    def save_assumptions(self, file_path: str) -> None:
        write_json(str(file_path), self.response["assumptions"])


class DistilledInfo(BaseModel):
    key_assumptions: list[str] = Field(min_length=3, max_length=5)


class DistillAssumptions(StructuredStep):
    RESPONSE_MODEL = DistilledInfo
    SYSTEM_PROMPT = "Reduce the assumptions to the few that matter most, one line each."
    TITLE = "Distilled Assumptions"


class AssumptionIssue(BaseModel):
    issue: str
    recommendation: str


class ReviewAssumptionsInfo(BaseModel):
    issues: list[AssumptionIssue] = Field(min_length=2, max_length=4)
    conclusion: str


class ReviewAssumptions(StructuredStep):
    RESPONSE_MODEL = ReviewAssumptionsInfo
    SYSTEM_PROMPT = "Review the assumptions: what is missing, inconsistent or too optimistic?"
    TITLE = "Review of Assumptions"


# ----------------------------------------------------------------------------- assessment, plan


class PreProjectInfo(BaseModel):
    go_no_go: Literal["go", "go_with_conditions", "no_go"]
    immediate_actions: list[str] = Field(min_length=2, max_length=4)
    summary: str


class PreProjectAssessment(StructuredStep):
    RESPONSE_MODEL = PreProjectInfo
    SYSTEM_PROMPT = "Assess whether the project is ready to start and what must happen first."
    TITLE = "Pre-project Assessment"

    def save_preproject_assessment(self, file_path: str) -> None:
        write_json(str(file_path), self.response)


class Milestone(BaseModel):
    name: str
    month: int = Field(ge=1, le=24)


class ProjectPlanInfo(BaseModel):
    goal_statement: str
    smart_criteria: list[str] = Field(min_length=3, max_length=5)
    milestones: list[Milestone] = Field(min_length=3, max_length=5)
    stakeholders: list[str] = Field(min_length=2, max_length=4)


class ProjectPlan(StructuredStep):
    RESPONSE_MODEL = ProjectPlanInfo
    SYSTEM_PROMPT = "Write the project plan: goal, success criteria, milestones and stakeholders."
    TITLE = "Project Plan"


# ----------------------------------------------------------------------------- governance


class GovernanceInfo(BaseModel):
    items: list[str] = Field(min_length=3, max_length=5)
    summary: str


def _governance(title: str, ask: str) -> type[StructuredStep]:
    return type(title.replace(" ", ""), (StructuredStep,), {
        "RESPONSE_MODEL": GovernanceInfo,
        "SYSTEM_PROMPT": f"Governance, {ask}. Answer with a short list and a summary.",
        "TITLE": title,
        "__module__": __name__,
    })


GovernancePhase1Audit = _governance("Governance Phase1 Audit", "first pass: where could oversight fail")
GovernancePhase2Bodies = _governance("Governance Phase2 Bodies", "which bodies steer and oversee the project")
GovernancePhase3ImplPlan = _governance("Governance Phase3 Impl Plan", "how the governance bodies get set up")
GovernancePhase4DecisionEscalationMatrix = _governance(
    "Governance Phase4 Decision Escalation Matrix", "who decides what, and where decisions escalate")
GovernancePhase5MonitoringProgress = _governance("Governance Phase5 Monitoring Progress", "how progress is monitored")
GovernancePhase6Extra = _governance("Governance Phase6 Extra", "what the earlier governance answers missed")


# ----------------------------------------------------------------------------- resources, team


class RelatedProject(BaseModel):
    name: str
    lesson: str


class RelatedInfo(BaseModel):
    projects: list[RelatedProject] = Field(min_length=2, max_length=3)


class RelatedResources(StructuredStep):
    RESPONSE_MODEL = RelatedInfo
    SYSTEM_PROMPT = "Name similar projects and one lesson from each."
    TITLE = "Related Resources"


class TeamMember(BaseModel):
    role: str
    responsibility: str


class TeamInfo(BaseModel):
    members: list[TeamMember] = Field(min_length=3, max_length=4)


class FindTeamMembers(StructuredStep):
    RESPONSE_MODEL = TeamInfo
    SYSTEM_PROMPT = "List the roles the project team needs."
    TITLE = "Team Members"

    team_member_list: list[dict[str, Any]]

    def after_response(self, **context: Any) -> None:
        self.team_member_list = [
            {"id": stable_uuid("team", i, m["role"]), **m} for i, m in enumerate(self.response["members"])
        ]


class ContractType(BaseModel):
    contract_type: Literal["full_time_employee", "part_time_employee", "contractor", "volunteer"]
    justification: str


class BackgroundStory(BaseModel):
    name: str
    background: str


class EnvironmentInfo(BaseModel):
    equipment: str
    facility: str


class _EnrichTeam(StructuredStep):
    """Adds one answer per team member, matched by position."""

    ITEM_TYPE: ClassVar[type[BaseModel]]
    team_member_list: list[dict[str, Any]]

    @classmethod
    def response_model(cls, **context: Any) -> type[BaseModel]:
        return exact_list_model(f"{cls.__name__}Result", "entries", cls.ITEM_TYPE, len(context["team_member_list"]),
                                "One entry per team member, in the given order.")

    @classmethod
    def execute(cls, llm: LLM, user_prompt: str, team_member_list: list[dict[str, Any]]) -> "_EnrichTeam":  # type: ignore[override]
        return super().execute(llm, user_prompt, team_member_list=team_member_list)  # type: ignore[return-value]

    def after_response(self, **context: Any) -> None:
        self.team_member_list = [
            {**member, **entry} for member, entry in zip(context["team_member_list"], self.response["entries"])
        ]


class EnrichTeamMembersWithContractType(_EnrichTeam):
    ITEM_TYPE = ContractType
    SYSTEM_PROMPT = "For each team member, say how they should be engaged."
    TITLE = "Contract Types"


class EnrichTeamMembersWithBackgroundStory(_EnrichTeam):
    ITEM_TYPE = BackgroundStory
    SYSTEM_PROMPT = "For each team member, invent a short plausible background."
    TITLE = "Background Stories"


class EnrichTeamMembersWithEnvironmentInfo(_EnrichTeam):
    ITEM_TYPE = EnvironmentInfo
    SYSTEM_PROMPT = "For each team member, say what equipment and workplace they need."
    TITLE = "Environment"


class TeamReviewInfo(BaseModel):
    omissions: list[str] = Field(min_length=1, max_length=3)
    suggestions: list[str] = Field(min_length=1, max_length=3)


class ReviewTeam(StructuredStep):
    RESPONSE_MODEL = TeamReviewInfo
    SYSTEM_PROMPT = "Review the team: which roles are missing and what would you change?"
    TITLE = "Team Review"


# ----------------------------------------------------------------------------- swot, data


class SWOTInfo(BaseModel):
    strengths: list[str] = Field(min_length=2, max_length=4)
    weaknesses: list[str] = Field(min_length=2, max_length=4)
    opportunities: list[str] = Field(min_length=2, max_length=4)
    threats: list[str] = Field(min_length=2, max_length=4)


_PURPOSE_FOCUS = {
    "business": "Weigh market, money and competition.",
    "personal": "Weigh the person's time, health and motivation.",
    "other": "Weigh the concerns that matter for this kind of plan.",
}


def purpose_of(identify_purpose_dict: Optional[dict[str, Any]]) -> str:
    """business, personal or other (PlanExe picks a system prompt by it)."""
    purpose = (identify_purpose_dict or {}).get("purpose", "other")
    if purpose not in _PURPOSE_FOCUS:
        raise ValueError(f"Invalid purpose {purpose!r}: expected business, personal or other")
    return purpose


class SWOTAnalysis(StructuredStep):
    RESPONSE_MODEL = SWOTInfo
    TITLE = "SWOT Analysis"

    @classmethod
    def system_prompt_for(cls, **context: Any) -> str:
        return "Write a SWOT analysis of the plan. " + _PURPOSE_FOCUS[purpose_of(context.get("identify_purpose_dict"))]

    @classmethod
    def execute(cls, llm: LLM, query: str, identify_purpose_dict: Optional[dict[str, Any]]) -> "SWOTAnalysis":  # type: ignore[override]
        return super().execute(llm, query, identify_purpose_dict=identify_purpose_dict)  # type: ignore[return-value]

    def to_markdown(self, include_metadata: bool = False, include_purpose: bool = False) -> str:
        return self.markdown


class DataCollectionInfo(BaseModel):
    data_to_collect: list[str] = Field(min_length=3, max_length=5)
    validation_steps: list[str] = Field(min_length=2, max_length=3)


class DataCollection(StructuredStep):
    RESPONSE_MODEL = DataCollectionInfo
    SYSTEM_PROMPT = "Which data must be collected to carry out the plan, and how is it validated?"
    TITLE = "Data Collection"


# ----------------------------------------------------------------------------- documents


class DocumentToFind(BaseModel):
    document_name: str
    where_to_look: str


class DocumentToCreate(BaseModel):
    document_name: str
    purpose: str


class IdentifiedDocumentsInfo(BaseModel):
    documents_to_find: list[DocumentToFind] = Field(min_length=4, max_length=5)
    documents_to_create: list[DocumentToCreate] = Field(min_length=4, max_length=5)


class IdentifyDocuments(StructuredStep):
    RESPONSE_MODEL = IdentifiedDocumentsInfo
    TITLE = "Identified Documents"

    documents_to_find: list[dict[str, Any]]
    documents_to_create: list[dict[str, Any]]

    @classmethod
    def system_prompt_for(cls, **context: Any) -> str:
        return ("List documents the project must find and documents it must create. "
                + _PURPOSE_FOCUS[purpose_of(context.get("identify_purpose_dict"))])

    @classmethod
    def execute(cls, llm: LLM, user_prompt: str, identify_purpose_dict: Optional[dict[str, Any]]) -> "IdentifyDocuments":  # type: ignore[override]
        return super().execute(llm, user_prompt, identify_purpose_dict=identify_purpose_dict)  # type: ignore[return-value]

    def after_response(self, **context: Any) -> None:
        self.documents_to_find = [
            {"id": stable_uuid("find", i, d["document_name"]), **d} for i, d in enumerate(self.response["documents_to_find"])
        ]
        self.documents_to_create = [
            {"id": stable_uuid("create", i, d["document_name"]), **d}
            for i, d in enumerate(self.response["documents_to_create"])
        ]

    def save_json_documents_to_find(self, file_path: str) -> None:
        write_json(str(file_path), self.documents_to_find)

    def save_json_documents_to_create(self, file_path: str) -> None:
        write_json(str(file_path), self.documents_to_create)


class KeepDecision(BaseModel):
    rationale: str = Field(description="Why this document is needed early.")


class FilterInfo(BaseModel):
    keep: list[KeepDecision] = Field(min_length=3, max_length=4, description="The documents to keep, most important first.")


class _FilterDocuments(StructuredStep):
    """Keeps the first documents, one per 'keep' decision (typically 3-4 of 4-5)."""

    RESPONSE_MODEL = FilterInfo
    filtered_documents: list[dict[str, Any]]

    @staticmethod
    def process_documents_and_integer_ids(documents: list[dict[str, Any]]) -> tuple[str, dict[int, str]]:
        """The documents with small integer ids (easier for an LLM than UUIDs), and the id map back."""
        mapping = {i: str(doc.get("id")) for i, doc in enumerate(documents, start=1)}
        listed = [{"id": i, **{k: v for k, v in doc.items() if k != "id"}} for i, doc in enumerate(documents, start=1)]
        return json.dumps(listed, indent=2), mapping

    @classmethod
    def system_prompt_for(cls, **context: Any) -> str:
        return "Pick the documents that are needed at the start; drop duplicates and nice-to-haves. " + _PURPOSE_FOCUS[
            purpose_of(context.get("identify_purpose_dict"))]

    @classmethod
    def execute(  # type: ignore[override]
        cls,
        llm: LLM,
        user_prompt: str,
        identified_documents_raw_json: list[dict[str, Any]],
        integer_id_to_document_uuid: dict[int, str],
        identify_purpose_dict: Optional[dict[str, Any]],
    ) -> "_FilterDocuments":
        return super().execute(  # type: ignore[return-value]
            llm, user_prompt, documents=identified_documents_raw_json, identify_purpose_dict=identify_purpose_dict
        )

    def after_response(self, **context: Any) -> None:
        documents = context["documents"]
        self.filtered_documents = [dict(doc) for doc in documents[: len(self.response["keep"])]]

    def save_filtered_documents(self, file_path: str) -> None:
        write_json(str(file_path), self.filtered_documents)


class FilterDocumentsToFind(_FilterDocuments):
    TITLE = "Documents to Find (filtered)"


class FilterDocumentsToCreate(_FilterDocuments):
    TITLE = "Documents to Create (filtered)"


# ----------------------------------------------------------------------------- WBS levels 1-2, pitch


class _CompleteStep(StructuredStep):
    """PlanExe's WBS and pitch steps: ``sllm.complete(prompt)``; raw file = response + metadata + query."""

    USE_COMPLETE = True

    def raw_response_dict(self, include_metadata: bool = True, include_query: bool = True) -> dict[str, Any]:
        d = dict(self.response)
        if include_metadata:
            d["metadata"] = self.metadata
        if include_query:
            d["query"] = self.user_prompt
        return d


class WBSLevel1Info(BaseModel):
    project_title: str
    final_deliverable: str


class CreateWBSLevel1(_CompleteStep):
    RESPONSE_MODEL = WBSLevel1Info
    SYSTEM_PROMPT = "Name the project and its final deliverable (top of the work breakdown structure)."

    @property
    def project_title(self) -> str:
        return self.response["project_title"]

    def cleanedup_dict(self) -> dict[str, Any]:
        return {
            "id": stable_uuid("wbs1", self.response["project_title"]),
            "project_title": self.response["project_title"],
            "final_deliverable": self.response["final_deliverable"],
        }


class LeadPhase(BaseModel):
    major_phase_title: str
    subtasks: list[str] = Field(min_length=3, max_length=3, description="Subtask descriptions.")


class FollowUpPhase(BaseModel):
    major_phase_title: str
    subtasks: list[str] = Field(min_length=2, max_length=2, description="Subtask descriptions.")


class WBSLevel2Info(BaseModel):
    # A fixed shape (3 + 2 subtasks) gives PlanExe's typical loop sizes downstream:
    # 5 leaf tasks for WBS level 3, and 2 + 5 = 7 task ids = 3 duration chunks of 3.
    major_phases: tuple[LeadPhase, FollowUpPhase]


class CreateWBSLevel2(_CompleteStep):
    RESPONSE_MODEL = WBSLevel2Info
    SYSTEM_PROMPT = "Split the project into major phases, each with its subtasks."

    @property
    def major_phases_with_subtasks(self) -> list[dict[str, Any]]:
        phases = []
        for pi, phase in enumerate(self.response["major_phases"]):
            phase_id = stable_uuid("wbs2-phase", pi, phase["major_phase_title"])
            phases.append({
                "id": phase_id,
                "major_phase_title": phase["major_phase_title"],
                "subtasks": [
                    {"id": stable_uuid("wbs2-subtask", phase_id, si, text), "description": text}
                    for si, text in enumerate(phase["subtasks"])
                ],
            })
        return phases


class PitchInfo(BaseModel):
    pitch: str
    why_this_pitch_works: str
    target_audience: str


class CreatePitch(_CompleteStep):
    RESPONSE_MODEL = PitchInfo
    SYSTEM_PROMPT = "Write a short pitch for the project."


class Dependency(BaseModel):
    dependent_task_id: str
    depends_on_task_id_list: list[str] = Field(max_length=2)
    explanation: str


class DependenciesInfo(BaseModel):
    task_dependency_details: list[Dependency] = Field(min_length=2, max_length=4)


class IdentifyWBSTaskDependencies(_CompleteStep):
    RESPONSE_MODEL = DependenciesInfo
    SYSTEM_PROMPT = "Which tasks must wait for which other tasks?"


@dataclass
class ConvertPitchToMarkdown:
    """A plain-text call (``llm.chat``), as in PlanExe."""

    system_prompt: str
    user_prompt: str
    response: dict[str, Any]
    markdown: str
    metadata: dict[str, Any]

    SYSTEM_PROMPT: ClassVar[str] = "Rewrite the pitch as readable markdown."

    @classmethod
    def execute(cls, llm: LLM, user_prompt: str) -> "ConvertPitchToMarkdown":
        if not isinstance(llm, LLM):
            raise ValueError("Invalid LLM instance.")
        messages = [
            ChatMessage(role=MessageRole.SYSTEM, content=cls.SYSTEM_PROMPT),
            ChatMessage(role=MessageRole.USER, content=user_prompt),
        ]
        text = plain_chat(llm, messages).message.content or ""
        return cls(cls.SYSTEM_PROMPT, user_prompt, {"response_content": text}, f"# Pitch\n\n{text}\n", llm_metadata(llm))

    def to_dict(self) -> dict[str, Any]:
        return {**self.response, "markdown": self.markdown, "metadata": self.metadata,
                "system_prompt": self.system_prompt, "user_prompt": self.user_prompt}

    def save_raw(self, file_path: str) -> None:
        write_json(str(file_path), self.to_dict())

    def save_markdown(self, file_path: str) -> None:
        write_text(str(file_path), self.markdown)


# ----------------------------------------------------------------------------- summary


class ExecutiveSummaryInfo(BaseModel):
    summary: str
    key_points: list[str] = Field(min_length=3, max_length=5)
    recommendation: str


class ExecutiveSummary(StructuredStep):
    RESPONSE_MODEL = ExecutiveSummaryInfo
    SYSTEM_PROMPT = "Summarise the whole plan for a busy reader."
    TITLE = "Executive Summary"


__all__ = [name for name, obj in list(globals().items()) if isinstance(obj, type) and obj.__module__ == __name__]
__all__ += ["purpose_of", "render_markdown"]
