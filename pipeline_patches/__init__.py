"""PlanExe-specific task subclasses and graph changes (the engine is ``planexe_concurrency``).

Import :mod:`pipeline_patches.pipeline` to get the concurrent pipeline; importing this
package alone imports nothing of PlanExe.
"""
from __future__ import annotations

from types import ModuleType


def enable(module: ModuleType | None = None) -> None:
    """Rebind the task classes in a PlanExe pipeline module so every ``requires()`` picks the concurrent ones."""
    from .pipeline import enable as _enable

    _enable(module)


def disable(module: ModuleType | None = None) -> None:
    from .pipeline import disable as _disable

    _disable(module)
