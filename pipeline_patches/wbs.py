"""EstimateTaskDurationsTask (chunks of 3 task ids) and CreateWBSLevel3Task (one call per leaf task).

Both lie on PlanExe's critical path, so their fan-out decides most of the headline speed-up.
"""
from __future__ import annotations

import json
from typing import Any

from planexe_concurrency.resume import json_text

from .base import ConcurrentTask, Item
from .planexe import load_planexe

pe = load_planexe()
P = pe.pipeline


class EstimateTaskDurationsTask(ConcurrentTask, P.EstimateTaskDurationsTask):
    def run_inner(self) -> None:
        inputs = self.input()
        with inputs["project_plan"]["raw"].open("r") as f:
            project_plan_dict = json.load(f)
        with inputs["wbs_project"].open("r") as f:
            wbs_project = P.WBSProject.from_dict(json.load(f))

        major_phases_with_subtasks = [child.to_dict() for child in wbs_project.root_task.task_children]
        task_ids: list[str] = []
        for task in wbs_project.root_task.task_children:
            task_ids.extend(task.task_ids())
        chunks = [task_ids[i : i + 3] for i in range(0, len(task_ids), 3)]
        if self.speedvsdetail == pe.SpeedVsDetailEnum.FAST_BUT_SKIP_DETAILS:
            chunks = chunks[:2]

        def item(number: int, chunk: list[str]) -> Item:
            query = P.EstimateWBSTaskDurations.format_query(project_plan_dict, major_phases_with_subtasks, chunk)

            def call(llm: Any) -> dict[str, Any]:
                return {"raw": P.EstimateWBSTaskDurations.execute(llm, query).raw_response_dict()}

            return Item(
                label=f"chunk {number}",
                call=call,
                fingerprint=query,
                raw_file=pe.FilenameEnum.TASK_DURATIONS_RAW_TEMPLATE.value.format(number),
            )

        # PlanExe numbers these chunks from 1.
        records = self.run_items(
            [item(n, chunk) for n, chunk in enumerate(chunks, start=1)],
            failure_message=lambda i: f"Task durations chunk {i + 1} LLM interaction failed.",
        )
        accumulated: list[Any] = []
        for record in records:
            accumulated.extend(record["raw"].get("task_details", []))
        self.write_output(self.file_path(pe.FilenameEnum.TASK_DURATIONS), json_text(accumulated))


class CreateWBSLevel3Task(ConcurrentTask, P.CreateWBSLevel3Task):
    def run_inner(self) -> None:
        inputs = self.input()
        with inputs["project_plan"]["raw"].open("r") as f:
            project_plan_dict = json.load(f)
        with inputs["wbs_project"].open("r") as f:
            wbs_project = P.WBSProject.from_dict(json.load(f))
        with inputs["data_collection"]["markdown"].open("r") as f:
            data_collection_markdown = f.read()
        P.WBSPopulate.extend_project_with_durations_json(wbs_project, inputs["task_durations"].path)

        leaf_ids: list[str] = []

        def visit(task: Any) -> None:
            if len(task.task_children) == 0:
                leaf_ids.append(task.id)
            for child in task.task_children:
                visit(child)

        visit(wbs_project.root_task)
        if self.speedvsdetail == pe.SpeedVsDetailEnum.FAST_BUT_SKIP_DETAILS:
            leaf_ids = leaf_ids[:2]

        project_plan_str = P.format_json_for_use_in_query(project_plan_dict)
        wbs_project_str = P.format_json_for_use_in_query(wbs_project.to_dict())

        def item(number: int, task_id: str) -> Item:
            # The same query PlanExe builds for this leaf task.
            query = (
                f"The project plan:\n{project_plan_str}\n\n"
                f"Data collection:\n{data_collection_markdown}\n\n"
                f"Work breakdown structure:\n{wbs_project_str}\n\n"
                f'Only decompose this task:\n"{task_id}"'
            )

            def call(llm: Any) -> dict[str, Any]:
                result = P.CreateWBSLevel3.execute(llm, query, task_id)
                # .tasks carries the ids PlanExe draws after the call; the raw file does not.
                return {"raw": result.raw_response_dict(), "tasks": result.tasks}

            return Item(
                label=f"task {task_id}",
                call=call,
                fingerprint=query,
                raw_file=pe.FilenameEnum.WBS_LEVEL3_RAW_TEMPLATE.value.format(number),
            )

        records = self.run_items(
            [item(n, task_id) for n, task_id in enumerate(leaf_ids, start=1)],
            failure_message=lambda i: f"WBS Level 3 task {i + 1} LLM interaction failed.",
        )
        accumulated: list[Any] = []
        for record in records:
            accumulated.extend(record["tasks"])
        self.write_output(self.file_path(pe.FilenameEnum.WBS_LEVEL3), json_text(accumulated))
