"""``PLANEXE_CONCURRENCY=1`` for every PlanExe entry point, without editing PlanExe's files.

PlanExe runs its pipeline from its CLI (``python -m ...run_plan_pipeline``), from its
FastAPI worker (which starts that same module as a subprocess, passing its environment on)
and in-process in its multi-user database worker. All three end in one ``luigi.build``
call. The package installs ``planexe_concurrency_startup.pth`` into site-packages, the
start-up hook the Python ecosystem uses for drop-in instrumentation: Python runs its one
line at the start of every interpreter of the environment. With the flag unset the line
imports nothing of ours. With it set, it calls :func:`install`: once ``luigi`` is imported,
``luigi.build`` becomes :func:`pipeline_patches.flag_toggle.concurrent_build`, which runs
PlanExe's pipeline concurrently and passes every other build through unchanged.

An editable install (``pip install -e``) cannot ship a ``.pth`` file; there,
``planexe-concurrency hook install`` writes the same line (``hook remove`` takes it out).
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

PTH_NAME = "planexe_concurrency_startup.pth"
PTH_LINE = (Path(__file__).with_name(PTH_NAME)).read_text(encoding="utf-8")


def concurrent_luigi_build(tasks: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
    """What ``luigi.build`` is with the flag on (imports the patches only when a build starts)."""
    from .flag_toggle import concurrent_build

    return concurrent_build(tasks, *args, **kwargs)


def _patch_luigi(luigi: ModuleType) -> None:
    if getattr(luigi, "build", None) is not concurrent_luigi_build:
        luigi.build = concurrent_luigi_build  # type: ignore[attr-defined]


def _preload_patches(_pipeline: ModuleType) -> None:
    """Import the patches as soon as PlanExe's pipeline module is imported, rather than at the
    first build: a long-running worker (``worker_plan_database``) imports that module at boot,
    so it pays this (~0.6 s, most of it the client libraries' lazy imports) once, before it
    claims a request, instead of in its first plan. Best effort: the build imports them again
    and reports a real problem there."""
    try:
        importlib.import_module(f"{__package__}.pipeline")
    except Exception:  # noqa: BLE001 - never break PlanExe's own import
        pass


class _RunAfterImport(importlib.abc.MetaPathFinder):
    """Finds the modules it waits for like the rest of ``sys.meta_path`` would, and runs a
    function on each right after its code has run (before its importer sees it)."""

    def __init__(self, after: dict[str, Any]) -> None:
        self.after = after

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        then = self.after.pop(fullname, None)
        if then is None:
            return None
        if not self.after:
            sys.meta_path[:] = [finder for finder in sys.meta_path if finder is not self]
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then(module: ModuleType) -> None:
            exec_module(module)
            then(module)

        spec.loader.exec_module = exec_then  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Called by the start-up line when the flag is on; safe to call twice."""
    if any(isinstance(finder, _RunAfterImport) for finder in sys.meta_path):
        return
    from .planexe import LAYOUTS

    after: dict[str, Any] = {layout["pipeline"]: _preload_patches for layout in LAYOUTS.values()}
    luigi = sys.modules.get("luigi")
    if luigi is not None:
        _patch_luigi(luigi)
    else:
        after["luigi"] = _patch_luigi
    after = {name: then for name, then in after.items() if name not in sys.modules}
    if after:
        sys.meta_path.insert(0, _RunAfterImport(after))


# -- for editable installs: write or remove the line by hand ---------------------------
def site_packages() -> Path:
    """Where this interpreter's environment reads ``.pth`` files at start-up."""
    return Path(sysconfig.get_paths()["purelib"])


def hook_path() -> Path:
    return site_packages() / PTH_NAME


def hook_installed() -> bool:
    path = hook_path()
    return path.is_file() and path.read_text(encoding="utf-8") == PTH_LINE


def install_hook() -> tuple[Path, bool]:
    """Write the start-up line into site-packages; returns (path, changed)."""
    from planexe_concurrency.resume import atomic_write_text

    path = hook_path()
    if hook_installed():
        return path, False
    atomic_write_text(path, PTH_LINE)
    return path, True


def remove_hook() -> tuple[Path, bool]:
    path = hook_path()
    if not path.exists():
        return path, False
    path.unlink()
    return path, True


__all__ = ["PTH_NAME", "concurrent_luigi_build", "hook_installed", "install", "install_hook", "remove_hook"]
