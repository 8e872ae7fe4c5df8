"""The double's file-only steps (no LLM): team and document markdown, the schedule, the report.

Formats are the double's own and deliberately plain; what matters is that they are pure
functions of their input files (no clock, no randomness), so runs are byte-identical.
"""
from __future__ import annotations

import csv
import html
import io
import json
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from worker_plan_internal.wbs.wbs_task import WBSProject, WBSTask


# ----------------------------------------------------------------------------- team


class TeamMarkdownDocumentBuilder:
    """Markdown of the team roles, optionally followed by the team review."""

    def __init__(self) -> None:
        self.rows: list[str] = []

    def append_roles(self, team_member_list: list[dict[str, Any]], title: str | None = "Team") -> None:
        if title:
            self.rows += [f"# {title}", ""]
        for index, member in enumerate(team_member_list, start=1):
            self.rows += [f"## {index}. {member.get('role', 'Role')}", ""]
            self.rows += [f"- **{k.replace('_', ' ')}**: {v}" for k, v in member.items() if k not in ("id", "role")]
            self.rows.append("")

    def append_separator(self) -> None:
        self.rows += ["---", ""]

    def append_full_review(self, review_team_json: dict[str, Any]) -> None:
        self.rows += ["# Team Review", "", "## Missing", ""]
        self.rows += [f"- {x}" for x in review_team_json.get("omissions", [])]
        self.rows += ["", "## Suggestions", ""] + [f"- {x}" for x in review_team_json.get("suggestions", [])] + [""]

    def to_string(self) -> str:
        return "\n".join(self.rows)

    def write_to_file(self, file_path: str) -> None:
        with open(file_path, "w", encoding="utf-8") as f:
            f.write(self.to_string())


# ----------------------------------------------------------------------------- documents


def markdown_rows_with_document(index: int, document: dict[str, Any]) -> list[str]:
    rows = [f"## {index}. {document.get('document_name', 'Document')}", ""]
    for key, value in document.items():
        if key in ("id", "document_name"):
            continue
        if isinstance(value, list):
            rows.append(f"**{key.replace('_', ' ')}**:")
            rows += [f"- {v}" for v in value]
        else:
            rows.append(f"**{key.replace('_', ' ')}**: {value}")
    rows.append("")
    return rows


# ----------------------------------------------------------------------------- schedule


@dataclass
class ScheduledTask:
    task: WBSTask
    level: int
    start: date
    days: int
    children: list["ScheduledTask"] = field(default_factory=list)

    @property
    def end(self) -> date:
        return self.start + timedelta(days=self.days)


def _days(task: WBSTask) -> int:
    value = task.extra_fields.get("days_realistic")
    return value if isinstance(value, int) and value > 0 else 1


def build_schedule(project: WBSProject, project_start: date) -> ScheduledTask:
    """Level-2 tasks back to back in WBS order; a parent spans its children; level-3 children split their parent."""

    def place(task: WBSTask, level: int, start: date) -> ScheduledTask:
        if not task.task_children:
            return ScheduledTask(task, level, start, _days(task))
        if level >= 3 and "days_realistic" in task.extra_fields:
            share = max(1, -(-_days(task) // len(task.task_children)))
            node = ScheduledTask(task, level, start, 0)
            cursor = start
            for child in task.task_children:
                node.children.append(ScheduledTask(child, level + 1, cursor, share))
                cursor += timedelta(days=share)
            node.days = (cursor - start).days
            return node
        node = ScheduledTask(task, level, start, 0)
        cursor = start
        for child in task.task_children:
            placed = place(child, level + 1, cursor)
            node.children.append(placed)
            cursor = placed.end
        node.days = (cursor - start).days
        return node

    return place(project.root_task, 1, project_start)


def _walk(node: ScheduledTask) -> list[ScheduledTask]:
    out = [node]
    for child in node.children:
        out.extend(_walk(child))
    return out


def gantt_csv(schedule: ScheduledTask) -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\n")
    writer.writerow(["id", "level", "name", "start", "end", "days"])
    for node in _walk(schedule):
        writer.writerow([node.task.id, node.level, node.task.description, node.start.isoformat(), node.end.isoformat(), node.days])
    return out.getvalue()


def gantt_mermaid_html(schedule: ScheduledTask, title: str) -> str:
    lines = ["gantt", f"    title {title}", "    dateFormat YYYY-MM-DD"]
    for phase in schedule.children:
        lines.append(f"    section {phase.task.description[:40]}")
        for node in _walk(phase)[1:]:
            if not node.children:
                lines.append(f"    {node.task.description[:40]} :{node.start.isoformat()}, {node.days}d")
    body = html.escape("\n".join(lines))
    return f"<!DOCTYPE html>\n<html><body>\n<pre class=\"mermaid\">\n{body}\n</pre>\n</body></html>\n"


def gantt_dhtmlx_html(schedule: ScheduledTask, title: str, parents: set[str]) -> str:
    data = [
        {"id": n.task.id, "text": n.task.description, "start_date": n.start.isoformat(), "duration": n.days,
         "parent": p.task.id if p else "0", "type": "project" if n.task.id in parents else "task"}
        for p, n in _with_parents(schedule)
    ]
    payload = html.escape(json.dumps({"data": data}, indent=1))
    return (f"<!DOCTYPE html>\n<html><head><title>{html.escape(title)}</title></head><body>\n"
            f"<script type=\"application/json\" id=\"gantt-data\">\n{payload}\n</script>\n</body></html>\n")


def _with_parents(node: ScheduledTask, parent: ScheduledTask | None = None) -> list[tuple[ScheduledTask | None, ScheduledTask]]:
    out: list[tuple[ScheduledTask | None, ScheduledTask]] = [(parent, node)]
    for child in node.children:
        out.extend(_with_parents(child, node))
    return out


# ----------------------------------------------------------------------------- report


class ReportGenerator:
    """One HTML page with every section; markdown and CSV are shown as preformatted text."""

    def __init__(self) -> None:
        self.sections: list[str] = []

    def _read(self, path: str) -> str:
        with open(path, encoding="utf-8") as f:
            return f.read()

    def append_markdown(self, title: str, path: str) -> None:
        self.sections.append(f"<section><h2>{html.escape(title)}</h2>\n<pre>{html.escape(self._read(path))}</pre></section>")

    append_markdown_with_tables = append_markdown

    def append_csv(self, title: str, path: str) -> None:
        self.append_markdown(title, path)

    def append_html(self, title: str, path: str) -> None:
        self.sections.append(f"<section><h2>{html.escape(title)}</h2>\n{self._read(path)}</section>")

    def append_initial_prompt_vetted(self, document_title: str, initial_prompt_file_path: str,
                                     redline_gate_markdown_file_path: str, premise_attack_markdown_file_path: str) -> None:
        parts = [self._read(p) for p in (initial_prompt_file_path, redline_gate_markdown_file_path, premise_attack_markdown_file_path)]
        body = "\n\n".join(html.escape(p) for p in parts)
        self.sections.append(f"<section><h2>{html.escape(document_title)}</h2>\n<pre>{body}</pre></section>")

    def save_report(self, file_path: str, title: str) -> None:
        page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>\n"
                f"<body>\n<h1>{html.escape(title)}</h1>\n" + "\n".join(self.sections) + "\n</body></html>\n")
        with open(file_path, "w", encoding="utf-8") as f:
            f.write(page)
