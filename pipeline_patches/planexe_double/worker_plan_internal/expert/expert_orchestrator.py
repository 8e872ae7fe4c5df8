"""Find experts (two chained calls), then ask the first ``max_expert_count`` of them for criticism.

The criticism calls are independent of each other; PlanExe runs them one after another and
numbers the raw files from 1 (``phase2_post_callback(criticism, expert_index)`` gets the
0-based index).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from llama_index.core.llms.llm import LLM

from worker_plan_internal.expert.expert_criticism import ExpertCriticism
from worker_plan_internal.expert.expert_finder import ExpertFinder
from worker_plan_internal.llm_util.llm_executor import LLMExecutor, PipelineStopRequested

logger = logging.getLogger(__name__)


class ExpertOrchestrator:
    def __init__(self) -> None:
        self.phase1_post_callback: Optional[Callable[[ExpertFinder], None]] = None
        self.phase2_post_callback: Optional[Callable[[ExpertCriticism, int], None]] = None
        self.expert_finder: Optional[ExpertFinder] = None
        self.expert_criticism_list: list[Any] = []
        self.max_expert_count = 2

    def execute(self, llm_executor: LLMExecutor, query: str) -> None:
        if not isinstance(llm_executor, LLMExecutor):
            raise ValueError("Invalid LLMExecutor instance.")
        if not isinstance(query, str):
            raise ValueError("Invalid query.")
        self.expert_finder = ExpertFinder.execute(llm_executor, query)
        if self.phase1_post_callback:
            self.phase1_post_callback(self.expert_finder)
        experts = self.expert_finder.expert_list[: self.max_expert_count]
        for expert_index, expert in enumerate(experts):
            system_prompt = ExpertCriticism.format_system(expert)

            def execute_expert_criticism(llm: LLM) -> ExpertCriticism:
                return ExpertCriticism.execute(llm, query, system_prompt)

            try:
                criticism = llm_executor.run(execute_expert_criticism)
            except PipelineStopRequested:
                raise
            except Exception as exc:
                logger.error("Expert %d criticism LLM interaction failed.", expert_index + 1, exc_info=True)
                raise ValueError(f"Expert {expert_index + 1} criticism LLM interaction failed.") from exc
            if self.phase2_post_callback:
                self.phase2_post_callback(criticism, expert_index)
            self.expert_criticism_list.append(criticism)

    def to_markdown(self) -> str:
        """Uses only ``expert_list`` and each criticism's ``to_dict()`` (the plugin relies on that)."""
        assert self.expert_finder is not None, "execute() first"
        experts = self.expert_finder.expert_list
        rows = ["# Expert Criticism", ""]
        for index, criticism in enumerate(self.expert_criticism_list):
            expert = experts[index]
            d = criticism.to_dict()
            if index > 0:
                rows += ["---", ""]
            rows += [f"## {index + 1}. {expert['title']}", "", f"_{expert['why']}_", ""]
            for number, concern in enumerate(d.get("concerns", []), start=1):
                rows += [f"### {index + 1}.{number} {concern['title']}", "", concern["detail"], "",
                         f"Mitigation: {concern['mitigation']}", ""]
            rows += ["Must do:"] + [f"- {a}" for a in d.get("must_do", [])] + [""]
            rows += ["Should do:"] + [f"- {a}" for a in d.get("should_do", [])] + [""]
            rows += [f"Next meeting: {d.get('next_meeting', '')}", ""]
        silent = experts[len(self.expert_criticism_list):]
        if silent:
            rows += ["---", "", "## Experts not consulted", ""]
            rows += [f"- {len(self.expert_criticism_list) + i + 1}. {e['title']}" for i, e in enumerate(silent)]
            rows.append("")
        return "\n".join(rows)
