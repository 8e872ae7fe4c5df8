"""The PlanExe test double's pipeline: PlanExe's 63 Luigi tasks, graph and file names, with simulated LLMs.

    RUN_ID_DIR=/abs/run/dir python -m worker_plan_internal.plan.run_plan_pipeline

What is the same as PlanExe (the surface the plugin is built against): the task class names,
the ``PlanTask`` parameters and methods, every ``requires()`` (same dict keys, same target
classes, looked up as module globals when ``requires()`` runs, so rebinding a name in this
module changes the graph), every ``output()`` key and file name, the number of LLM calls per
task and how they are chained, the loops' per-item and merged files, the FAST truncations,
``ExecutePipeline`` and the ``__main__`` entry point.

What is the double's own: every prompt and model. Plain tasks send a digest of each input
file instead of its text. The loops the plugin re-implements (documents, durations, WBS
level 3, assumptions, expert review) compose their per-item queries exactly as PlanExe
does, because the plugin rebuilds those queries and its output must match byte for byte.
No file depends on the clock or on ``uuid4`` (see ``llm_util/structured_step.py``).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Optional

import luigi
from llama_index.core.llms.llm import LLM

from worker_plan_api.filenames import ExtraFilenameEnum, FilenameEnum
from worker_plan_api.speedvsdetail import SpeedVsDetailEnum
from worker_plan_internal.assume.shorten_markdown import ShortenMarkdown
from worker_plan_internal.diagnostics.premise_attack import PremiseAttack
from worker_plan_internal.diagnostics.premortem import Premortem
from worker_plan_internal.document.draft_document_to_create import DraftDocumentToCreate
from worker_plan_internal.document.draft_document_to_find import DraftDocumentToFind
from worker_plan_internal.expert.expert_criticism import ExpertCriticism
from worker_plan_internal.expert.expert_finder import ExpertFinder
from worker_plan_internal.expert.expert_orchestrator import ExpertOrchestrator
from worker_plan_internal.format_json_for_use_in_query import format_json_for_use_in_query
from worker_plan_internal.lever.levers import (
    CandidateScenarios,
    DeduplicateLevers,
    EnrichPotentialLevers,
    FocusOnVitalFewLevers,
    IdentifyPotentialLevers,
    ScenariosMarkdown,
    SelectScenario,
    StrategicDecisionsMarkdown,
)
from worker_plan_internal.llm_factory import SPECIAL_AUTO_ID, get_llm_names_by_priority, is_valid_llm_name
from worker_plan_internal.llm_util.llm_executor import (
    LLMExecutor,
    LLMModelFromName,
    PipelineStopRequested,
    ShouldStopCallbackParameters,
)
from worker_plan_internal.llm_util.structured_step import digest_query, file_blocks
from worker_plan_internal.luigi_util.obtain_output_files import ObtainOutputFiles
from worker_plan_internal.plan.assemble import (
    ReportGenerator,
    TeamMarkdownDocumentBuilder,
    build_schedule,
    gantt_csv,
    gantt_dhtmlx_html,
    gantt_mermaid_html,
    markdown_rows_with_document,
)
from worker_plan_internal.plan.create_wbs_level3 import CreateWBSLevel3
from worker_plan_internal.plan.estimate_wbs_task_durations import EstimateWBSTaskDurations
from worker_plan_internal.plan.pipeline_environment import PipelineEnvironment
from worker_plan_internal.plan.review_plan import ReviewPlan
from worker_plan_internal.plan.simple_steps import (
    ConvertPitchToMarkdown,
    CreatePitch,
    CreateWBSLevel1,
    CreateWBSLevel2,
    CurrencyStrategy,
    DataCollection,
    DistillAssumptions,
    EnrichTeamMembersWithBackgroundStory,
    EnrichTeamMembersWithContractType,
    EnrichTeamMembersWithEnvironmentInfo,
    ExecutiveSummary,
    FilterDocumentsToCreate,
    FilterDocumentsToFind,
    FindTeamMembers,
    GovernancePhase1Audit,
    GovernancePhase2Bodies,
    GovernancePhase3ImplPlan,
    GovernancePhase4DecisionEscalationMatrix,
    GovernancePhase5MonitoringProgress,
    GovernancePhase6Extra,
    IdentifyDocuments,
    IdentifyPlanType,
    IdentifyPurpose,
    IdentifyRisks,
    IdentifyWBSTaskDependencies,
    MakeAssumptions,
    PhysicalLocations,
    PreProjectAssessment,
    ProjectPlan,
    RedlineGate,
    RelatedResources,
    ReviewAssumptions,
    ReviewTeam,
    SWOTAnalysis,
)
from worker_plan_internal.questions_answers.questions_answers import QuestionsAnswers
from worker_plan_internal.self_audit.self_audit import SelfAudit
from worker_plan_internal.wbs.wbs_populate import WBSPopulate
from worker_plan_internal.wbs.wbs_task import WBSProject, WBSTask

logger = logging.getLogger(__name__)
DEFAULT_LLM_MODEL = "simulated"


# ----------------------------------------------------------------------------- helpers


def _text(target: luigi.LocalTarget) -> str:
    with target.open("r") as f:
        return f.read()


def _json(target: luigi.LocalTarget) -> Any:
    with target.open("r") as f:
        return json.load(f)


def _pick(task: luigi.Task, path: tuple[str, ...]) -> luigi.LocalTarget:
    target = task.input()
    for key in path:
        target = target[key]
    return target


def _digest(task: luigi.Task, *specs: tuple[str, ...]) -> str:
    """Digest query over inputs given as (file label, requires key, output key...)."""
    return digest_query([(spec[0], _text(_pick(task, spec[1:]))) for spec in specs])


def _save(step: Any, task: luigi.Task, raw: str = "raw", markdown: Optional[str] = "markdown") -> None:
    step.save_raw(task.output()[raw].path)
    if markdown:
        step.save_markdown(task.output()[markdown].path)


# The inputs most downstream plain tasks read, in PlanExe's order.
SD = ("strategic_decisions.md", "strategic_decisions_markdown", "markdown")
SC = ("scenarios.md", "scenarios_markdown", "markdown")
AS = ("assumptions.md", "consolidate_assumptions_markdown", "short")
PLAN = ("plan.txt", "setup")


# ----------------------------------------------------------------------------- base task


class PlanTask(luigi.Task):
    # The run directory (a Path, as in PlanExe).
    run_id_dir = luigi.Parameter(default=Path("run"))
    speedvsdetail = luigi.EnumParameter(enum=SpeedVsDetailEnum, default=SpeedVsDetailEnum.ALL_DETAILS_BUT_SLOW)
    # Model names to try, in order.
    llm_models = luigi.ListParameter(default=[DEFAULT_LLM_MODEL])
    # (task, duration) -> None, called after every LLM attempt; may raise PipelineStopRequested.
    _pipeline_executor_callback = luigi.Parameter(
        default=None, significant=False, visibility=luigi.parameter.ParameterVisibility.PRIVATE
    )

    def file_path(self, filename: FilenameEnum) -> Path:
        return self.run_id_dir / filename.value

    def local_target(self, filename: FilenameEnum) -> luigi.LocalTarget:
        return luigi.LocalTarget(self.file_path(filename))

    def create_llm_executor(self) -> LLMExecutor:
        """A fresh executor over ``llm_models`` whose stop check forwards to the pipeline's callback."""

        def should_stop_callback(parameters: ShouldStopCallbackParameters) -> None:
            if self._pipeline_executor_callback is None:
                return
            self._pipeline_executor_callback(self, parameters.total_duration)

        return LLMExecutor(
            llm_models=LLMModelFromName.from_names(list(self.llm_models)),
            should_stop_callback=should_stop_callback,
        )

    def run(self) -> None:
        """Do not override: override run_inner() or run_with_llm()."""
        try:
            self.run_inner()
        except PipelineStopRequested:
            flag_path = self.run_id_dir / ExtraFilenameEnum.PIPELINE_STOP_REQUESTED_FLAG.value
            logger.info("%s: stop requested; touching %s", self.__class__.__name__, flag_path)
            flag_path.touch()
            raise
        except Exception as e:
            raise Exception(
                f"{self.__class__.__name__} failed with LLMs {list(self.llm_models)!r} in run_id_dir {self.run_id_dir!r}"
            ) from e

    def run_inner(self) -> None:
        llm_executor = self.create_llm_executor()

        def execute_function(llm: LLM) -> None:
            self.run_with_llm(llm)

        llm_executor.run(execute_function)

    def run_with_llm(self, llm: LLM) -> None:
        raise NotImplementedError("Subclasses must implement run_with_llm() or run_inner()")


class StartTimeTask(PlanTask):
    """The start time file; whoever starts the pipeline must write it first."""

    def output(self):
        return self.local_target(FilenameEnum.START_TIME)

    def run(self):
        raise AssertionError(f"'{FilenameEnum.START_TIME.value}' must exist in {self.run_id_dir!r} before the pipeline starts")


class SetupTask(PlanTask):
    """The user's plan text; whoever starts the pipeline must write it first."""

    def output(self):
        return self.local_target(FilenameEnum.INITIAL_PLAN)

    def run(self):
        raise AssertionError(f"'{FilenameEnum.INITIAL_PLAN.value}' must exist in {self.run_id_dir!r} before the pipeline starts")


# ----------------------------------------------------------------------------- vetting


class RedlineGateTask(PlanTask):
    def requires(self):
        return self.clone(SetupTask)

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.REDLINE_GATE_RAW),
            'markdown': self.local_target(FilenameEnum.REDLINE_GATE_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = digest_query([("plan.txt", _text(self.input()))])
        _save(RedlineGate.execute(llm, query), self)


class PremiseAttackTask(PlanTask):
    """Five independent lens calls through one executor."""

    def requires(self):
        return self.clone(SetupTask)

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.PREMISE_ATTACK_RAW),
            'markdown': self.local_target(FilenameEnum.PREMISE_ATTACK_MARKDOWN),
        }

    def run_inner(self):
        llm_executor = self.create_llm_executor()
        plan_prompt = _text(self.input())
        _save(PremiseAttack.execute(llm_executor, plan_prompt), self)


