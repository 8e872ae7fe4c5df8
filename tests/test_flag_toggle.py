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
from planexe_concurrency.events import ItemState, read_events
from pipeline_patches.patch_planexe import apply, revert
from pipeline_patches.planexe_double import DOUBLE_ROOT
from pipeline_patches.rundir import state_dir_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
# What PlanExe's entry point writes beside the plan, and may differ run to run.
ENTRY_POINT_EXTRAS = {"log.txt", "track_activity.jsonl", "expected_filenames1.json"}


# FAST mode on the double: 18 loop items that keep resume records, plus PremiseAttack's 5 lenses.
# Calls of a FAST plan on the double that went through the engine (every task's calls are sent
# by the speculative fan-out; the tails of the two long chains are asked in order and are not counted).
FAST_FANNED_OUT_ITEMS = 72  # every call of the FAST plan goes through the engine


def _events_file(run_dir: Path) -> Path:
    return run_dir.parent / f"{run_dir.name}-events.jsonl"


def _fanned_out_items(run_dir: Path) -> int:
    """How many calls the concurrent tasks completed through the engine (0 when PlanExe's own tasks ran).

    A call is its task and its label (``call N``, its place in the task), whichever way it went:
    sent early in a batch or asked by the real pass.
    """
    path = _events_file(run_dir)
    events = read_events(path) if path.exists() else []
    return len({(e.task, e.label) for e in events if e.state is ItemState.COMPLETED})


def _plan(run_dir: Path) -> dict[str, bytes]:
    return {k: v for k, v in plan_files(run_dir).items() if k not in ENTRY_POINT_EXTRAS}


