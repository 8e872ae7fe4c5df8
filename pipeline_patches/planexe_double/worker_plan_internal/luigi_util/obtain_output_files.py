"""All output files of a Luigi task graph, for a progress bar (files present vs files expected)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import luigi

logger = logging.getLogger(__name__)


def _flatten(value: Any) -> list[Any]:
    """Targets or tasks out of whatever Luigi's output()/requires() returned (one, list, dict, None)."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [v for item in value.values() for v in _flatten(item)]
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flatten(item)]
    return [value]


@dataclass(frozen=True)
class ObtainOutputFiles:
    """Output paths per task of the graph under a root task, collected once."""

    collected_outputs: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def execute(root_task: luigi.Task) -> "ObtainOutputFiles":
        seen: set[str] = set()
        collected: list[dict[str, Any]] = []
        stack = [root_task]
        while stack:
            task = stack.pop()
            if task.task_id in seen:
                continue
            seen.add(task.task_id)
            paths = [str(t.path) for t in _flatten(task.output()) if hasattr(t, "path")]
            deps = _flatten(task.requires())
            collected.append({"task_name": str(task), "outputs": paths, "dependencies": [str(d) for d in deps]})
            stack.extend(reversed(deps))
        return ObtainOutputFiles(collected_outputs=collected)

    def get_all_filepaths(self) -> list[str]:
        return sorted({path for info in self.collected_outputs for path in info["outputs"]})

    def get_all_filenames(self) -> list[str]:
        return sorted({Path(path).name for path in self.get_all_filepaths()})
