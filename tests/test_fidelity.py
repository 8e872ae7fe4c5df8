"""The acceptance test: the concurrent pipeline writes exactly the files PlanExe's sequential one writes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import PipelineRunner, differing_files, plan_files, speculation_reports
from pipeline_patches.rundir import state_dir_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sequential_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    """One sequential (PlanExe's own tasks, one worker) run per speed mode, shared by the module."""
    import luigi.configuration

    from conftest import write_start_files

    runner = PipelineRunner(luigi.configuration.get_config())
    runs = {}
    for fast in (False, True):
        run_dir = write_start_files(tmp_path_factory.mktemp(f"sequential-{'fast' if fast else 'all'}"))
        assert runner(run_dir, concurrent=False, fast=fast)
        runs[fast] = run_dir
    return runs


@pytest.mark.parametrize("fast", [False, True], ids=["all_details", "fast"])
@pytest.mark.parametrize("max_parallel", [1, 4, 32])
def test_concurrent_outputs_are_byte_identical(
    sequential_runs: dict[bool, Path],
    new_run_dir: Callable[[str], Path],
    run_pipeline: PipelineRunner,
    fast: bool,
    max_parallel: int,
) -> None:
    run_dir = new_run_dir("concurrent")
    assert run_pipeline(run_dir, concurrent=True, fast=fast, max_parallel=max_parallel)
    reference = sequential_runs[fast]
    assert len(plan_files(reference)) > 60
    assert differing_files(reference, run_dir) == []
    # every call went through the engine once, and no call was sent in vain
    reports = speculation_reports(run_dir)
    assert sum(r["wasted"] for r in reports.values()) == 0, {k: r for k, r in reports.items() if r["wasted"]}
    # each call once: handed back from its early run, or asked by the real pass itself
    assert all(r["used"] + r["asked_live"] == r["calls"] for r in reports.values()), reports
    answers = list((state_dir_for(run_dir) / "answers").rglob("*.json"))
    assert len(answers) >= sum(r["calls"] for r in reports.values()) >= 60  # every call saved (ExpertFinder asks twice)
    # the tasks that share PlanExe's base run_inner (one call around run_with_llm) stop recording once
    # two of them made one call each
    assert sum(r["stopped_early"].startswith("not recorded") for r in reports.values()) >= (10 if fast else 25)
    # the loops went out together (each loop's first call is the real pass's own, beside them; for
    # ExpertReview's criticisms the real pass and the record pass race for the first)
    assert sum(r["overlapped"] for r in reports.values()) >= (13 if fast else 23)


def test_concurrent_under_four_luigi_workers_is_byte_identical(
    sequential_runs: dict[bool, Path], new_run_dir: Callable[[str], Path], run_pipeline: PipelineRunner
) -> None:
    run_dir = new_run_dir("workers4")
    assert run_pipeline(run_dir, concurrent=True, workers=4, max_parallel=8)
    assert differing_files(sequential_runs[False], run_dir) == []


def test_each_call_keeps_its_own_duration_at_one_point_two_seconds_per_call(
    sequential_runs: dict[bool, Path], tmp_path: Path, luigi_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The raw files record each call's duration (whole seconds, rounded up, as PlanExe does).

    At 1.2 s per call a real call records 2; an answer handed back instantly would record 1.
    So the files equal the sequential run's only if the replay returns what the early calls
    themselves measured.
    """
    import luigi

    from pipeline_patches import pipeline as patches

    monkeypatch.setenv("PLANEXE_SIMLLM_LATENCY", "1.2")
    tasks = ("CreateWBSLevel3Task", "ExpertReviewTask", "PremiseAttackTask")
    runs = {}
    for name in ("sequential", "concurrent"):
        run_dir = tmp_path / name
        shutil.copytree(sequential_runs[False], run_dir)
        for task_name in tasks:
            task = getattr(patches.P, task_name)(run_id_dir=run_dir, llm_models=["simulated"])
            for target in luigi.task.flatten(task.output()):
                target.remove()
            for raw in run_dir.glob(RAW_FILES[task_name]):
                raw.unlink()
        (patches.enable if name == "concurrent" else patches.disable)()
        try:
            built = [getattr(patches.P, t)(run_id_dir=run_dir, llm_models=["simulated"]) for t in tasks]
            assert luigi.build(built, local_scheduler=True, workers=1, log_level="WARNING")
        finally:
            patches.enable()
        runs[name] = run_dir
    assert differing_files(runs["sequential"], runs["concurrent"]) == []
    durations = [json.loads(p.read_text())["metadata"]["duration"] for p in sorted(runs["concurrent"].glob("023-1-*"))]
    assert durations and set(durations) == {2}
    reports = speculation_reports(runs["concurrent"])
    wbs3, experts = reports["CreateWBSLevel3Task"], reports["ExpertReviewTask"]
    # all but the first leaf were handed back from their early runs (the first is the real pass's own)
    assert wbs3["used"] == len(durations) - 1 and wbs3["asked_live"] == 1
    assert experts["rounds"] >= 1 and experts["used"] >= 1  # the criticisms, once the finder's answer was in


RAW_FILES = {
    "CreateWBSLevel3Task": "023-1-*",
    "ExpertReviewTask": "016-1-*",
    "PremiseAttackTask": "___none___",
}
