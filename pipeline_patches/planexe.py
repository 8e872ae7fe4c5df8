"""Find PlanExe: its newest layout, its older one, or our test double.

PlanExe is on no package registry; users run it from a checkout with its ``worker_plan``
folder (newest layout, ``worker_plan_internal.*`` and ``worker_plan_api.*``) or its repo
root (older layout, one ``planexe.*`` package) on ``sys.path``. Every other module of
``pipeline_patches`` gets PlanExe through :func:`load_planexe`, so this file is the only
place that knows the module paths.

``PLANEXE_CONCURRENCY_TARGET`` chooses what to load:

* ``auto`` (default): a real PlanExe if one is importable, else the built-in double, with a warning;
* ``planexe``: a real PlanExe or a clear error saying what was looked for;
* ``double``: always the test double in ``pipeline_patches/planexe_double``.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

logger = logging.getLogger("planexe_concurrency")

TARGET_ENV = "PLANEXE_CONCURRENCY_TARGET"

# layout name -> module paths, newest first.
LAYOUTS: dict[str, dict[str, str]] = {
    "worker_plan": {
        "pipeline": "worker_plan_internal.plan.run_plan_pipeline",
        "filenames": "worker_plan_api.filenames",
        "speedvsdetail": "worker_plan_api.speedvsdetail",
        "llm_executor": "worker_plan_internal.llm_util.llm_executor",
    },
    "planexe": {
        "pipeline": "planexe.plan.run_plan_pipeline",
        "filenames": "planexe.plan.filenames",
        "speedvsdetail": "planexe.plan.speedvsdetail",
        "llm_executor": "planexe.llm_util.llm_executor",
    },
}


class PlanExeNotFound(ImportError):
    """No PlanExe layout could be imported; the message lists what was tried and why it failed."""


@dataclass(frozen=True)
class PlanExeAPI:
    """The PlanExe surface the patches use, whatever the layout."""

    layout: str  # "worker_plan", "planexe" or "double"
    pipeline: ModuleType
    filenames: ModuleType
    speedvsdetail: ModuleType
    llm_executor: ModuleType

    @property
    def FilenameEnum(self) -> Any:  # noqa: N802 - mirrors PlanExe's name
        return self.filenames.FilenameEnum

    @property
    def ExtraFilenameEnum(self) -> Any:  # noqa: N802
        return self.filenames.ExtraFilenameEnum

    @property
    def SpeedVsDetailEnum(self) -> Any:  # noqa: N802
        return self.speedvsdetail.SpeedVsDetailEnum

    @property
    def PipelineStopRequested(self) -> type[BaseException]:  # noqa: N802
        return self.llm_executor.PipelineStopRequested

    @property
    def LLMModelFromName(self) -> Any:  # noqa: N802
        return self.llm_executor.LLMModelFromName

    @property
    def LLMExecutor(self) -> Any:  # noqa: N802
        return self.llm_executor.LLMExecutor


_lock = threading.Lock()
_loaded: PlanExeAPI | None = None


def _find_layout(layout: str) -> str | None:
    """Why ``layout`` cannot be imported, or None if it can; imports parent packages only."""
    path = LAYOUTS[layout]["pipeline"]
    try:
        spec = importlib.util.find_spec(path)
    except ImportError as exc:  # a parent package is missing
        return f"{path} ({type(exc).__name__}: {exc})"
    return None if spec is not None else f"{path} (not found)"


def locate_planexe(target: str | None = None) -> tuple[str, str]:
    """Decide which PlanExe to use, without importing its pipeline module.

    Returns ``(layout, pipeline module name)``; layout is "worker_plan", "planexe" or
    "double". The drop-in entry point needs the name before the module is imported,
    because it runs that module as ``__main__``.
    """
    target = (target or os.environ.get(TARGET_ENV) or "auto").strip().lower()
    if target not in ("auto", "planexe", "double"):
        raise ValueError(f"{TARGET_ENV}={target!r} is not allowed: expected auto | planexe | double")
    problems: list[str] = []
    if target in ("auto", "planexe"):
        for layout in LAYOUTS:
            problem = _find_layout(layout)
            if problem is None:
                return layout, LAYOUTS[layout]["pipeline"]
            problems.append(problem)
        if target == "planexe":
            raise PlanExeNotFound(
                "PlanExe could not be found. Tried:\n  - "
                + "\n  - ".join(problems)
                + "\nPut PlanExe's 'worker_plan' folder (newest layout) or its repository root (older "
                f"'planexe' layout) on PYTHONPATH, or set {TARGET_ENV}=double to use the built-in test double."
            )
    from .planexe_double import activate

    activate()
    if target == "auto":
        logger.warning("PlanExe is not installed: using the built-in test double (%s=auto)", TARGET_ENV)
    return "double", LAYOUTS["worker_plan"]["pipeline"]


def load_planexe(target: str | None = None) -> PlanExeAPI:
    """Import PlanExe once per process (see the module docstring for ``target``)."""
    global _loaded
    with _lock:
        if _loaded is None:
            layout, _ = locate_planexe(target)
            paths = LAYOUTS["worker_plan" if layout == "double" else layout]
            modules = {role: importlib.import_module(path) for role, path in paths.items()}
            _loaded = PlanExeAPI(layout=layout, **modules)
            logger.info("planexe-concurrency: using PlanExe layout %r (%s)", layout, _loaded.pipeline.__file__)
        return _loaded
