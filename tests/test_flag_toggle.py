"""PLANEXE_CONCURRENCY on PlanExe's own entry point: patched (a copy of the double's) and drop-in, both ways."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_start_files
from pipeline_patches.compare import plan_files
from pipeline_patches.patch_planexe import apply, revert
from pipeline_patches.planexe_double import DOUBLE_ROOT

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
# What PlanExe's entry point writes beside the plan, and may differ run to run.
ENTRY_POINT_EXTRAS = {"log.txt", "track_activity.jsonl", "expected_filenames1.json"}


def _plan(run_dir: Path) -> dict[str, bytes]:
    return {k: v for k, v in plan_files(run_dir).items() if k not in ENTRY_POINT_EXTRAS}


def _run(module: str, run_dir: Path, pythonpath: list[Path], **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANEXE_")}
    env.update(
        PYTHONPATH=os.pathsep.join(str(p) for p in pythonpath),
        RUN_ID_DIR=str(run_dir),
        LLM_MODEL="simulated",
        SPEED_VS_DETAIL="fast_but_skip_details",
        **env_extra,
    )
    return subprocess.run([sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def patched_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the double's packages with the hook applied, as on a user's PlanExe checkout."""
    root = tmp_path_factory.mktemp("checkout")
    for package in ("worker_plan_api", "worker_plan_internal"):
        shutil.copytree(DOUBLE_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    target, changed = apply(root)
    assert changed and target == root / "worker_plan_internal" / "plan" / "run_plan_pipeline.py"
    return root


def test_patched_entry_point_flag_off_is_planexe_and_flag_on_is_concurrent(patched_copy: Path, tmp_path: Path) -> None:
    off = write_start_files(tmp_path / "off")
    proc = _run("worker_plan_internal.plan.run_plan_pipeline", off, [patched_copy, REPO])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not (off / ".planexe_concurrency").exists()  # PlanExe's own tasks ran
    assert "planexe-concurrency" not in proc.stdout + proc.stderr

    on = write_start_files(tmp_path / "on")
    proc = _run("worker_plan_internal.plan.run_plan_pipeline", on, [patched_copy, REPO], PLANEXE_CONCURRENCY="1", PLANEXE_WORKERS="3")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "luigi.build with 3 workers" in proc.stdout + proc.stderr
    assert len(list((on / ".planexe_concurrency" / "items").glob("*.record"))) == 18
    assert _plan(on) == _plan(off)


def test_bad_worker_count_is_refused_before_anything_runs(patched_copy: Path, tmp_path: Path) -> None:
    run_dir = write_start_files(tmp_path / "bad")
    proc = _run("worker_plan_internal.plan.run_plan_pipeline", run_dir, [patched_copy, REPO], PLANEXE_CONCURRENCY="1", PLANEXE_WORKERS="zero")
    assert proc.returncode != 0
    assert "PLANEXE_WORKERS='zero' is not allowed: expected an integer in 1..64" in proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["001-1-start_time.json", "001-2-plan.txt"]


def test_drop_in_entry_point_both_ways(tmp_path: Path) -> None:
    off = write_start_files(tmp_path / "off")
    proc = _run("pipeline_patches.run_plan_pipeline", off, [REPO], PLANEXE_CONCURRENCY_TARGET="double")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not (off / ".planexe_concurrency").exists()

    on = write_start_files(tmp_path / "on")
    proc = _run("pipeline_patches.run_plan_pipeline", on, [REPO], PLANEXE_CONCURRENCY_TARGET="double", PLANEXE_CONCURRENCY="1", PLANEXE_WORKERS="2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (on / ".planexe_concurrency" / "items").is_dir()
    assert _plan(on) == _plan(off)


def test_revert_restores_the_checkout(patched_copy: Path, tmp_path: Path) -> None:
    copy = tmp_path / "again"
    shutil.copytree(patched_copy, copy)
    revert(copy)
    original = (DOUBLE_ROOT / "worker_plan_internal" / "plan" / "run_plan_pipeline.py").read_bytes()
    assert (copy / "worker_plan_internal" / "plan" / "run_plan_pipeline.py").read_bytes() == original
