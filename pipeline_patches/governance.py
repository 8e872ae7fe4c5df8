"""Governance phases 4-6 side by side after phase 3 (opt-in: ``governance_parallel = true``).

PlanExe chains them: phase 5 reads phase 4's JSON, phase 6 reads 4's and 5's. Run side by
side, a phase cannot read what has not been written yet, so the dependency is dropped and
PlanExe's own ``run_with_llm`` reads a placeholder instead (an empty JSON object ``{}``
and an empty markdown file). That changes phase 5's and phase 6's prompts, hence their
answers: it is off by default, and on only when the user asks for it (or for
``fidelity = relaxed``). With the switch off these classes behave exactly like PlanExe's.

The classes are made when the patches are enabled, from whichever of the two phases the
PlanExe in use has (:func:`side_by_side_classes`); nothing here names a PlanExe class at import.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import luigi

from planexe_concurrency.config import read_config, task_value
from planexe_concurrency.resume import atomic_write_text

from .base import state_dir_of

PHASE4 = "governance_phase4_decision_escalation_matrix"
PHASE5 = "governance_phase5_monitoring_progress"
PLACEHOLDER_JSON = "{}"


def governance_parallel(task: str | None = None) -> bool:
    """On with ``governance_parallel``, or with ``fidelity = relaxed`` for this task (globally or in task_overrides)."""
    cfg = read_config()
    return bool(cfg.governance_parallel) or task_value(cfg, "fidelity", task) == "relaxed"


class _SideBySide:
    """Drops the inputs named in ``dropped`` when governance_parallel is on."""

    dropped: tuple[str, ...] = ()

    def requires(self) -> Any:
        deps = super().requires()  # type: ignore[misc]
        if governance_parallel(self.task_family):  # type: ignore[attr-defined]
            deps = {key: task for key, task in deps.items() if key not in self.dropped}
        return deps

    def input(self) -> Any:
        inputs = super().input()  # type: ignore[misc]
        if governance_parallel(self.task_family):  # type: ignore[attr-defined]
            for key in self.dropped:
                inputs[key] = self._placeholder(key)
        return inputs

    def _placeholder(self, key: str) -> dict[str, luigi.LocalTarget]:
        folder = state_dir_of(self) / "placeholders"  # type: ignore[arg-type]
        folder.mkdir(parents=True, exist_ok=True)
        targets = {}
        for kind, text in (("raw", PLACEHOLDER_JSON), ("markdown", "")):
            path = folder / f"{key}-{kind}"
            if not path.exists():
                atomic_write_text(path, text)
            targets[kind] = luigi.LocalTarget(str(path))
        return targets


# PlanExe's class name -> the inputs dropped when the phases run side by side.
DROPPED: dict[str, tuple[str, ...]] = {
    "GovernancePhase5MonitoringProgressTask": (PHASE4,),
    "GovernancePhase6ExtraTask": (PHASE4, PHASE5),
}


def side_by_side_classes(pipeline: ModuleType) -> dict[str, type]:
    """Subclasses of the phases ``pipeline`` has, under PlanExe's names (absent phases are skipped)."""
    classes: dict[str, type] = {}
    for name, dropped in DROPPED.items():
        original = getattr(pipeline, name, None)
        if isinstance(original, type) and issubclass(original, luigi.Task):
            classes[name] = type(name, (_SideBySide, original), {"dropped": dropped, "__module__": __name__})
    return classes
