"""The Luigi module for the command line: PlanExe's pipeline with the concurrent tasks bound in.

    luigi --module pipeline_patches.pipeline ConcurrentFullPlanPipeline \\
          --run-id-dir RUN_DIR --workers 4 --local-scheduler

Importing this module rebinds PlanExe's task names (see :func:`enable`), so every
``requires()`` in PlanExe's pipeline module, including its own ``FullPlanPipeline``,
picks the concurrent classes.
"""
from __future__ import annotations

import logging
from types import ModuleType

import luigi

from planexe_concurrency.reuse import ReusedInstances

from .assumptions import ConsolidateAssumptionsMarkdownTask
from .base import ConcurrentTask, check_settings
from .documents import DraftDocumentsToCreateTask, DraftDocumentsToFindTask
from .experts import ExpertReviewTask
from .flag_toggle import import_lazy_modules
from .governance import GovernancePhase5MonitoringProgressTask, GovernancePhase6ExtraTask
from .planexe import load_planexe
from .wbs import CreateWBSLevel3Task, EstimateTaskDurationsTask

logger = logging.getLogger("planexe_concurrency")

pe = load_planexe()
P = pe.pipeline

CONCURRENT_TASKS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        ConsolidateAssumptionsMarkdownTask,
        DraftDocumentsToFindTask,
        DraftDocumentsToCreateTask,
        ExpertReviewTask,
        EstimateTaskDurationsTask,
        CreateWBSLevel3Task,
        GovernancePhase5MonitoringProgressTask,
        GovernancePhase6ExtraTask,
    )
}

_ORIGINALS: dict[str, type] = {name: getattr(P, name) for name in CONCURRENT_TASKS}

# PlanExe builds a fresh LLM (and so a fresh HTTP client) per attempt; reuse one per thread and
# model name instead (see planexe_concurrency.reuse and docs/overhead.md).
_ORIGINAL_GET_LLM = pe.llm_executor.get_llm
REUSED_LLMS = ReusedInstances(_ORIGINAL_GET_LLM)


def enable(module: ModuleType | None = None) -> None:
    """Rebind PlanExe's task names in ``module`` (default: PlanExe's pipeline) to the concurrent classes.

    Also makes PlanExe's ``LLMModelFromName`` reuse LLM instances per thread (``REUSED_LLMS``).
    """
    module = module or P
    for name, cls in CONCURRENT_TASKS.items():
        setattr(module, name, cls)
    pe.llm_executor.get_llm = REUSED_LLMS


def disable(module: ModuleType | None = None) -> None:
    """Undo :func:`enable`: PlanExe's own classes and its LLM-per-attempt again."""
    module = module or P
    for name, cls in _ORIGINALS.items():
        setattr(module, name, cls)
    pe.llm_executor.get_llm = _ORIGINAL_GET_LLM


def is_enabled(module: ModuleType | None = None) -> bool:
    module = module or P
    return all(getattr(module, name) is cls for name, cls in CONCURRENT_TASKS.items())


class ConcurrentFullPlanPipeline(P.FullPlanPipeline):
    """PlanExe's FullPlanPipeline (same requirements, same output) under a name of its own.

    ``--run-id-dir`` is required here and parsed into a ``Path`` (PlanExe's tasks join
    paths with ``/``; its own parameter would hand them a plain string from the command
    line). Cloned into every other task, it gives them the same task ids as PlanExe's.
    """

    run_id_dir = luigi.PathParameter(description="the run directory (with 001-1 start time and 001-2 plan files)")


enable()
# `luigi --module pipeline_patches.pipeline ... --workers N` imports this module in the
# parent, before it forks a process per task: pay the LLM client's lazy imports once here.
import_lazy_modules()

__all__ = [
    "CONCURRENT_TASKS",
    "ConcurrentFullPlanPipeline",
    "ConcurrentTask",
    "check_settings",
    "disable",
    "enable",
    "is_enabled",
]
