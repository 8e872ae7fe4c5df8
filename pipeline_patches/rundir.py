"""Create and check a PlanExe run directory before anything runs.

PlanExe's front ends write two files before the pipeline starts: the start time (JSON)
and the plan prompt. The CLI does the same, with PlanExe's own classes when a real
PlanExe is installed, and refuses a directory it cannot use with one clear line.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from planexe_concurrency.resume import atomic_write_text

from .planexe import load_planexe

DEFAULT_PROMPT = (
    "Open a small neighbourhood bike repair café in a mid-sized town, run by volunteers, "
    "financed by a municipal grant and modest fees, opening within six months."
)


STATE_DIR_NAME = ".planexe_concurrency"


def state_dir_for(run_dir: str | Path) -> Path:
    """Our folder for a run (not created here): beside the run directory, never inside it.

    PlanExe treats everything in the run directory as the plan: its progress counts the
    files there, its worker service lists them, and its database worker zips the whole
    folder for the user. So our records live in ``<parent>/.planexe_concurrency/<run name>/``:
    on the same storage (every worker and every host on shared storage sees them, and a
    rerun resumes from them), outside what PlanExe hands out.
    """
    run_dir = Path(os.path.abspath(run_dir))
    return run_dir.parent / STATE_DIR_NAME / run_dir.name


class RunDirError(ValueError):
    """The run directory cannot be used as asked; nothing was written."""


def _start_time_json(start: datetime) -> str:
    try:
        from worker_plan_api.start_time import StartTime  # a real PlanExe's own format

        return json.dumps(asdict(StartTime.create(start)), indent=2)
    except ImportError:
        local = start.astimezone().replace(microsecond=0)
        return json.dumps(
            {
                "server_iso_utc": local.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "server_iso_local": local.isoformat(),
                "server_timezone_name": local.tzname() or "unknown",
            },
            indent=2,
        )


def _plan_text(prompt: str, start: datetime) -> str:
    try:
        from worker_plan_api.plan_file import PlanFile  # a real PlanExe's own format

        return PlanFile.create(prompt, start).content
    except ImportError:
        return prompt


def check_run_dir(run_dir: Path) -> Path:
    """An existing run directory with both start files, the start time parseable; writes nothing."""
    planexe = load_planexe()
    start_name = planexe.FilenameEnum.START_TIME.value
    plan_name = planexe.FilenameEnum.INITIAL_PLAN.value
    if not run_dir.exists():
        raise RunDirError(f"run directory {run_dir} does not exist (create it with {start_name} and {plan_name} first)")
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} exists and is not a directory")
    for name in (start_name, plan_name):
        if not (run_dir / name).is_file():
            raise RunDirError(f"run directory {run_dir} is malformed: {name} is missing")
    try:
        json.loads((run_dir / start_name).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RunDirError(f"run directory {run_dir} is malformed: {start_name} is not JSON ({exc})") from exc
    return run_dir


def prepare_run_dir(run_dir: Path, prompt: str | None, start: datetime | None = None) -> Path:
    """Make ``run_dir`` ready: new (with a prompt) or existing with both start files (resume)."""
    planexe = load_planexe()
    start_name = planexe.FilenameEnum.START_TIME.value
    plan_name = planexe.FilenameEnum.INITIAL_PLAN.value
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} exists and is not a directory")
    has_start = (run_dir / start_name).is_file()
    has_plan = (run_dir / plan_name).is_file()
    if run_dir.exists() and (has_start or has_plan):
        check_run_dir(run_dir)
        if prompt is not None:
            raise RunDirError(f"run directory {run_dir} already holds a plan; leave out the prompt to resume it")
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(f"run directory {run_dir} is not empty and has no {start_name}: not a PlanExe run")
    start = start or datetime.now().astimezone()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / start_name, _start_time_json(start))
    atomic_write_text(run_dir / plan_name, _plan_text(prompt or DEFAULT_PROMPT, start))
    return run_dir