class IdentifyPurposeTask(PlanTask):
    def requires(self):
        return self.clone(SetupTask)

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.IDENTIFY_PURPOSE_RAW),
            'markdown': self.local_target(FilenameEnum.IDENTIFY_PURPOSE_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = digest_query([("plan.txt", _text(self.input()))])
        _save(IdentifyPurpose.execute(llm, query), self)


class PlanTypeTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'identify_purpose': self.clone(IdentifyPurposeTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.PLAN_TYPE_RAW),
            'markdown': self.local_target(FilenameEnum.PLAN_TYPE_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = _digest(self, PLAN, ("purpose.md", "identify_purpose", "markdown"))
        _save(IdentifyPlanType.execute(llm, query), self)


# ----------------------------------------------------------------------------- levers and scenarios

LEVER_CONTEXT = (PLAN, ("purpose.md", "identify_purpose", "markdown"), ("plan_type.md", "plan_type", "markdown"))


class PotentialLeversTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'plan_type': self.clone(PlanTypeTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.POTENTIAL_LEVERS_RAW),
            'clean': self.local_target(FilenameEnum.POTENTIAL_LEVERS_CLEAN),
        }

    def run_inner(self):
        llm_executor = self.create_llm_executor()
        levers = IdentifyPotentialLevers.execute(llm_executor, _digest(self, *LEVER_CONTEXT))
        levers.save_raw(self.output()['raw'].path)
        levers.save_clean(self.output()['clean'].path)


class DeduplicateLeversTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'plan_type': self.clone(PlanTypeTask),
            'potential_levers': self.clone(PotentialLeversTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.DEDUPLICATED_LEVERS_RAW),
        }

    def run_inner(self):
        llm_executor = self.create_llm_executor()
        lever_item_list = _json(self.input()['potential_levers']['clean'])
        result = DeduplicateLevers.execute(llm_executor, project_context=_digest(self, *LEVER_CONTEXT), raw_levers_list=lever_item_list)
        result.save_raw(self.output()['raw'].path)


class EnrichLeversTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'plan_type': self.clone(PlanTypeTask),
            'deduplicate_levers': self.clone(DeduplicateLeversTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.ENRICHED_LEVERS_RAW),
        }

    def run_inner(self):
        llm_executor = self.create_llm_executor()
        lever_item_list = _json(self.input()['deduplicate_levers']['raw'])["deduplicated_levers"]
        result = EnrichPotentialLevers.execute(llm_executor, project_context=_digest(self, *LEVER_CONTEXT), raw_levers_list=lever_item_list)
        result.save_raw(self.output()['raw'].path)


class FocusOnVitalFewLeversTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'plan_type': self.clone(PlanTypeTask),
            'enriched_levers': self.clone(EnrichLeversTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.VITAL_FEW_LEVERS_RAW),
        }

    def run_inner(self):
        llm_executor = self.create_llm_executor()
        lever_item_list = _json(self.input()['enriched_levers']['raw'])["characterized_levers"]
        result = FocusOnVitalFewLevers.execute(llm_executor, project_context=_digest(self, *LEVER_CONTEXT), raw_levers_list=lever_item_list)
        result.save_raw(self.output()['raw'].path)


class StrategicDecisionsMarkdownTask(PlanTask):
    """No LLM: the levers as markdown."""

    def requires(self):
        return {
            'enriched_levers': self.clone(EnrichLeversTask),
            'levers_vital_few': self.clone(FocusOnVitalFewLeversTask),
        }

    def output(self):
        return {
            'markdown': self.local_target(FilenameEnum.STRATEGIC_DECISIONS_MARKDOWN),
        }

    def run(self):
        enriched = _json(self.input()['enriched_levers']['raw'])["characterized_levers"]
        vital = _json(self.input()['levers_vital_few']['raw'])
        result = StrategicDecisionsMarkdown(enriched, vital["levers"], vital.get("response", {}).get("summary", ""))
        result.save_markdown(self.output()['markdown'].path)


class CandidateScenariosTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'plan_type': self.clone(PlanTypeTask),
            'levers_vital_few': self.clone(FocusOnVitalFewLeversTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.CANDIDATE_SCENARIOS_RAW),
            'clean': self.local_target(FilenameEnum.CANDIDATE_SCENARIOS_CLEAN),
        }

    def run_inner(self):
        llm_executor = self.create_llm_executor()
        levers = _json(self.input()['levers_vital_few']['raw'])["levers"]
        scenarios = CandidateScenarios.execute(llm_executor=llm_executor, project_context=_digest(self, *LEVER_CONTEXT), raw_vital_levers=levers)
        scenarios.save_raw(self.output()['raw'].path)
        scenarios.save_clean(self.output()['clean'].path)


class SelectScenarioTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'plan_type': self.clone(PlanTypeTask),
            'levers_vital_few': self.clone(FocusOnVitalFewLeversTask),
            'candidate_scenarios': self.clone(CandidateScenariosTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.SELECTED_SCENARIO_RAW),
            'clean': self.local_target(FilenameEnum.SELECTED_SCENARIO_CLEAN),
        }

    def run_inner(self):
        llm_executor = self.create_llm_executor()
        scenarios_list = _json(self.input()['candidate_scenarios']['clean']).get('scenarios', [])
        query = _digest(self, *LEVER_CONTEXT, ("levers_vital_few.json", "levers_vital_few", "raw"))
        selected = SelectScenario.execute(llm_executor=llm_executor, project_context=query, scenarios=scenarios_list)
        selected.save_raw(self.output()['raw'].path)
        selected.save_clean(self.output()['clean'].path)


class ScenariosMarkdownTask(PlanTask):
    """No LLM: the scenarios and the choice as markdown."""

    def requires(self):
        return {
            'candidate_scenarios': self.clone(CandidateScenariosTask),
            'selected_scenario': self.clone(SelectScenarioTask),
        }

    def output(self):
        return {
            'markdown': self.local_target(FilenameEnum.SCENARIOS_MARKDOWN),
        }

    def run(self):
        scenarios_list = _json(self.input()['candidate_scenarios']['clean']).get('scenarios', [])
        selection = _json(self.input()['selected_scenario']['clean'])
        ScenariosMarkdown(scenarios_list, selection).save_markdown(self.output()['markdown'].path)


# ----------------------------------------------------------------------------- locations .. assumptions

PURPOSE_MD = ("purpose.md", "identify_purpose", "markdown")
PLAN_TYPE_MD = ("plan_type.md", "plan_type", "markdown")
LOCATIONS_MD = ("physical_locations.md", "physical_locations", "markdown")
CURRENCY_MD = ("currency_strategy.md", "currency_strategy", "markdown")
RISKS_MD = ("identify_risks.md", "identify_risks", "markdown")
NOT_PHYSICAL = "The plan is purely digital; it needs no physical locations."


