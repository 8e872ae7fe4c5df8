"""Decompose one WBS task into subtasks: one structured ``complete`` call per leaf task.

Subtask ids are ``uuid5`` of (parent id, position, name); PlanExe draws ``uuid4`` after the call.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llama_index.core.llms.llm import LLM
from pydantic import BaseModel, Field

from worker_plan_internal.llm_util.structured_step import llm_metadata, stable_uuid, structured_complete

PREAMBLE = "Break the one task named at the end into a few concrete subtasks with the resources each needs.\n\n"


class Subtask(BaseModel):
    name: str
    description: str
    resources_needed: list[str] = Field(min_length=1, max_length=3)


class SubtaskList(BaseModel):
    subtasks: list[Subtask] = Field(min_length=2, max_length=4)


@dataclass
class CreateWBSLevel3:
    query: str
    response: dict[str, Any]
    metadata: dict[str, Any]
    tasks: list[dict[str, Any]]
    task_uuids: list[str]

    @classmethod
    def execute(cls, llm: LLM, query: str, decompose_task_id: str) -> "CreateWBSLevel3":
        if not isinstance(llm, LLM):
            raise ValueError("Invalid LLM instance.")
        if not isinstance(query, str):
            raise ValueError("Invalid query.")
        if not isinstance(decompose_task_id, str):
            raise ValueError("Invalid decompose_task_id.")
        completion = structured_complete(llm, SubtaskList, PREAMBLE + query)
        response = json.loads(completion.text)
        tasks = [
            {
                "id": stable_uuid("wbs3", decompose_task_id, i, sub["name"]),
                "name": sub["name"],
                "description": sub["description"],
                "resources_needed": sub["resources_needed"],
                "parent_id": decompose_task_id,
            }
            for i, sub in enumerate(response["subtasks"])
        ]
        return cls(query, response, llm_metadata(llm), tasks, [t["id"] for t in tasks])

    def raw_response_dict(self, include_metadata: bool = True, include_query: bool = True) -> dict[str, Any]:
        d = dict(self.response)
        if include_metadata:
            d["metadata"] = self.metadata
        if include_query:
            d["query"] = self.query
        return d
