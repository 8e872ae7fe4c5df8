"""Build and grow a WBSProject from the pipeline's JSON files (same method names as PlanExe's)."""
from __future__ import annotations

import json
import logging
import uuid

from worker_plan_internal.wbs.wbs_task import WBSProject, WBSTask

logger = logging.getLogger(__name__)

_DURATION_FIELDS = ("delay_risks", "mitigation_strategy", "days_min", "days_max", "days_realistic")


def _is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


def _load(path: str) -> object:
    if not isinstance(path, str):
        raise ValueError("Expected a path as str.")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class WBSPopulate:
    @staticmethod
    def project_from_level1_json(path_level1_json: str) -> WBSProject:
        d = _load(path_level1_json)
        if not isinstance(d, dict):
            raise ValueError("Expected a dict in the WBS level 1 file.")
        root = WBSTask(id=d["id"], description=d["project_title"])
        root.set_field("final_deliverable", d.get("final_deliverable"))
        return WBSProject(root)

    @staticmethod
    def extend_project_with_level2_json(wbs_project: WBSProject, path_level2_json: str) -> None:
        phases = _load(path_level2_json)
        if not isinstance(phases, list):
            raise ValueError("Expected a list in the WBS level 2 file.")
        for phase in phases:
            task = WBSTask(id=phase["id"], description=phase["major_phase_title"])
            task.task_children = [WBSTask(id=s["id"], description=s["description"]) for s in phase.get("subtasks", [])]
            wbs_project.root_task.task_children.append(task)

    @staticmethod
    def extend_project_with_dependencies_json(wbs_project: WBSProject, path_dependencies_json: str) -> None:
        d = _load(path_dependencies_json)
        for item in (d or {}).get("task_dependency_details", []):  # type: ignore[union-attr]
            task = wbs_project.find_task_by_id(item.get("dependent_task_id", ""))
            if task is None:
                logger.debug("dependency for unknown task %r ignored", item.get("dependent_task_id"))
                continue
            task.set_field("depends_on_task_ids", item.get("depends_on_task_id_list", []))

    @staticmethod
    def extend_project_with_durations_json(wbs_project: WBSProject, path_durations_json: str) -> None:
        durations = _load(path_durations_json)
        if not isinstance(durations, list):
            raise ValueError("Expected a list in the durations file.")
        for item in durations:
            task_id = item.get("task_id")
            task = wbs_project.find_task_by_id(task_id) if _is_uuid(task_id) else None
            if task is None:
                logger.warning("duration for unknown task %r ignored", task_id)
                continue
            for name in _DURATION_FIELDS:
                if item.get(name):
                    task.set_field(name, item[name])

    @staticmethod
    def extend_project_with_decomposed_tasks_json(wbs_project: WBSProject, path_decomposed_tasks_json: str) -> None:
        tasks = _load(path_decomposed_tasks_json)
        if not isinstance(tasks, list):
            raise ValueError("Expected a list in the WBS level 3 file.")
        for item in tasks:
            parent = wbs_project.find_task_by_id(item.get("parent_id", ""))
            if parent is None:
                logger.warning("subtask %r has an unknown parent; ignored", item.get("id"))
                continue
            child = WBSTask(id=item["id"], description=item.get("name") or "unnamed subtask")
            child.parent_id = parent.id
            child.set_field("detailed_description", item.get("description", ""))
            child.set_field("resources_needed", item.get("resources_needed", []))
            parent.task_children.append(child)