def _run(module: str, run_dir: Path, pythonpath: list[Path], **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANEXE_", "LUIGI_"))}
    cfg = run_dir.parent / f"{run_dir.name}.cfg"  # the fan-out's events, to see which items ran concurrently
    cfg.write_text(f"[planexe_concurrency]\nevents_file = {_events_file(run_dir)}\n")
    env.update(
        LUIGI_CONFIG_PATH=str(cfg),
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
    assert not state_dir_for(off).exists() and _fanned_out_items(off) == 0  # PlanExe's own tasks ran
    assert "planexe-concurrency" not in proc.stdout + proc.stderr
    # PlanExe's console handler and the one Luigi adds beside it: each Luigi line twice
    assert (proc.stdout + proc.stderr).count("Done scheduling tasks") == 2
    assert "is not of type string" in proc.stdout + proc.stderr  # PlanExe's own parameters, as declared

    on = write_start_files(tmp_path / "on")
    proc = _run("worker_plan_internal.plan.run_plan_pipeline", on, [patched_copy, REPO], PLANEXE_CONCURRENCY="1", PLANEXE_WORKERS="3")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "luigi.build with 3 workers" in proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).count("Done scheduling tasks") == 1  # once, through PlanExe's handlers
    assert "is not of type string" not in proc.stdout + proc.stderr  # re-declared before PlanExe builds its tasks
    assert (on / "log.txt").read_text().count("Done scheduling tasks") == 1
    assert "planexe-concurrency: done in" in proc.stdout  # the summary, through PlanExe's logging
    status = subprocess.run(
        [sys.executable, "-m", "pipeline_patches.cli", "status", str(on), "--once"], capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0 and status.stdout.startswith("planexe-concurrency: done: "), status.stdout + status.stderr
    assert _fanned_out_items(on) == FAST_FANNED_OUT_ITEMS
    assert not (state_dir_for(on) / "answers").exists()  # a finished run keeps no saved answers
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
    assert not state_dir_for(off).exists() and _fanned_out_items(off) == 0

    on = write_start_files(tmp_path / "on")
    proc = _run("pipeline_patches.run_plan_pipeline", on, [REPO], PLANEXE_CONCURRENCY_TARGET="double", PLANEXE_CONCURRENCY="1", PLANEXE_WORKERS="2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert _fanned_out_items(on) == FAST_FANNED_OUT_ITEMS
    assert _plan(on) == _plan(off)


def test_revert_restores_the_checkout(patched_copy: Path, tmp_path: Path) -> None:
    copy = tmp_path / "again"
    shutil.copytree(patched_copy, copy)
    revert(copy)
    original = (DOUBLE_ROOT / "worker_plan_internal" / "plan" / "run_plan_pipeline.py").read_bytes()
    assert (copy / "worker_plan_internal" / "plan" / "run_plan_pipeline.py").read_bytes() == original


# -- the start-up hook: every entry point, no file of PlanExe's edited ------------------------
OURS = ("pipeline_patches", "planexe_concurrency")
LIST_OURS = (
    "import sys, luigi, luigi.interface, worker_plan_internal.plan.run_plan_pipeline;"
    f"print(sorted(m for m in sys.modules if m.split('.')[0] in {OURS!r}));"
    "print(luigi.build is luigi.interface.build)"
)


def _python(code: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANEXE_")}
    env.update(PYTHONPATH=str(DOUBLE_ROOT), **env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_with_the_flag_off_the_hook_imports_nothing_of_ours(startup_hook: Path) -> None:
    assert startup_hook.read_text().startswith("import os;")
    for off in ({}, {"PLANEXE_CONCURRENCY": "0"}, {"PLANEXE_CONCURRENCY": "off"}):
        proc = _python(LIST_OURS, **off)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == ["[]", "True"]  # PlanExe's own luigi.build, and no module of ours
    proc = _python(LIST_OURS, PLANEXE_CONCURRENCY="1")
    assert proc.stdout.splitlines()[1] == "False"  # with the flag on, luigi.build is ours once luigi is imported


def test_with_the_flag_on_importing_planexes_pipeline_loads_the_patches_before_any_build(startup_hook: Path) -> None:
    """A long-running worker imports PlanExe's pipeline at boot: the patches come with it, not with its first plan."""
    code = "import sys, worker_plan_internal.plan.run_plan_pipeline; print('pipeline_patches.pipeline' in sys.modules)"
    on = _python(code, PLANEXE_CONCURRENCY="1")
    assert on.returncode == 0, on.stderr
    assert on.stdout.splitlines() == ["True"]
    off = _python(code)
    assert off.returncode == 0, off.stderr
    assert off.stdout.splitlines() == ["False"]
    # luigi imported first, PlanExe later (the patch of luigi.build and the preload, each once)
    loaded = "print('pipeline_patches.pipeline' in sys.modules)"
    later = _python(f"import luigi, sys; {loaded}; import worker_plan_internal.plan.run_plan_pipeline; {loaded}", PLANEXE_CONCURRENCY="1")
    assert later.returncode == 0, later.stderr
    assert later.stdout.splitlines() == ["False", "True"]


def test_with_the_flag_on_a_build_that_is_not_planexes_passes_through(startup_hook: Path, tmp_path: Path) -> None:
    code = (
        "import luigi\n"
        "class Hello(luigi.Task):\n"
        f"    def output(self): return luigi.LocalTarget({str(tmp_path / 'hello.txt')!r})\n"
        "    def run(self):\n"
        "        with self.output().open('w') as f: f.write('hi')\n"
        "print(luigi.build([Hello()], local_scheduler=True, workers=1, log_level='WARNING'))\n"
        "import sys; print(sorted(m for m in sys.modules if m.startswith('pipeline_patches.') and m != 'pipeline_patches.startup'))"
    )
    proc = _python(code, PLANEXE_CONCURRENCY="1")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "hello.txt").read_text() == "hi"
    assert proc.stdout.splitlines()[-2] == "True"
    assert proc.stdout.splitlines()[-1] == "['pipeline_patches.flag_toggle', 'pipeline_patches.planexe']"  # not the patches


def test_the_hook_makes_planexes_unedited_entry_point_and_its_launcher_concurrent(startup_hook: Path, tmp_path: Path) -> None:
    """The double's own CLI entry and its worker_plan-style launcher (a subprocess), both unedited."""
    off = write_start_files(tmp_path / "off")
    proc = _run("worker_plan_internal.plan.run_plan_pipeline", off, [DOUBLE_ROOT])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "planexe-concurrency" not in proc.stdout + proc.stderr
    assert not state_dir_for(off).exists() and _fanned_out_items(off) == 0

    on = write_start_files(tmp_path / "on")
    proc = _run("worker_plan_internal.plan.run_plan_pipeline", on, [DOUBLE_ROOT], PLANEXE_CONCURRENCY="1", PLANEXE_WORKERS="3")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "luigi.build with 3 workers" in proc.stdout + proc.stderr
    assert _fanned_out_items(on) == FAST_FANNED_OUT_ITEMS
    assert not (state_dir_for(on) / "answers").exists()  # a finished run keeps no saved answers
    assert _plan(on) == _plan(off)

    launched = write_start_files(tmp_path / "launched")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANEXE_")}
    env.update(PYTHONPATH=str(DOUBLE_ROOT), PLANEXE_CONCURRENCY="1", PLANEXE_WORKERS="2")
    proc = subprocess.run(
        [sys.executable, "-m", "worker_plan_app", str(launched), "simulated", "fast_but_skip_details"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "luigi.build with 2 workers" in proc.stdout + proc.stderr
    assert _plan(launched) == _plan(off)


def test_a_wheel_ships_the_startup_hook_at_the_top_of_site_packages(tmp_path: Path) -> None:
    import zipfile

    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("planexe_concurrency-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "planexe_concurrency_startup.pth" in names  # top level: pip puts it straight into site-packages
    assert "pipeline_patches/startup.py" in names
    line = zipfile.ZipFile(wheel).read("planexe_concurrency_startup.pth").decode()
    assert line == (REPO / "pipeline_patches" / "planexe_concurrency_startup.pth").read_text()