class PhysicalLocationsTask(PlanTask):
    """One call if the plan is physical, none if it is purely digital (as in PlanExe)."""

    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'plan_type': self.clone(PlanTypeTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.PHYSICAL_LOCATIONS_RAW),
            'markdown': self.local_target(FilenameEnum.PHYSICAL_LOCATIONS_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        plan_type = _json(self.input()['plan_type']['raw']).get("plan_type")
        if plan_type == "physical":
            query = _digest(self, PLAN, PURPOSE_MD, PLAN_TYPE_MD, SD, SC)
            _save(PhysicalLocations.execute(llm, query), self)
            return
        with open(self.output()['raw'].path, "w", encoding="utf-8") as f:
            json.dump({"comment": NOT_PHYSICAL}, f, indent=2)
        with open(self.output()['markdown'].path, "w", encoding="utf-8") as f:
            f.write(NOT_PHYSICAL)


class CurrencyStrategyTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'plan_type': self.clone(PlanTypeTask),
            'physical_locations': self.clone(PhysicalLocationsTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.CURRENCY_STRATEGY_RAW),
            'markdown': self.local_target(FilenameEnum.CURRENCY_STRATEGY_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = _digest(self, PLAN, PURPOSE_MD, PLAN_TYPE_MD, SD, SC, LOCATIONS_MD)
        _save(CurrencyStrategy.execute(llm, query), self)


class IdentifyRisksTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'plan_type': self.clone(PlanTypeTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'physical_locations': self.clone(PhysicalLocationsTask),
            'currency_strategy': self.clone(CurrencyStrategyTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.IDENTIFY_RISKS_RAW),
            'markdown': self.local_target(FilenameEnum.IDENTIFY_RISKS_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = _digest(self, PLAN, PURPOSE_MD, PLAN_TYPE_MD, SD, SC, LOCATIONS_MD, CURRENCY_MD)
        _save(IdentifyRisks.execute(llm, query), self)


class MakeAssumptionsTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'plan_type': self.clone(PlanTypeTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'physical_locations': self.clone(PhysicalLocationsTask),
            'currency_strategy': self.clone(CurrencyStrategyTask),
            'identify_risks': self.clone(IdentifyRisksTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.MAKE_ASSUMPTIONS_RAW),
            'clean': self.local_target(FilenameEnum.MAKE_ASSUMPTIONS_CLEAN),
            'markdown': self.local_target(FilenameEnum.MAKE_ASSUMPTIONS_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = _digest(self, PLAN, PURPOSE_MD, PLAN_TYPE_MD, SD, SC, LOCATIONS_MD, CURRENCY_MD, RISKS_MD)
        make_assumptions = MakeAssumptions.execute(llm, query)
        make_assumptions.save_raw(self.output()['raw'].path)
        make_assumptions.save_assumptions(self.output()['clean'].path)
        make_assumptions.save_markdown(self.output()['markdown'].path)


class DistillAssumptionsTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'make_assumptions': self.clone(MakeAssumptionsTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.DISTILL_ASSUMPTIONS_RAW),
            'markdown': self.local_target(FilenameEnum.DISTILL_ASSUMPTIONS_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = _digest(self, PLAN, PURPOSE_MD, SD, SC, ("assumptions.json", "make_assumptions", "clean"))
        _save(DistillAssumptions.execute(llm, query), self)


class ReviewAssumptionsTask(PlanTask):
    def requires(self):
        return {
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'plan_type': self.clone(PlanTypeTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'physical_locations': self.clone(PhysicalLocationsTask),
            'currency_strategy': self.clone(CurrencyStrategyTask),
            'identify_risks': self.clone(IdentifyRisksTask),
            'make_assumptions': self.clone(MakeAssumptionsTask),
            'distill_assumptions': self.clone(DistillAssumptionsTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.REVIEW_ASSUMPTIONS_RAW),
            'markdown': self.local_target(FilenameEnum.REVIEW_ASSUMPTIONS_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = _digest(
            self, PURPOSE_MD, PLAN_TYPE_MD, SD, SC, LOCATIONS_MD, CURRENCY_MD, RISKS_MD,
            ("make_assumptions.md", "make_assumptions", "markdown"),
            ("distill_assumptions.md", "distill_assumptions", "markdown"),
        )
        _save(ReviewAssumptions.execute(llm, query), self)


def _problem(title: str, what: str) -> str:
    """The chunk that stands in for a document that could not be read or shortened."""
    return f"**Problem with document:** '{title}'\n\n{what}"


class ConsolidateAssumptionsMarkdownTask(PlanTask):
    """Eight independent shorten calls; a failed one becomes a problem chunk and the loop goes on."""

    def requires(self):
        return {
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'plan_type': self.clone(PlanTypeTask),
            'physical_locations': self.clone(PhysicalLocationsTask),
            'currency_strategy': self.clone(CurrencyStrategyTask),
            'identify_risks': self.clone(IdentifyRisksTask),
            'make_assumptions': self.clone(MakeAssumptionsTask),
            'distill_assumptions': self.clone(DistillAssumptionsTask),
            'review_assumptions': self.clone(ReviewAssumptionsTask),
        }

    def output(self):
        return {
            'full': self.local_target(FilenameEnum.CONSOLIDATE_ASSUMPTIONS_FULL_MARKDOWN),
            'short': self.local_target(FilenameEnum.CONSOLIDATE_ASSUMPTIONS_SHORT_MARKDOWN),
        }

    def run_inner(self):
        llm_executor = self.create_llm_executor()
        # (title, requires key) in PlanExe's order; the titles appear in both outputs.
        title_path_list = [
            ('Purpose', self.input()['identify_purpose']['markdown'].path),
            ('Plan Type', self.input()['plan_type']['markdown'].path),
            ('Physical Locations', self.input()['physical_locations']['markdown'].path),
            ('Currency Strategy', self.input()['currency_strategy']['markdown'].path),
            ('Identify Risks', self.input()['identify_risks']['markdown'].path),
            ('Make Assumptions', self.input()['make_assumptions']['markdown'].path),
            ('Distill Assumptions', self.input()['distill_assumptions']['markdown'].path),
            ('Review Assumptions', self.input()['review_assumptions']['markdown'].path),
        ]
        full_chunks: list[str] = []
        short_chunks: list[str] = []
        for title, path in title_path_list:
            try:
                with open(path, "r", encoding="utf-8") as f:
                    markdown_chunk = f.read()
            except FileNotFoundError:
                logger.warning("Markdown file not found: %s (%s)", path, title)
                full_chunks.append(_problem(title, "File not found."))
                short_chunks.append(_problem(title, "File not found."))
                continue
            except Exception as e:
                logger.error("Error reading %s (%s): %s", path, title, e)
                full_chunks.append(_problem(title, "Error reading markdown file."))
                short_chunks.append(_problem(title, "Error reading markdown file."))
                continue
            full_chunks.append(f"# {title}\n\n{markdown_chunk}")

            def execute_shorten_markdown(llm: LLM) -> ShortenMarkdown:
                return ShortenMarkdown.execute(llm, markdown_chunk)

            try:
                shortened = llm_executor.run(execute_shorten_markdown)
                short_chunks.append(f"# {title}\n{shortened.markdown}")
            except PipelineStopRequested:
                raise
            except Exception as e:
                logger.error("Error shortening %s (%s): %s", path, title, e)
                short_chunks.append(_problem(title, "Error shortening markdown file."))
        with open(self.output()['full'].path, "w", encoding="utf-8") as f:
            f.write("\n\n".join(full_chunks))
        with open(self.output()['short'].path, "w", encoding="utf-8") as f:
            f.write("\n\n".join(short_chunks))


# ----------------------------------------------------------------------------- assessment, plan, governance


class PreProjectAssessmentTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.PRE_PROJECT_ASSESSMENT_RAW),
            'clean': self.local_target(FilenameEnum.PRE_PROJECT_ASSESSMENT),
        }

    def run_with_llm(self, llm: LLM) -> None:
        assessment = PreProjectAssessment.execute(llm, _digest(self, PLAN, SD, SC, AS))
        assessment.save_raw(str(self.file_path(FilenameEnum.PRE_PROJECT_ASSESSMENT_RAW)))
        assessment.save_preproject_assessment(str(self.file_path(FilenameEnum.PRE_PROJECT_ASSESSMENT)))


PREPROJECT_JSON = ("pre-project-assessment.json", "preproject", "clean")
PROJECT_PLAN_MD = ("project-plan.md", "project_plan", "markdown")
PROJECT_PLAN_JSON = ("project-plan.json", "project_plan", "raw")


class ProjectPlanTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'preproject': self.clone(PreProjectAssessmentTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.PROJECT_PLAN_RAW),
            'markdown': self.local_target(FilenameEnum.PROJECT_PLAN_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        _save(ProjectPlan.execute(llm, _digest(self, PLAN, SD, SC, AS, PREPROJECT_JSON)), self)


GOV_BASE = (PLAN, SD, SC, AS)


class GovernancePhase1AuditTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.GOVERNANCE_PHASE1_AUDIT_RAW),
            'markdown': self.local_target(FilenameEnum.GOVERNANCE_PHASE1_AUDIT_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        _save(GovernancePhase1Audit.execute(llm, _digest(self, *GOV_BASE, PROJECT_PLAN_MD)), self)


class GovernancePhase2BodiesTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
            'governance_phase1_audit': self.clone(GovernancePhase1AuditTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.GOVERNANCE_PHASE2_BODIES_RAW),
            'markdown': self.local_target(FilenameEnum.GOVERNANCE_PHASE2_BODIES_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = _digest(self, *GOV_BASE, PROJECT_PLAN_MD, ("governance-phase1-audit.md", "governance_phase1_audit", "markdown"))
        _save(GovernancePhase2Bodies.execute(llm, query), self)


GOV2_JSON = ("governance-phase2-bodies.json", "governance_phase2_bodies", "raw")
GOV3_JSON = ("governance-phase3-impl-plan.json", "governance_phase3_impl_plan", "raw")
GOV4_JSON = ("governance-phase4-decision-escalation-matrix.json", "governance_phase4_decision_escalation_matrix", "raw")
GOV5_JSON = ("governance-phase5-monitoring-progress.json", "governance_phase5_monitoring_progress", "raw")


class GovernancePhase3ImplPlanTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
            'governance_phase2_bodies': self.clone(GovernancePhase2BodiesTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.GOVERNANCE_PHASE3_IMPL_PLAN_RAW),
            'markdown': self.local_target(FilenameEnum.GOVERNANCE_PHASE3_IMPL_PLAN_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        _save(GovernancePhase3ImplPlan.execute(llm, _digest(self, *GOV_BASE, PROJECT_PLAN_JSON, GOV2_JSON)), self)


class GovernancePhase4DecisionEscalationMatrixTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
            'governance_phase2_bodies': self.clone(GovernancePhase2BodiesTask),
            'governance_phase3_impl_plan': self.clone(GovernancePhase3ImplPlanTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.GOVERNANCE_PHASE4_DECISION_ESCALATION_MATRIX_RAW),
            'markdown': self.local_target(FilenameEnum.GOVERNANCE_PHASE4_DECISION_ESCALATION_MATRIX_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = _digest(self, *GOV_BASE, PROJECT_PLAN_JSON, GOV2_JSON, GOV3_JSON)
        _save(GovernancePhase4DecisionEscalationMatrix.execute(llm, query), self)


class GovernancePhase5MonitoringProgressTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
            'governance_phase2_bodies': self.clone(GovernancePhase2BodiesTask),
            'governance_phase3_impl_plan': self.clone(GovernancePhase3ImplPlanTask),
            'governance_phase4_decision_escalation_matrix': self.clone(GovernancePhase4DecisionEscalationMatrixTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.GOVERNANCE_PHASE5_MONITORING_PROGRESS_RAW),
            'markdown': self.local_target(FilenameEnum.GOVERNANCE_PHASE5_MONITORING_PROGRESS_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = _digest(self, *GOV_BASE, PROJECT_PLAN_JSON, GOV2_JSON, GOV3_JSON, GOV4_JSON)
        _save(GovernancePhase5MonitoringProgress.execute(llm, query), self)


class GovernancePhase6ExtraTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
            'governance_phase1_audit': self.clone(GovernancePhase1AuditTask),
            'governance_phase2_bodies': self.clone(GovernancePhase2BodiesTask),
            'governance_phase3_impl_plan': self.clone(GovernancePhase3ImplPlanTask),
            'governance_phase4_decision_escalation_matrix': self.clone(GovernancePhase4DecisionEscalationMatrixTask),
            'governance_phase5_monitoring_progress': self.clone(GovernancePhase5MonitoringProgressTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.GOVERNANCE_PHASE6_EXTRA_RAW),
            'markdown': self.local_target(FilenameEnum.GOVERNANCE_PHASE6_EXTRA_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = _digest(
            self, *GOV_BASE, PROJECT_PLAN_JSON, ("governance-phase1-audit.json", "governance_phase1_audit", "raw"),
            GOV2_JSON, GOV3_JSON, GOV4_JSON, GOV5_JSON,
        )
        _save(GovernancePhase6Extra.execute(llm, query), self)


class ConsolidateGovernanceTask(PlanTask):
    """No LLM: the six governance documents in one file."""

    def requires(self):
        return {
            'governance_phase1_audit': self.clone(GovernancePhase1AuditTask),
            'governance_phase2_bodies': self.clone(GovernancePhase2BodiesTask),
            'governance_phase3_impl_plan': self.clone(GovernancePhase3ImplPlanTask),
            'governance_phase4_decision_escalation_matrix': self.clone(GovernancePhase4DecisionEscalationMatrixTask),
            'governance_phase5_monitoring_progress': self.clone(GovernancePhase5MonitoringProgressTask),
            'governance_phase6_extra': self.clone(GovernancePhase6ExtraTask),
        }

    def output(self):
        return self.local_target(FilenameEnum.CONSOLIDATE_GOVERNANCE_MARKDOWN)

    def run_inner(self):
        parts = [_text(self.input()[key]['markdown']) for key in (
            'governance_phase1_audit', 'governance_phase2_bodies', 'governance_phase3_impl_plan',
            'governance_phase4_decision_escalation_matrix', 'governance_phase5_monitoring_progress',
            'governance_phase6_extra',
        )]
        with self.output().open("w") as f:
            f.write("\n\n".join(parts))


# ----------------------------------------------------------------------------- resources and team

RELATED_MD = ("related-resources.md", "related_resources", "markdown")
TEAM_BASE = (PLAN, SD, SC, AS, PREPROJECT_JSON, PROJECT_PLAN_MD)


class RelatedResourcesTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.RELATED_RESOURCES_RAW),
            'markdown': self.local_target(FilenameEnum.RELATED_RESOURCES_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        _save(RelatedResources.execute(llm, _digest(self, PLAN, SD, SC, AS, PROJECT_PLAN_JSON)), self)


def _save_team(step: Any, task: PlanTask) -> None:
    with task.output()['raw'].open("w") as f:
        json.dump(step.to_dict(), f, indent=2)
    with task.output()['clean'].open("w") as f:
        json.dump(step.team_member_list, f, indent=2)


class FindTeamMembersTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'preproject': self.clone(PreProjectAssessmentTask),
            'project_plan': self.clone(ProjectPlanTask),
            'related_resources': self.clone(RelatedResourcesTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.FIND_TEAM_MEMBERS_RAW),
            'clean': self.local_target(FilenameEnum.FIND_TEAM_MEMBERS_CLEAN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        _save_team(FindTeamMembers.execute(llm, _digest(self, *TEAM_BASE, RELATED_MD)), self)


class EnrichTeamMembersWithContractTypeTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'preproject': self.clone(PreProjectAssessmentTask),
            'project_plan': self.clone(ProjectPlanTask),
            'find_team_members': self.clone(FindTeamMembersTask),
            'related_resources': self.clone(RelatedResourcesTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.ENRICH_TEAM_MEMBERS_CONTRACT_TYPE_RAW),
            'clean': self.local_target(FilenameEnum.ENRICH_TEAM_MEMBERS_CONTRACT_TYPE_CLEAN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        members = ("team-members.json", "find_team_members", "clean")
        team_member_list = _json(self.input()['find_team_members']['clean'])
        query = _digest(self, *TEAM_BASE, members, RELATED_MD)
        _save_team(EnrichTeamMembersWithContractType.execute(llm, query, team_member_list), self)


class EnrichTeamMembersWithBackgroundStoryTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'preproject': self.clone(PreProjectAssessmentTask),
            'project_plan': self.clone(ProjectPlanTask),
            'enrich_team_members_with_contract_type': self.clone(EnrichTeamMembersWithContractTypeTask),
            'related_resources': self.clone(RelatedResourcesTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.ENRICH_TEAM_MEMBERS_BACKGROUND_STORY_RAW),
            'clean': self.local_target(FilenameEnum.ENRICH_TEAM_MEMBERS_BACKGROUND_STORY_CLEAN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        members = ("team-members.json", "enrich_team_members_with_contract_type", "clean")
        team_member_list = _json(self.input()['enrich_team_members_with_contract_type']['clean'])
        query = _digest(self, *TEAM_BASE, members, RELATED_MD)
        _save_team(EnrichTeamMembersWithBackgroundStory.execute(llm, query, team_member_list), self)


class EnrichTeamMembersWithEnvironmentInfoTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'preproject': self.clone(PreProjectAssessmentTask),
            'project_plan': self.clone(ProjectPlanTask),
            'enrich_team_members_with_background_story': self.clone(EnrichTeamMembersWithBackgroundStoryTask),
            'related_resources': self.clone(RelatedResourcesTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.ENRICH_TEAM_MEMBERS_ENVIRONMENT_INFO_RAW),
            'clean': self.local_target(FilenameEnum.ENRICH_TEAM_MEMBERS_ENVIRONMENT_INFO_CLEAN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        members = ("team-members.json", "enrich_team_members_with_background_story", "clean")
        team_member_list = _json(self.input()['enrich_team_members_with_background_story']['clean'])
        query = _digest(self, *TEAM_BASE, members, RELATED_MD)
        _save_team(EnrichTeamMembersWithEnvironmentInfo.execute(llm, query, team_member_list), self)


class ReviewTeamTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'preproject': self.clone(PreProjectAssessmentTask),
            'project_plan': self.clone(ProjectPlanTask),
            'enrich_team_members_with_environment_info': self.clone(EnrichTeamMembersWithEnvironmentInfoTask),
            'related_resources': self.clone(RelatedResourcesTask),
        }

    def output(self):
        return self.local_target(FilenameEnum.REVIEW_TEAM_RAW)

    def run_with_llm(self, llm: LLM) -> None:
        builder = TeamMarkdownDocumentBuilder()
        builder.append_roles(_json(self.input()['enrich_team_members_with_environment_info']['clean']), title=None)
        files = [(spec[0], _text(_pick(self, spec[1:]))) for spec in TEAM_BASE]
        files += [("team-members.md", builder.to_string()), (RELATED_MD[0], _text(_pick(self, RELATED_MD[1:])))]
        review_team = ReviewTeam.execute(llm, digest_query(files))
        with self.output().open("w") as f:
            json.dump(review_team.to_dict(), f, indent=2)


class TeamMarkdownTask(PlanTask):
    """No LLM: the team and its review as markdown."""

    def requires(self):
        return {
            'enrich_team_members_with_environment_info': self.clone(EnrichTeamMembersWithEnvironmentInfoTask),
            'review_team': self.clone(ReviewTeamTask),
        }

    def output(self):
        return self.local_target(FilenameEnum.TEAM_MARKDOWN)

    def run_inner(self):
        builder = TeamMarkdownDocumentBuilder()
        builder.append_roles(_json(self.input()['enrich_team_members_with_environment_info']['clean']))
        builder.append_separator()
        builder.append_full_review(_json(self.input()['review_team']))
        builder.write_to_file(self.output().path)


class SWOTAnalysisTask(PlanTask):
    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'preproject': self.clone(PreProjectAssessmentTask),
            'project_plan': self.clone(ProjectPlanTask),
            'related_resources': self.clone(RelatedResourcesTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.SWOT_RAW),
            'markdown': self.local_target(FilenameEnum.SWOT_MARKDOWN),
        }

    def run_with_llm(self, llm: LLM) -> None:
        identify_purpose_dict = _json(self.input()['identify_purpose']['raw'])
        query = _digest(self, *TEAM_BASE, RELATED_MD)
        swot = SWOTAnalysis.execute(llm=llm, query=query, identify_purpose_dict=identify_purpose_dict)
        with self.output()['raw'].open("w") as f:
            json.dump(swot.to_dict(), f, indent=2)
        with open(self.output()['markdown'].path, "w", encoding="utf-8") as f:
            f.write(swot.to_markdown(include_metadata=False, include_purpose=False))


class ExpertReviewTask(PlanTask):
    """Two chained ExpertFinder calls, then one criticism call per expert (first ``max_expert_count``)."""

    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'preproject': self.clone(PreProjectAssessmentTask),
            'project_plan': self.clone(ProjectPlanTask),
            'swot_analysis': self.clone(SWOTAnalysisTask),
        }

    def output(self):
        return self.local_target(FilenameEnum.EXPERT_CRITICISM_MARKDOWN)

    def run_inner(self):
        llm_executor = self.create_llm_executor()
        plan_prompt = _text(self.input()['setup'])
        strategic_decisions_markdown = _text(self.input()['strategic_decisions_markdown']['markdown'])
        scenarios_markdown = _text(self.input()['scenarios_markdown']['markdown'])
        pre_project_assessment_dict = _json(self.input()['preproject']['clean'])
        project_plan_markdown = _text(self.input()['project_plan']['markdown'])
        with open(self.input()['swot_analysis']['markdown'].path, "r", encoding="utf-8") as f:
            swot_markdown = f.read()

        # PlanExe's query composition (the plugin rebuilds this exact query).
        query = (
            f"File 'initial-plan.txt':\n{plan_prompt}\n\n"
            f"File 'strategic_decisions.md':\n{strategic_decisions_markdown}\n\n"
            f"File 'scenarios.md':\n{scenarios_markdown}\n\n"
            f"File 'pre-project assessment.json':\n{format_json_for_use_in_query(pre_project_assessment_dict)}\n\n"
            f"File 'project_plan.md':\n{project_plan_markdown}\n\n"
            f"File 'SWOT Analysis.md':\n{swot_markdown}"
        )

        def phase1_post_callback(expert_finder: ExpertFinder) -> None:
            expert_finder.save_raw(str(self.run_id_dir / FilenameEnum.EXPERTS_RAW.value))
            expert_finder.save_cleanedup(str(self.run_id_dir / FilenameEnum.EXPERTS_CLEAN.value))

        def phase2_post_callback(expert_criticism: ExpertCriticism, expert_index: int) -> None:
            # Raw files are numbered from 1.
            path = self.run_id_dir / FilenameEnum.EXPERT_CRITICISM_RAW_TEMPLATE.format(expert_index + 1)
            expert_criticism.save_raw(str(path))

        orchestrator = ExpertOrchestrator()
        orchestrator.phase1_post_callback = phase1_post_callback
        orchestrator.phase2_post_callback = phase2_post_callback
        orchestrator.execute(llm_executor, query)
        with self.file_path(FilenameEnum.EXPERT_CRITICISM_MARKDOWN).open("w") as f:
            f.write(orchestrator.to_markdown())


# ----------------------------------------------------------------------------- data and documents

LATE_BASE = (SD, SC, AS, PROJECT_PLAN_MD)
AFTER_EXPERTS = (
    RELATED_MD,
    ("swot-analysis.md", "swot_analysis", "markdown"),
    ("team.md", "team_markdown"),
    ("expert-review.md", "expert_review"),
)


class DataCollectionTask(PlanTask):
    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.DATA_COLLECTION_RAW),
            'markdown': self.local_target(FilenameEnum.DATA_COLLECTION_MARKDOWN),
        }

    def requires(self):
        return {
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
            'related_resources': self.clone(RelatedResourcesTask),
            'swot_analysis': self.clone(SWOTAnalysisTask),
            'team_markdown': self.clone(TeamMarkdownTask),
            'expert_review': self.clone(ExpertReviewTask),
        }

    def run_with_llm(self, llm: LLM) -> None:
        _save(DataCollection.execute(llm, _digest(self, *LATE_BASE, *AFTER_EXPERTS)), self)


class IdentifyDocumentsTask(PlanTask):
    def output(self):
        return {
            "raw": self.local_target(FilenameEnum.IDENTIFIED_DOCUMENTS_RAW),
            "markdown": self.local_target(FilenameEnum.IDENTIFIED_DOCUMENTS_MARKDOWN),
            "documents_to_find": self.local_target(FilenameEnum.IDENTIFIED_DOCUMENTS_TO_FIND_JSON),
            "documents_to_create": self.local_target(FilenameEnum.IDENTIFIED_DOCUMENTS_TO_CREATE_JSON),
        }

    def requires(self):
        return {
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
            'related_resources': self.clone(RelatedResourcesTask),
            'swot_analysis': self.clone(SWOTAnalysisTask),
            'team_markdown': self.clone(TeamMarkdownTask),
            'expert_review': self.clone(ExpertReviewTask),
        }

    def run_with_llm(self, llm: LLM) -> None:
        identify_purpose_dict = _json(self.input()['identify_purpose']['raw'])
        query = _digest(self, *LATE_BASE, *AFTER_EXPERTS)
        documents = IdentifyDocuments.execute(llm=llm, user_prompt=query, identify_purpose_dict=identify_purpose_dict)
        documents.save_raw(self.output()["raw"].path)
        documents.save_markdown(self.output()["markdown"].path)
        documents.save_json_documents_to_find(self.output()["documents_to_find"].path)
        documents.save_json_documents_to_create(self.output()["documents_to_create"].path)


def _run_filter(task: PlanTask, llm: LLM, filter_class: Any, documents_key: str) -> None:
    identify_purpose_dict = _json(task.input()['identify_purpose']['raw'])
    documents = _json(task.input()['identified_documents'][documents_key])
    process_documents, integer_id_to_document_uuid = filter_class.process_documents_and_integer_ids(documents)
    files = [(spec[0], _text(_pick(task, spec[1:]))) for spec in LATE_BASE] + [("documents.json", process_documents)]
    result = filter_class.execute(
        llm=llm,
        user_prompt=digest_query(files),
        identified_documents_raw_json=documents,
        integer_id_to_document_uuid=integer_id_to_document_uuid,
        identify_purpose_dict=identify_purpose_dict,
    )
    result.save_raw(task.output()["raw"].path)
    result.save_filtered_documents(task.output()["clean"].path)


class FilterDocumentsToFindTask(PlanTask):
    def output(self):
        return {
            "raw": self.local_target(FilenameEnum.FILTER_DOCUMENTS_TO_FIND_RAW),
            "clean": self.local_target(FilenameEnum.FILTER_DOCUMENTS_TO_FIND_CLEAN),
        }

    def requires(self):
        return {
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
            'identified_documents': self.clone(IdentifyDocumentsTask),
        }

    def run_with_llm(self, llm: LLM) -> None:
        _run_filter(self, llm, FilterDocumentsToFind, "documents_to_find")


class FilterDocumentsToCreateTask(PlanTask):
    def output(self):
        return {
            "raw": self.local_target(FilenameEnum.FILTER_DOCUMENTS_TO_CREATE_RAW),
            "clean": self.local_target(FilenameEnum.FILTER_DOCUMENTS_TO_CREATE_CLEAN),
        }

    def requires(self):
        return {
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
            'identified_documents': self.clone(IdentifyDocumentsTask),
        }

    def run_with_llm(self, llm: LLM) -> None:
        _run_filter(self, llm, FilterDocumentsToCreate, "documents_to_create")


def _draft_documents(task: PlanTask, input_key: str, draft_class: Any, raw_template: FilenameEnum, noun: str) -> None:
    """PlanExe's drafting loop: one call per document, raw files numbered from 1, merged list last.

    FAST mode drafts only the first 2 documents; the merged file still lists all of them.
    """
    llm_executor = task.create_llm_executor()
    identify_purpose_dict = _json(task.input()['identify_purpose']['raw'])
    strategic_decisions_markdown = _text(task.input()['strategic_decisions_markdown']['markdown'])
    scenarios_markdown = _text(task.input()['scenarios_markdown']['markdown'])
    assumptions_markdown = _text(task.input()['consolidate_assumptions_markdown']['short'])
    project_plan_markdown = _text(task.input()['project_plan']['markdown'])
    documents = _json(task.input()[input_key]['clean'])

    accumulated_documents = documents.copy()
    if task.speedvsdetail == SpeedVsDetailEnum.FAST_BUT_SKIP_DETAILS:
        documents = documents[:2]

    for index, document in enumerate(documents):
        # PlanExe's query composition (the plugin rebuilds this exact query; the document is a dict repr).
        query = (
            f"File 'strategic_decisions.md':\n{strategic_decisions_markdown}\n\n"
            f"File 'scenarios.md':\n{scenarios_markdown}\n\n"
            f"File 'assumptions.md':\n{assumptions_markdown}\n\n"
            f"File 'project-plan.md':\n{project_plan_markdown}\n\n"
            f"File 'document.json':\n{document}"
        )

        def execute_draft(llm: LLM) -> Any:
            return draft_class.execute(llm=llm, user_prompt=query, identify_purpose_dict=identify_purpose_dict)

        try:
            draft = llm_executor.run(execute_draft)
        except PipelineStopRequested:
            raise
        except Exception as e:
            logger.error("%s %d: drafting failed.", noun, index + 1, exc_info=True)
            raise ValueError(f"{noun} {index + 1} LLM interaction failed.") from e

        with open(task.run_id_dir / raw_template.value.format(index + 1), "w") as f:
            json.dump(draft.to_dict(), f, indent=2)

        updated = document.copy()
        for key in draft.response.keys():
            updated[key] = draft.response[key]
        accumulated_documents[index] = updated

    with task.output().open("w") as f:
        json.dump(accumulated_documents, f, indent=2)


class DraftDocumentsToFindTask(PlanTask):
    def output(self):
        return self.local_target(FilenameEnum.DRAFT_DOCUMENTS_TO_FIND_CONSOLIDATED)

    def requires(self):
        return {
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
            'filter_documents_to_find': self.clone(FilterDocumentsToFindTask),
        }

    def run_inner(self):
        _draft_documents(self, 'filter_documents_to_find', DraftDocumentToFind,
                         FilenameEnum.DRAFT_DOCUMENTS_TO_FIND_RAW_TEMPLATE, "Document-to-find")


class DraftDocumentsToCreateTask(PlanTask):
    def output(self):
        return self.local_target(FilenameEnum.DRAFT_DOCUMENTS_TO_CREATE_CONSOLIDATED)

    def requires(self):
        return {
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
            'filter_documents_to_create': self.clone(FilterDocumentsToCreateTask),
        }

    def run_inner(self):
        _draft_documents(self, 'filter_documents_to_create', DraftDocumentToCreate,
                         FilenameEnum.DRAFT_DOCUMENTS_TO_CREATE_RAW_TEMPLATE, "Document-to-create")


class MarkdownWithDocumentsToCreateAndFindTask(PlanTask):
    """No LLM: both drafted document lists as markdown."""

    def output(self):
        return self.local_target(FilenameEnum.DOCUMENTS_TO_CREATE_AND_FIND_MARKDOWN)

    def requires(self):
        return {
            'draft_documents_to_create': self.clone(DraftDocumentsToCreateTask),
            'draft_documents_to_find': self.clone(DraftDocumentsToFindTask),
        }

    def run_inner(self):
        rows = ["# Documents to Create", ""]
        for index, document in enumerate(_json(self.input()['draft_documents_to_create']), start=1):
            rows += markdown_rows_with_document(index, document)
        rows += ["", "# Documents to Find", ""]
        for index, document in enumerate(_json(self.input()['draft_documents_to_find']), start=1):
            rows += markdown_rows_with_document(index, document)
        with open(self.output().path, "w", encoding="utf-8") as f:
            f.write("\n".join(rows))


# ----------------------------------------------------------------------------- WBS, pitch, schedule


class CreateWBSLevel1Task(PlanTask):
    def requires(self):
        return {
            'project_plan': self.clone(ProjectPlanTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.WBS_LEVEL1_RAW),
            'clean': self.local_target(FilenameEnum.WBS_LEVEL1),
            'project_title': self.local_target(FilenameEnum.WBS_LEVEL1_PROJECT_TITLE),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = digest_query([("project-plan.json", format_json_for_use_in_query(_json(self.input()['project_plan']['raw'])))])
        wbs1 = CreateWBSLevel1.execute(llm, query)
        with self.output()['raw'].open("w") as f:
            json.dump(wbs1.raw_response_dict(), f, indent=2)
        with self.output()['clean'].open("w") as f:
            json.dump(wbs1.cleanedup_dict(), f, indent=2)
        with self.output()['project_title'].open("w") as f:
            f.write(wbs1.project_title)


class CreateWBSLevel2Task(PlanTask):
    def requires(self):
        return {
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
            'wbs_level1': self.clone(CreateWBSLevel1Task),
            'data_collection': self.clone(DataCollectionTask),
        }

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.WBS_LEVEL2_RAW),
            'clean': self.local_target(FilenameEnum.WBS_LEVEL2),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = _digest(self, SD, SC, ("project_plan.md", "project_plan", "markdown"),
                        ("wbs_level1.json", "wbs_level1", "clean"), ("data_collection.md", "data_collection", "markdown"))
        wbs2 = CreateWBSLevel2.execute(llm, query)
        with self.output()['raw'].open("w") as f:
            json.dump(wbs2.raw_response_dict(), f, indent=2)
        with self.output()['clean'].open("w") as f:
            json.dump(wbs2.major_phases_with_subtasks, f, indent=2)


class WBSProjectLevel1AndLevel2Task(PlanTask):
    """No LLM: the WBS tree from levels 1 and 2."""

    def output(self):
        return self.local_target(FilenameEnum.WBS_PROJECT_LEVEL1_AND_LEVEL2)

    def requires(self):
        return {
            'wbs_level1': self.clone(CreateWBSLevel1Task),
            'wbs_level2': self.clone(CreateWBSLevel2Task),
        }

    def run_inner(self):
        wbs_project = WBSPopulate.project_from_level1_json(self.input()['wbs_level1']['clean'].path)
        WBSPopulate.extend_project_with_level2_json(wbs_project, self.input()['wbs_level2']['clean'].path)
        with self.output().open("w") as f:
            f.write(json.dumps(wbs_project.to_dict(), indent=2))


class CreatePitchTask(PlanTask):
    def output(self):
        return self.local_target(FilenameEnum.PITCH_RAW)

    def requires(self):
        return {
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
            'wbs_project': self.clone(WBSProjectLevel1AndLevel2Task),
            'related_resources': self.clone(RelatedResourcesTask),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = _digest(self, SD, SC, ("project_plan.md", "project_plan", "markdown"),
                        ("wbs.json", "wbs_project"), ("similar_projects.md", "related_resources", "markdown"))
        pitch = CreatePitch.execute(llm, query)
        with self.output().open("w") as f:
            json.dump(pitch.raw_response_dict(), f, indent=2)


class ConvertPitchToMarkdownTask(PlanTask):
    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.PITCH_CONVERT_TO_MARKDOWN_RAW),
            'markdown': self.local_target(FilenameEnum.PITCH_MARKDOWN),
        }

    def requires(self):
        return {
            'pitch': self.clone(CreatePitchTask),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = format_json_for_use_in_query(_json(self.input()['pitch']))
        _save(ConvertPitchToMarkdown.execute(llm, query), self)


class IdentifyTaskDependenciesTask(PlanTask):
    def output(self):
        return self.local_target(FilenameEnum.TASK_DEPENDENCIES_RAW)

    def requires(self):
        return {
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
            'wbs_level2': self.clone(CreateWBSLevel2Task),
            'data_collection': self.clone(DataCollectionTask),
        }

    def run_with_llm(self, llm: LLM) -> None:
        query = _digest(self, SD, SC, ("project_plan.md", "project_plan", "markdown"),
                        ("wbs.json", "wbs_level2", "clean"), ("data_collection.md", "data_collection", "markdown"))
        dependencies = IdentifyWBSTaskDependencies.execute(llm, query)
        with self.output().open("w") as f:
            json.dump(dependencies.raw_response_dict(), f, indent=2)


class EstimateTaskDurationsTask(PlanTask):
    """Task ids of the WBS below the root, in chunks of 3, one call per chunk (raw files numbered from 1).

    FAST mode keeps the first 2 chunks.
    """

    def output(self):
        return self.local_target(FilenameEnum.TASK_DURATIONS)

    def requires(self):
        return {
            'project_plan': self.clone(ProjectPlanTask),
            'wbs_project': self.clone(WBSProjectLevel1AndLevel2Task),
        }

    def run_inner(self):
        llm_executor = self.create_llm_executor()
        project_plan_dict = _json(self.input()['project_plan']['raw'])
        wbs_project = WBSProject.from_dict(_json(self.input()['wbs_project']))
        major_phases_with_subtasks = [child.to_dict() for child in wbs_project.root_task.task_children]
        decompose_task_id_list: list[str] = []
        for task in wbs_project.root_task.task_children:
            decompose_task_id_list.extend(task.task_ids())
        task_ids_chunks = [decompose_task_id_list[i:i + 3] for i in range(0, len(decompose_task_id_list), 3)]
        if self.speedvsdetail == SpeedVsDetailEnum.FAST_BUT_SKIP_DETAILS:
            task_ids_chunks = task_ids_chunks[:2]

        accumulated: list[Any] = []
        for index, task_ids_chunk in enumerate(task_ids_chunks, start=1):
            query = EstimateWBSTaskDurations.format_query(project_plan_dict, major_phases_with_subtasks, task_ids_chunk)

            def execute_estimate_task_durations(llm: LLM) -> EstimateWBSTaskDurations:
                return EstimateWBSTaskDurations.execute(llm, query)

            try:
                estimate = llm_executor.run(execute_estimate_task_durations)
            except PipelineStopRequested:
                raise
            except Exception as e:
                logger.error("Task durations chunk %d failed.", index, exc_info=True)
                raise ValueError(f"Task durations chunk {index} LLM interaction failed.") from e
            raw_dict = estimate.raw_response_dict()
            with open(self.run_id_dir / FilenameEnum.TASK_DURATIONS_RAW_TEMPLATE.format(index), "w") as f:
                json.dump(raw_dict, f, indent=2)
            accumulated.extend(raw_dict.get('task_details', []))

        with open(self.file_path(FilenameEnum.TASK_DURATIONS), "w") as f:
            json.dump(accumulated, f, indent=2)


class CreateWBSLevel3Task(PlanTask):
    """One call per leaf task of the WBS (raw files numbered from 1); FAST mode keeps the first 2."""

    def output(self):
        return self.local_target(FilenameEnum.WBS_LEVEL3)

    def requires(self):
        return {
            'project_plan': self.clone(ProjectPlanTask),
            'wbs_project': self.clone(WBSProjectLevel1AndLevel2Task),
            'task_durations': self.clone(EstimateTaskDurationsTask),
            'data_collection': self.clone(DataCollectionTask),
        }

    def run_inner(self):
        llm_executor = self.create_llm_executor()
        project_plan_dict = _json(self.input()['project_plan']['raw'])
        wbs_project = WBSProject.from_dict(_json(self.input()['wbs_project']))
        data_collection_markdown = _text(self.input()['data_collection']['markdown'])
        WBSPopulate.extend_project_with_durations_json(wbs_project, self.input()['task_durations'].path)

        decompose_task_id_list: list[str] = []

        def visit_task(task: WBSTask) -> None:
            if len(task.task_children) == 0:
                decompose_task_id_list.append(task.id)
            for child in task.task_children:
                visit_task(child)

        visit_task(wbs_project.root_task)
        if self.speedvsdetail == SpeedVsDetailEnum.FAST_BUT_SKIP_DETAILS:
            decompose_task_id_list = decompose_task_id_list[:2]

        project_plan_str = format_json_for_use_in_query(project_plan_dict)
        wbs_project_str = format_json_for_use_in_query(wbs_project.to_dict())
        accumulated: list[dict[str, Any]] = []
        for index, task_id in enumerate(decompose_task_id_list, start=1):
            # PlanExe's query composition (the plugin rebuilds this exact query).
            query = (
                f"The project plan:\n{project_plan_str}\n\n"
                f"Data collection:\n{data_collection_markdown}\n\n"
                f"Work breakdown structure:\n{wbs_project_str}\n\n"
                f"Only decompose this task:\n\"{task_id}\""
            )

            def execute_create_wbs_level3(llm: LLM) -> CreateWBSLevel3:
                return CreateWBSLevel3.execute(llm, query, task_id)

            try:
                wbs3 = llm_executor.run(execute_create_wbs_level3)
            except PipelineStopRequested:
                raise
            except Exception as e:
                logger.error("WBS Level 3 task %d failed.", index, exc_info=True)
                raise ValueError(f"WBS Level 3 task {index} LLM interaction failed.") from e
            with open(self.run_id_dir / FilenameEnum.WBS_LEVEL3_RAW_TEMPLATE.value.format(index), "w") as f:
                json.dump(wbs3.raw_response_dict(), f, indent=2)
            accumulated.extend(wbs3.tasks)

        with open(self.file_path(FilenameEnum.WBS_LEVEL3), "w") as f:
            json.dump(accumulated, f, indent=2)


class WBSProjectLevel1AndLevel2AndLevel3Task(PlanTask):
    """No LLM: the full WBS tree, as JSON and CSV."""

    def output(self):
        return {
            'full': self.local_target(FilenameEnum.WBS_PROJECT_LEVEL1_AND_LEVEL2_AND_LEVEL3_FULL),
            'csv': self.local_target(FilenameEnum.WBS_PROJECT_LEVEL1_AND_LEVEL2_AND_LEVEL3_CSV),
        }

    def requires(self):
        return {
            'wbs_project12': self.clone(WBSProjectLevel1AndLevel2Task),
            'wbs_level3': self.clone(CreateWBSLevel3Task),
        }

    def run_inner(self):
        wbs_project = WBSProject.from_dict(_json(self.input()['wbs_project12']))
        WBSPopulate.extend_project_with_decomposed_tasks_json(wbs_project, self.input()['wbs_level3'].path)
        with self.output()['full'].open("w") as f:
            f.write(json.dumps(wbs_project.to_dict(), indent=2))
        with self.output()['csv'].open("w") as f:
            f.write(wbs_project.to_csv_string())


class CreateScheduleTask(PlanTask):
    """No LLM: a schedule from the WBS and the durations, starting on the run's start date."""

    def output(self):
        return {
            'mermaid_html': self.local_target(FilenameEnum.SCHEDULE_GANTT_MERMAID_HTML),
            'dhtmlx_html': self.local_target(FilenameEnum.SCHEDULE_GANTT_DHTMLX_HTML),
            'machai_csv': self.local_target(FilenameEnum.SCHEDULE_GANTT_MACHAI_CSV),
        }

    def requires(self):
        return {
            'start_time': self.clone(StartTimeTask),
            'wbs_level1': self.clone(CreateWBSLevel1Task),
            'dependencies': self.clone(IdentifyTaskDependenciesTask),
            'durations': self.clone(EstimateTaskDurationsTask),
            'wbs_project123': self.clone(WBSProjectLevel1AndLevel2AndLevel3Task),
        }

    def run_inner(self):
        title = _text(self.input()['wbs_level1']['project_title'])
        wbs_project = WBSProject.from_dict(_json(self.input()['wbs_project123']['full']))
        WBSPopulate.extend_project_with_dependencies_json(wbs_project, self.input()['dependencies'].path)
        WBSPopulate.extend_project_with_durations_json(wbs_project, self.input()['durations'].path)
        utc = _json(self.input()['start_time'])['server_iso_utc']
        project_start: date = datetime.fromisoformat(utc.replace('Z', '+00:00')).date()
        schedule = build_schedule(wbs_project, project_start)
        with open(self.output()['machai_csv'].path, "w", encoding="utf-8") as f:
            f.write(gantt_csv(schedule))
        with open(self.output()['mermaid_html'].path, "w", encoding="utf-8") as f:
            f.write(gantt_mermaid_html(schedule, title))
        with open(self.output()['dhtmlx_html'].path, "w", encoding="utf-8") as f:
            f.write(gantt_dhtmlx_html(schedule, title, wbs_project.task_ids_with_one_or_more_children()))


# ----------------------------------------------------------------------------- review, summary, Q&A, premortem, audit

REVIEW_FILES = (
    SD, SC, AS, PROJECT_PLAN_MD,
    ("data-collection.md", "data_collection", "markdown"),
    RELATED_MD,
    ("swot-analysis.md", "swot_analysis", "markdown"),
    ("team.md", "team_markdown"),
    ("pitch.md", "pitch_markdown", "markdown"),
    ("expert-review.md", "expert_review"),
    ("work-breakdown-structure.csv", "wbs_project123", "csv"),
)
REVIEW_PLAN_MD = ("review-plan.md", "review_plan", "markdown")
QA_MD = ("questions-and-answers.md", "questions_and_answers", "markdown")
PREMORTEM_MD = ("premortem.md", "premortem", "markdown")


def _full_text(task: luigi.Task, *specs: tuple[str, ...]) -> str:
    """Full-text query over the given inputs, in order (the review loops read whole files)."""
    return file_blocks([(spec[0], _text(_pick(task, spec[1:]))) for spec in specs])


class ReviewPlanTask(PlanTask):
    """16 chained questions (3 in FAST mode) in one conversation."""

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.REVIEW_PLAN_RAW),
            'markdown': self.local_target(FilenameEnum.REVIEW_PLAN_MARKDOWN),
        }

    def requires(self):
        return {
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
            'data_collection': self.clone(DataCollectionTask),
            'related_resources': self.clone(RelatedResourcesTask),
            'swot_analysis': self.clone(SWOTAnalysisTask),
            'team_markdown': self.clone(TeamMarkdownTask),
            'pitch_markdown': self.clone(ConvertPitchToMarkdownTask),
            'expert_review': self.clone(ExpertReviewTask),
            'wbs_project123': self.clone(WBSProjectLevel1AndLevel2AndLevel3Task),
        }

    def run_inner(self):
        llm_executor = self.create_llm_executor()
        query = _full_text(self, *REVIEW_FILES)
        _save(ReviewPlan.execute(llm_executor=llm_executor, document=query, speed_vs_detail=self.speedvsdetail), self)


class ExecutiveSummaryTask(PlanTask):
    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.EXECUTIVE_SUMMARY_RAW),
            'markdown': self.local_target(FilenameEnum.EXECUTIVE_SUMMARY_MARKDOWN),
        }

    def requires(self):
        return {
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'project_plan': self.clone(ProjectPlanTask),
            'data_collection': self.clone(DataCollectionTask),
            'related_resources': self.clone(RelatedResourcesTask),
            'swot_analysis': self.clone(SWOTAnalysisTask),
            'team_markdown': self.clone(TeamMarkdownTask),
            'pitch_markdown': self.clone(ConvertPitchToMarkdownTask),
            'expert_review': self.clone(ExpertReviewTask),
            'wbs_project123': self.clone(WBSProjectLevel1AndLevel2AndLevel3Task),
            'review_plan': self.clone(ReviewPlanTask),
        }

    def run_with_llm(self, llm: LLM) -> None:
        _save(ExecutiveSummary.execute(llm, _digest(self, *REVIEW_FILES, REVIEW_PLAN_MD)), self)


class QuestionsAndAnswersTask(PlanTask):
    """Two calls in one run_with_llm; the second sees the first answer."""

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.QUESTIONS_AND_ANSWERS_RAW),
            'markdown': self.local_target(FilenameEnum.QUESTIONS_AND_ANSWERS_MARKDOWN),
            'html': self.local_target(FilenameEnum.QUESTIONS_AND_ANSWERS_HTML),
        }

    def requires(self):
        return {
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'team_markdown': self.clone(TeamMarkdownTask),
            'related_resources': self.clone(RelatedResourcesTask),
            'consolidate_governance': self.clone(ConsolidateGovernanceTask),
            'swot_analysis': self.clone(SWOTAnalysisTask),
            'pitch_markdown': self.clone(ConvertPitchToMarkdownTask),
            'data_collection': self.clone(DataCollectionTask),
            'documents_to_create_and_find': self.clone(MarkdownWithDocumentsToCreateAndFindTask),
            'wbs_project123': self.clone(WBSProjectLevel1AndLevel2AndLevel3Task),
            'expert_review': self.clone(ExpertReviewTask),
            'project_plan': self.clone(ProjectPlanTask),
            'review_plan': self.clone(ReviewPlanTask),
        }

    def run_with_llm(self, llm: LLM) -> None:
        qa = QuestionsAnswers.execute(llm, _full_text(self, *REVIEW_FILES, REVIEW_PLAN_MD))
        qa.save_raw(self.output()['raw'].path)
        qa.save_markdown(self.output()['markdown'].path)
        qa.save_html(self.output()['html'].path)


class PremortemTask(PlanTask):
    """Three chained rounds (one in FAST mode)."""

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.PREMORTEM_RAW),
            'markdown': self.local_target(FilenameEnum.PREMORTEM_MARKDOWN),
        }

    def requires(self):
        return {
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'team_markdown': self.clone(TeamMarkdownTask),
            'related_resources': self.clone(RelatedResourcesTask),
            'consolidate_governance': self.clone(ConsolidateGovernanceTask),
            'swot_analysis': self.clone(SWOTAnalysisTask),
            'pitch_markdown': self.clone(ConvertPitchToMarkdownTask),
            'data_collection': self.clone(DataCollectionTask),
            'documents_to_create_and_find': self.clone(MarkdownWithDocumentsToCreateAndFindTask),
            'wbs_project123': self.clone(WBSProjectLevel1AndLevel2AndLevel3Task),
            'expert_review': self.clone(ExpertReviewTask),
            'project_plan': self.clone(ProjectPlanTask),
            'review_plan': self.clone(ReviewPlanTask),
            'questions_and_answers': self.clone(QuestionsAndAnswersTask),
        }

    def run_inner(self):
        llm_executor = self.create_llm_executor()
        query = _full_text(self, *REVIEW_FILES, REVIEW_PLAN_MD, QA_MD)
        _save(Premortem.execute(llm_executor=llm_executor, speed_vs_detail=self.speedvsdetail, user_prompt=query), self)


class SelfAuditTask(PlanTask):
    """20 chained checklist items (2 in FAST mode); each prompt carries all earlier answers."""

    def output(self):
        return {
            'raw': self.local_target(FilenameEnum.SELF_AUDIT_RAW),
            'markdown': self.local_target(FilenameEnum.SELF_AUDIT_MARKDOWN),
        }

    def requires(self):
        return {
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'team_markdown': self.clone(TeamMarkdownTask),
            'related_resources': self.clone(RelatedResourcesTask),
            'consolidate_governance': self.clone(ConsolidateGovernanceTask),
            'swot_analysis': self.clone(SWOTAnalysisTask),
            'pitch_markdown': self.clone(ConvertPitchToMarkdownTask),
            'data_collection': self.clone(DataCollectionTask),
            'documents_to_create_and_find': self.clone(MarkdownWithDocumentsToCreateAndFindTask),
            'wbs_project123': self.clone(WBSProjectLevel1AndLevel2AndLevel3Task),
            'expert_review': self.clone(ExpertReviewTask),
            'project_plan': self.clone(ProjectPlanTask),
            'review_plan': self.clone(ReviewPlanTask),
            'questions_and_answers': self.clone(QuestionsAndAnswersTask),
            'premortem': self.clone(PremortemTask),
        }

    def run_inner(self):
        llm_executor = self.create_llm_executor()
        user_prompt = _full_text(self, *REVIEW_FILES, REVIEW_PLAN_MD, QA_MD, PREMORTEM_MD)
        max_number_of_items: Optional[int] = None
        if self.speedvsdetail == SpeedVsDetailEnum.FAST_BUT_SKIP_DETAILS:
            max_number_of_items = 2
        self_audit = SelfAudit.execute(llm_executor=llm_executor, user_prompt=user_prompt, max_number_of_items=max_number_of_items)
        _save(self_audit, self)


class ReportTask(PlanTask):
    """No LLM: every document in one HTML page (no timestamp, unlike PlanExe's)."""

    def output(self):
        return self.local_target(FilenameEnum.REPORT)

    def requires(self):
        return {
            'setup': self.clone(SetupTask),
            'redline_gate': self.clone(RedlineGateTask),
            'premise_attack': self.clone(PremiseAttackTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'team_markdown': self.clone(TeamMarkdownTask),
            'related_resources': self.clone(RelatedResourcesTask),
            'consolidate_governance': self.clone(ConsolidateGovernanceTask),
            'swot_analysis': self.clone(SWOTAnalysisTask),
            'pitch_markdown': self.clone(ConvertPitchToMarkdownTask),
            'data_collection': self.clone(DataCollectionTask),
            'documents_to_create_and_find': self.clone(MarkdownWithDocumentsToCreateAndFindTask),
            'wbs_level1': self.clone(CreateWBSLevel1Task),
            'wbs_project123': self.clone(WBSProjectLevel1AndLevel2AndLevel3Task),
            'expert_review': self.clone(ExpertReviewTask),
            'project_plan': self.clone(ProjectPlanTask),
            'review_plan': self.clone(ReviewPlanTask),
            'executive_summary': self.clone(ExecutiveSummaryTask),
            'create_schedule': self.clone(CreateScheduleTask),
            'questions_and_answers': self.clone(QuestionsAndAnswersTask),
            'premortem': self.clone(PremortemTask),
            'self_audit': self.clone(SelfAuditTask),
        }

    def run_inner(self):
        i = self.input()
        rg = ReportGenerator()
        rg.append_markdown('Executive Summary', i['executive_summary']['markdown'].path)
        rg.append_html('Gantt Overview', i['create_schedule']['mermaid_html'].path)
        rg.append_html('Gantt Interactive', i['create_schedule']['dhtmlx_html'].path)
        rg.append_markdown('Pitch', i['pitch_markdown']['markdown'].path)
        rg.append_markdown('Project Plan', i['project_plan']['markdown'].path)
        rg.append_markdown('Strategic Decisions', i['strategic_decisions_markdown']['markdown'].path)
        rg.append_markdown('Scenarios', i['scenarios_markdown']['markdown'].path)
        rg.append_markdown('Assumptions', i['consolidate_assumptions_markdown']['full'].path)
        rg.append_markdown('Governance', i['consolidate_governance'].path)
        rg.append_markdown('Related Resources', i['related_resources']['markdown'].path)
        rg.append_markdown('Data Collection', i['data_collection']['markdown'].path)
        rg.append_markdown('Documents to Create and Find', i['documents_to_create_and_find'].path)
        rg.append_markdown('SWOT Analysis', i['swot_analysis']['markdown'].path)
        rg.append_markdown('Team', i['team_markdown'].path)
        rg.append_markdown('Expert Criticism', i['expert_review'].path)
        rg.append_csv('Work Breakdown Structure', i['wbs_project123']['csv'].path)
        rg.append_markdown('Review Plan', i['review_plan']['markdown'].path)
        rg.append_html('Questions & Answers', i['questions_and_answers']['html'].path)
        rg.append_markdown_with_tables('Premortem', i['premortem']['markdown'].path)
        rg.append_markdown_with_tables('Self Audit', i['self_audit']['markdown'].path)
        rg.append_initial_prompt_vetted(
            document_title='Initial Prompt Vetted',
            initial_prompt_file_path=i['setup'].path,
            redline_gate_markdown_file_path=i['redline_gate']['markdown'].path,
            premise_attack_markdown_file_path=i['premise_attack']['markdown'].path,
        )
        rg.save_report(self.output().path, title=_text(i['wbs_level1']['project_title']))


class FullPlanPipeline(PlanTask):
    def requires(self):
        return {
            'start_time': self.clone(StartTimeTask),
            'setup': self.clone(SetupTask),
            'redline_gate': self.clone(RedlineGateTask),
            'premise_attack': self.clone(PremiseAttackTask),
            'identify_purpose': self.clone(IdentifyPurposeTask),
            'plan_type': self.clone(PlanTypeTask),
            'potential_levers': self.clone(PotentialLeversTask),
            'deduplicate_levers': self.clone(DeduplicateLeversTask),
            'enriched_levers': self.clone(EnrichLeversTask),
            'focus_on_vital_few_levers': self.clone(FocusOnVitalFewLeversTask),
            'strategic_decisions_markdown': self.clone(StrategicDecisionsMarkdownTask),
            'candidate_scenarios': self.clone(CandidateScenariosTask),
            'select_scenario': self.clone(SelectScenarioTask),
            'scenarios_markdown': self.clone(ScenariosMarkdownTask),
            'physical_locations': self.clone(PhysicalLocationsTask),
            'currency_strategy': self.clone(CurrencyStrategyTask),
            'identify_risks': self.clone(IdentifyRisksTask),
            'make_assumptions': self.clone(MakeAssumptionsTask),
            'assumptions': self.clone(DistillAssumptionsTask),
            'review_assumptions': self.clone(ReviewAssumptionsTask),
            'consolidate_assumptions_markdown': self.clone(ConsolidateAssumptionsMarkdownTask),
            'pre_project_assessment': self.clone(PreProjectAssessmentTask),
            'project_plan': self.clone(ProjectPlanTask),
            'governance_phase1_audit': self.clone(GovernancePhase1AuditTask),
            'governance_phase2_bodies': self.clone(GovernancePhase2BodiesTask),
            'governance_phase3_impl_plan': self.clone(GovernancePhase3ImplPlanTask),
            'governance_phase4_decision_escalation_matrix': self.clone(GovernancePhase4DecisionEscalationMatrixTask),
            'governance_phase5_monitoring_progress': self.clone(GovernancePhase5MonitoringProgressTask),
            'governance_phase6_extra': self.clone(GovernancePhase6ExtraTask),
            'consolidate_governance': self.clone(ConsolidateGovernanceTask),
            'related_resources': self.clone(RelatedResourcesTask),
            'find_team_members': self.clone(FindTeamMembersTask),
            'enrich_team_members_with_contract_type': self.clone(EnrichTeamMembersWithContractTypeTask),
            'enrich_team_members_with_background_story': self.clone(EnrichTeamMembersWithBackgroundStoryTask),
            'enrich_team_members_with_environment_info': self.clone(EnrichTeamMembersWithEnvironmentInfoTask),
            'review_team': self.clone(ReviewTeamTask),
            'team_markdown': self.clone(TeamMarkdownTask),
            'swot_analysis': self.clone(SWOTAnalysisTask),
            'expert_review': self.clone(ExpertReviewTask),
            'data_collection': self.clone(DataCollectionTask),
            'identified_documents': self.clone(IdentifyDocumentsTask),
            'filter_documents_to_find': self.clone(FilterDocumentsToFindTask),
            'filter_documents_to_create': self.clone(FilterDocumentsToCreateTask),
            'draft_documents_to_find': self.clone(DraftDocumentsToFindTask),
            'draft_documents_to_create': self.clone(DraftDocumentsToCreateTask),
            'documents_to_create_and_find': self.clone(MarkdownWithDocumentsToCreateAndFindTask),
            'wbs_level1': self.clone(CreateWBSLevel1Task),
            'wbs_level2': self.clone(CreateWBSLevel2Task),
            'wbs_project12': self.clone(WBSProjectLevel1AndLevel2Task),
            'pitch_raw': self.clone(CreatePitchTask),
            'pitch_markdown': self.clone(ConvertPitchToMarkdownTask),
            'dependencies': self.clone(IdentifyTaskDependenciesTask),
            'durations': self.clone(EstimateTaskDurationsTask),
            'wbs_level3': self.clone(CreateWBSLevel3Task),
            'wbs_project123': self.clone(WBSProjectLevel1AndLevel2AndLevel3Task),
            'plan_evaluator': self.clone(ReviewPlanTask),
            'executive_summary': self.clone(ExecutiveSummaryTask),
            'create_schedule': self.clone(CreateScheduleTask),
            'questions_and_answers': self.clone(QuestionsAndAnswersTask),
            'premortem': self.clone(PremortemTask),
            'self_audit': self.clone(SelfAuditTask),
            'report': self.clone(ReportTask),
        }

    def output(self):
        return self.local_target(FilenameEnum.PIPELINE_COMPLETE)

    def run_inner(self):
        with self.output().open("w") as f:
            f.write("The full pipeline has run.\n")


# ----------------------------------------------------------------------------- running the pipeline


@dataclass
class PipelineProgress:
    progress_message: str
    progress_percentage: float


@dataclass
class HandleTaskCompletionParameters:
    task: PlanTask
    progress: PipelineProgress
    duration: float


@dataclass
class ExecutePipeline:
    """Set up and run FullPlanPipeline in ``run_id_dir``; progress is files present vs files expected."""

    run_id_dir: Path
    speedvsdetail: SpeedVsDetailEnum
    llm_models: list[str]
    full_plan_pipeline_task: Optional[FullPlanPipeline] = field(default=None)
    all_expected_filenames: list[str] = field(default_factory=list)
    luigi_build_return_value: Optional[bool] = field(default=None, init=False)

    def setup(self) -> None:
        if not self.run_id_dir.exists():
            raise FileNotFoundError(f"run_id_dir does not exist: {self.run_id_dir!r}")
        if not self.run_id_dir.is_dir():
            raise NotADirectoryError(f"run_id_dir is not a directory: {self.run_id_dir!r}")
        for required in (FilenameEnum.START_TIME, FilenameEnum.INITIAL_PLAN):
            if not (self.run_id_dir / required.value).exists():
                raise FileNotFoundError(f"'{required.value}' is missing in run_id_dir {self.run_id_dir!r}")
        self.full_plan_pipeline_task = FullPlanPipeline(
            run_id_dir=self.run_id_dir,
            speedvsdetail=self.speedvsdetail,
            llm_models=self.llm_models,
            _pipeline_executor_callback=self.callback_run_task,
        )
        self.all_expected_filenames = ObtainOutputFiles.execute(self.full_plan_pipeline_task).get_all_filenames()

    @classmethod
    def resolve_llm_models(cls, specified_llm_model: Optional[str]) -> list[str]:
        llm_models = get_llm_names_by_priority() or [DEFAULT_LLM_MODEL]
        if specified_llm_model and specified_llm_model != SPECIAL_AUTO_ID:
            if not is_valid_llm_name(specified_llm_model):
                raise ValueError(f"Invalid LLM model: {specified_llm_model!r}")
            llm_models = [specified_llm_model]
        logger.info("LLM models, in order: %r", llm_models)
        return llm_models

    def get_progress_percentage(self) -> PipelineProgress:
        try:
            files = {p.name for p in self.run_id_dir.iterdir()} if self.run_id_dir.is_dir() else set()
        except OSError as e:
            logger.warning("Could not list %s: %s", self.run_id_dir, e)
            files = set()
        ignored = {
            ExtraFilenameEnum.EXPECTED_FILENAMES1_JSON.value,
            ExtraFilenameEnum.LOG_TXT.value,
            ExtraFilenameEnum.PIPELINE_STOP_REQUESTED_FLAG.value,
            '.DS_Store',
        }
        files -= ignored
        expected = set(self.all_expected_filenames)
        done = files & expected
        extra = files - expected
        message = f"{len(done)} of {len(expected)}"
        if extra:
            message += f". Extra files: {len(extra)}"
        percentage = (len(done) * 100.0 / len(expected)) if expected else 0.0
        return PipelineProgress(progress_message=message, progress_percentage=percentage)

    def _handle_task_completion(self, parameters: HandleTaskCompletionParameters) -> None:
        """Hook for subclasses (progress in a database, a stop check); raise PipelineStopRequested to stop."""

    def callback_run_task(self, task: PlanTask, duration: float) -> None:
        progress = self.get_progress_percentage()
        self._handle_task_completion(HandleTaskCompletionParameters(task=task, progress=progress, duration=duration))

    @property
    def has_pipeline_complete_file(self) -> bool:
        return (self.run_id_dir / FilenameEnum.PIPELINE_COMPLETE.value).exists()

    @property
    def has_report_file(self) -> bool:
        return (self.run_id_dir / FilenameEnum.REPORT.value).exists()

    @property
    def has_stop_flag_file(self) -> bool:
        return (self.run_id_dir / ExtraFilenameEnum.PIPELINE_STOP_REQUESTED_FLAG.value).exists()

    def run(self) -> None:
        stop_flag_path = self.run_id_dir / ExtraFilenameEnum.PIPELINE_STOP_REQUESTED_FLAG.value
        if stop_flag_path.exists():
            stop_flag_path.unlink()
        with open(self.run_id_dir / ExtraFilenameEnum.EXPECTED_FILENAMES1_JSON.value, "w") as f:
            json.dump(self.all_expected_filenames, f, indent=2)

        self.luigi_build_return_value = luigi.build([self.full_plan_pipeline_task], local_scheduler=True, workers=1)

        logger.info(
            "luigi.build returned %s; complete file: %s; report: %s; stop flag: %s",
            self.luigi_build_return_value, self.has_pipeline_complete_file, self.has_report_file, self.has_stop_flag_file,
        )


class DemoStoppingExecutePipeline(ExecutePipeline):
    """Stops the pipeline after the first LLM attempt (exercises the stop path)."""

    def _handle_task_completion(self, parameters: HandleTaskCompletionParameters) -> None:
        raise PipelineStopRequested("demo: stop after the first attempt")


def configure_logging(run_id_dir: Path) -> int:
    """Log to stdout (level from PLANEXE_LOG_LEVEL, default INFO) and to log.txt in the run directory (DEBUG)."""
    level = getattr(logging, os.environ.get("PLANEXE_LOG_LEVEL", "INFO").upper(), None)
    if not isinstance(level, int):
        level = logging.INFO
    formatter = logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(stream=sys.stdout)
    console.setLevel(level)
    console.setFormatter(formatter)
    root.addHandler(console)
    log_file = logging.FileHandler(run_id_dir / ExtraFilenameEnum.LOG_TXT.value, mode="a")
    log_file.setLevel(logging.DEBUG)
    log_file.setFormatter(formatter)
    root.addHandler(log_file)
    return level


def speedvsdetail_from_value(value: Optional[str]) -> SpeedVsDetailEnum:
    """The speed mode named by SPEED_VS_DETAIL; unknown or empty values give ALL_DETAILS_BUT_SLOW."""
    for member in SpeedVsDetailEnum:
        if value and member.value == value:
            return member
    if value:
        logger.error("Invalid SPEED_VS_DETAIL %r; using %s", value, SpeedVsDetailEnum.ALL_DETAILS_BUT_SLOW.value)
    return SpeedVsDetailEnum.ALL_DETAILS_BUT_SLOW


def main() -> int:
    """The entry point's body: 0 when the pipeline completed, 1 otherwise."""
    environment = PipelineEnvironment.from_env()
    try:
        run_id_dir = environment.get_run_id_dir()
    except ValueError as e:
        print(f"Exiting: RUN_ID_DIR is not usable: {e}")
        return 1
    configure_logging(run_id_dir)
    speedvsdetail = speedvsdetail_from_value(environment.speed_vs_detail)
    try:
        llm_models = ExecutePipeline.resolve_llm_models(environment.llm_model)
        execute_pipeline = ExecutePipeline(run_id_dir=run_id_dir, speedvsdetail=speedvsdetail, llm_models=llm_models)
        execute_pipeline.setup()
    except Exception as e:
        logger.error("Failed to set up the pipeline: %s", e)
        return 1
    try:
        execute_pipeline.run()
    except Exception as e:
        logger.error("Failed to run the pipeline: %s", e)
        return 1
    return 0 if execute_pipeline.has_pipeline_complete_file else 1


if __name__ == '__main__':
    sys.exit(main())
