"""The acceptance test: the concurrent pipeline writes exactly the files PlanExe's sequential one writes."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

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
    assert sum(r["asked_live"] for r in reports.values()) == 0, {k: r for k, r in reports.items() if r["asked_live"]}
    answers = list((state_dir_for(run_dir) / "answers").rglob("*.json"))
    assert len(answers) >= sum(r["sent_early"] for r in reports.values()) >= 60  # a call may ask twice (ExpertFinder)


def test_concurrent_under_four_luigi_workers_is_byte_identical(
    sequential_runs: dict[bool, Path], new_run_dir: Callable[[str], Path], run_pipeline: PipelineRunner
) -> None:
    run_dir = new_run_dir("workers4")
    assert run_pipeline(run_dir, concurrent=True, workers=4, max_parallel=8)
    assert differing_files(sequential_runs[False], run_dir) == []
