"""Estimate durations for a chunk of WBS tasks: one structured ``complete`` call per chunk.

A simulated model cannot copy ids out of its prompt, so the double gives the answers the
requested task ids by position (the ids listed after ``TASK_IDS_HEADER`` in the query); with
a real model PlanExe trusts the ids the model returns.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from llama_index.core.llms.llm import LLM
from pydantic import BaseModel, Field

from worker_plan_internal.format_json_for_use_in_query import format_json_for_use_in_query
from worker_plan_internal.llm_util.structured_step import exact_list_model, llm_metadata, structured_complete

TASK_IDS_HEADER = "Estimate only these task ids:"
_QUOTED = re.compile(r'^"([^"]+)"$')
PREAMBLE = "Estimate how many days each listed task takes (best, worst, realistic) and what could delay it.\n\n"


class TaskEstimate(BaseModel):
    task_id: str
    delay_risks: str
    mitigation_strategy: str
    days_min: int = Field(ge=1, le=10)
    days_max: int = Field(ge=30, le=90)
    days_realistic: int = Field(ge=10, le=30)


@dataclass
class EstimateWBSTaskDurations:
    query: str
    response: dict[str, Any]
    metadata: dict[str, Any]

    @classmethod
    def format_query(cls, plan_json: dict, wbs_level2_json: list, task_ids: list[str]) -> str:
        if not isinstance(plan_json, dict):
            raise ValueError("Invalid plan_json.")
        if not isinstance(wbs_level2_json, list):
            raise ValueError("Invalid wbs_level2_json.")
        if not isinstance(task_ids, list):
            raise ValueError("Invalid task_ids.")
        ids = "\n".join(f'"{task_id}"' for task_id in task_ids)
        return (
            f"Project plan:\n{format_json_for_use_in_query(plan_json)}\n\n"
            f"Work breakdown (phases and subtasks):\n{format_json_for_use_in_query(wbs_level2_json)}\n\n"
            f"{TASK_IDS_HEADER}\n{ids}"
        )

    @staticmethod
    def requested_task_ids(query: str) -> list[str]:
        _, _, tail = query.rpartition(TASK_IDS_HEADER)
        return [m.group(1) for line in tail.splitlines() if (m := _QUOTED.match(line.strip()))]

    @classmethod
    def execute(cls, llm: LLM, query: str) -> "EstimateWBSTaskDurations":
        if not isinstance(llm, LLM):
            raise ValueError("Invalid LLM instance.")
        if not isinstance(query, str):
            raise ValueError("Invalid query.")
        task_ids = cls.requested_task_ids(query)
        model = exact_list_model("TimeEstimates", "task_details", TaskEstimate, len(task_ids), "One per task id, in order.")
        completion = structured_complete(llm, model, PREAMBLE + query)
        response = json.loads(completion.text)
        for detail, task_id in zip(response["task_details"], task_ids):
            detail["task_id"] = task_id
        return cls(query=query, response=response, metadata=llm_metadata(llm))

    def raw_response_dict(self, include_metadata: bool = True, include_query: bool = True) -> dict[str, Any]:
        d = dict(self.response)
        if include_metadata:
            d["metadata"] = self.metadata
        if include_query:
            d["query"] = self.query
        return d
