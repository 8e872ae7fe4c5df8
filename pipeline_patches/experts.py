"""ExpertReviewTask: the two chained ExpertFinder calls stay in order; the criticism calls fan out."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from .base import ConcurrentTask, Item
from .planexe import load_planexe

pe = load_planexe()
P = pe.pipeline


class _SavedCriticism:
    """Stands in for an ExpertCriticism in ``ExpertOrchestrator.to_markdown``, which only calls ``to_dict()``."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def to_dict(self) -> dict[str, Any]:
        return self._data


def _saved_raw_text(result: Any) -> str:
    """The exact text PlanExe's ``save_raw`` writes, captured so it can be written atomically later."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        result.save_raw(path)
        with open(path, "r", encoding="utf-8") as f:
            return f.read()
    finally:
        os.unlink(path)


class ExpertReviewTask(ConcurrentTask, P.ExpertReviewTask):
    def run_inner(self) -> None:
        inputs = self.input()
        with inputs["setup"].open("r") as f:
            plan_prompt = f.read()
        with inputs["strategic_decisions_markdown"]["markdown"].open("r") as f:
            strategic_decisions_markdown = f.read()
        with inputs["scenarios_markdown"]["markdown"].open("r") as f:
            scenarios_markdown = f.read()
        with inputs["preproject"]["clean"].open("r") as f:
            pre_project_assessment_dict = json.load(f)
        with inputs["project_plan"]["markdown"].open("r") as f:
            project_plan_markdown = f.read()
        with open(inputs["swot_analysis"]["markdown"].path, "r", encoding="utf-8") as f:
            swot_markdown = f.read()

        # The same query PlanExe builds.
        query = (
            f"File 'initial-plan.txt':\n{plan_prompt}\n\n"
            f"File 'strategic_decisions.md':\n{strategic_decisions_markdown}\n\n"
            f"File 'scenarios.md':\n{scenarios_markdown}\n\n"
            f"File 'pre-project assessment.json':\n{P.format_json_for_use_in_query(pre_project_assessment_dict)}\n\n"
            f"File 'project_plan.md':\n{project_plan_markdown}\n\n"
            f"File 'SWOT Analysis.md':\n{swot_markdown}"
        )

        # Phase 1: two calls where the second sees the first, so PlanExe's own executor, in order.
        orchestrator = P.ExpertOrchestrator()
        expert_finder = P.ExpertFinder.execute(self.create_llm_executor(), query)
        expert_finder.save_raw(str(self.run_dir / pe.FilenameEnum.EXPERTS_RAW.value))
        expert_finder.save_cleanedup(str(self.run_dir / pe.FilenameEnum.EXPERTS_CLEAN.value))

        # Phase 2: one independent call per expert, for the first max_expert_count experts.
        experts = expert_finder.expert_list[: orchestrator.max_expert_count]

        def item(index: int, expert: dict[str, Any]) -> Item:
            system_prompt = P.ExpertCriticism.format_system(expert)

            def call(llm: Any) -> dict[str, Any]:
                criticism = P.ExpertCriticism.execute(llm, query, system_prompt)
                return {"raw_text": _saved_raw_text(criticism), "dict": criticism.to_dict()}

            return Item(
                label=f"expert {index + 1}: {expert.get('title', 'Missing title')}",
                call=call,
                fingerprint=system_prompt + "\n" + query,
                raw_file=pe.FilenameEnum.EXPERT_CRITICISM_RAW_TEMPLATE.value.format(index + 1),
                raw_text=lambda record: record["raw_text"],
            )

        records = self.run_items(
            [item(i, e) for i, e in enumerate(experts)],
            failure_message=lambda i: f"Expert {i + 1} criticism LLM interaction failed.",
        )
        orchestrator.expert_finder = expert_finder
        orchestrator.expert_criticism_list = [_SavedCriticism(r["dict"]) for r in records]
        self.write_output(self.file_path(pe.FilenameEnum.EXPERT_CRITICISM_MARKDOWN), orchestrator.to_markdown())
