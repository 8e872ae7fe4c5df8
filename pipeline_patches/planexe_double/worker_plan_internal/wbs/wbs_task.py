"""The work breakdown structure as a tree of tasks (same class and method names as PlanExe's)."""
from __future__ import annotations

import csv
import io
from typing import Any, Optional


class WBSTask:
    def __init__(self, id: str, description: str):  # noqa: A002 - PlanExe's parameter name
        if not isinstance(id, str):
            raise ValueError("Invalid id.")
        if not isinstance(description, str):
            raise ValueError("Invalid description.")
        self.id = id
        self.parent_id: Optional[str] = None
        self.description = description
        self.task_children: list[WBSTask] = []
        self.extra_fields: dict[str, Any] = {}

    def set_field(self, field_name: str, field_value: Any) -> None:
        self.extra_fields[field_name] = field_value

    def find_task_by_id(self, task_id: str) -> Optional["WBSTask"]:
        if self.id == task_id:
            return self
        for child in self.task_children:
            found = child.find_task_by_id(task_id)
            if found is not None:
                return found
        return None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "description": self.description}
        if self.parent_id is not None:
            d["parent_id"] = self.parent_id
        if self.extra_fields:
            d["extra_fields"] = self.extra_fields
        if self.task_children:
            d["task_children"] = [child.to_dict() for child in self.task_children]
        return d

    def task_ids(self) -> list[str]:
        """This task's id and its descendants', depth first."""
        ids = [self.id]
        for child in self.task_children:
            ids.extend(child.task_ids())
        return ids


class WBSProject:
    def __init__(self, root_task: WBSTask):
        self.root_task = root_task

    def find_task_by_id(self, task_id: str) -> Optional[WBSTask]:
        return self.root_task.find_task_by_id(task_id)

    def to_dict(self) -> dict[str, Any]:
        return {"wbs_project": self.root_task.to_dict()}

    @staticmethod
    def from_dict(json_dict: dict[str, Any]) -> "WBSProject":
        return WBSProject(WBSProject.from_dict_recursive(json_dict["wbs_project"]))

    @staticmethod
    def from_dict_recursive(json_dict: dict[str, Any]) -> WBSTask:
        task = WBSTask(json_dict["id"], json_dict["description"])
        task.parent_id = json_dict.get("parent_id")
        task.extra_fields = dict(json_dict.get("extra_fields", {}))
        task.task_children = [WBSProject.from_dict_recursive(c) for c in json_dict.get("task_children", [])]
        return task

    def to_csv_string(self) -> str:
        """One row per task: level, id, parent, description, realistic days (blank if unknown)."""
        out = io.StringIO()
        writer = csv.writer(out, delimiter=";", lineterminator="\n")
        writer.writerow(["Level", "Task ID", "Parent ID", "Description", "Days"])

        def visit(task: WBSTask, level: int, parent: str) -> None:
            writer.writerow([level, task.id, parent, task.description, task.extra_fields.get("days_realistic", "")])
            for child in task.task_children:
                visit(child, level + 1, task.id)

        visit(self.root_task, 1, "")
        return out.getvalue()

    def task_ids_with_one_or_more_children(self) -> set[str]:
        ids: set[str] = set()

        def visit(task: WBSTask) -> None:
            if task.task_children:
                ids.add(task.id)
            for child in task.task_children:
                visit(child)

        visit(self.root_task)
        return ids
