"""A from-scratch test double of PlanExe's API surface (no PlanExe code, prompts or texts).

PlanExe is on no package registry, so CI tests the plugin against this double. It provides
the same module paths as PlanExe's newest layout (``worker_plan_internal.*`` and
``worker_plan_api.*``), the same 63 Luigi task classes with the same ``requires()`` and
``output()`` keys and file names, and the same number and chaining of LLM calls per task,
answered by ``planexe_concurrency.simllm.SimulatedLLM``. See ``GRAPH.md`` for the table.

Nothing happens on import: a real PlanExe must win when it is installed, so the lead's
import shim (``pipeline_patches.planexe``) decides when to call :func:`activate`.
"""
from __future__ import annotations

import sys
from pathlib import Path

DOUBLE_ROOT = Path(__file__).parent

__all__ = ["DOUBLE_ROOT", "activate", "is_active"]


def activate() -> None:
    """Put the double's folder on ``sys.path`` (once), so ``import worker_plan_internal...`` finds it."""
    root = str(DOUBLE_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def is_active() -> bool:
    """True when the double's folder is on ``sys.path``."""
    return str(DOUBLE_ROOT) in sys.path
