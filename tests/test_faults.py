"""A whole pipeline against a faulty provider: real HTTP on 127.0.0.1, forked Luigi workers.

The simulated server injects 429s (with Retry-After), 500s, timeouts, dropped connections
and cut-off JSON bodies; its request log is the witness for retries and the request rate.
"""
from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Callable

import luigi
import pytest

from conftest import PipelineRunner, differing_files
from planexe_concurrency.simllm import SimServer
from planexe_concurrency.simllm.server import max_requests_in_window
from pipeline_patches.planexe import load_planexe
from pipeline_patches.rundir import state_dir_for

pytest.importorskip("llama_index.llms.openai_like")
pytestmark = pytest.mark.slow

pe = load_planexe()
# A call fails for good only if all its tries fail: 0.15**6 * ~75 calls ~ 1 in 12,000 runs.
RETRY_ATTEMPTS = 6
REQUESTS_PER_MINUTE = 1200  # one request every 0.05 s, for the whole run, over every worker
FAST_RETRIES = dict(retry_attempts=RETRY_ATTEMPTS, retry_backoff_base=0.05, retry_backoff_max=0.5, retry_jitter=0.05)


def _tries_per_call(server: SimServer, model: str = "simulated") -> collections.Counter[str]:
    return collections.Counter(r.key for r in server.log if r.model == model)


def test_pipeline_completes_with_identical_files_under_provider_faults(
    http_reference: Path,
    sim_server_factory: Callable[..., SimServer],
    new_run_dir: Callable[[str], Path],
    run_pipeline: PipelineRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = sim_server_factory(
        latency=0.02, fault_rate=0.15, faults=("429", "500", "timeout", "drop", "malformed"), timeout_seconds=0.3, seed=7
    )
    monkeypatch.setenv("PLANEXE_SIMLLM_URL", server.url)
    run_dir = new_run_dir("faults")
    ok = run_pipeline(
        run_dir, concurrent=True, workers=4, fast=True, llm_models=("simulated-http",),
        max_parallel=8, requests_per_minute=REQUESTS_PER_MINUTE, **FAST_RETRIES,
    )
    assert ok
    # lenient: a call that timed out and was retried records a longer duration in its raw file
    assert differing_files(http_reference, run_dir, lenient=True) == []

    log = server.log
    faults = collections.Counter(r.fault for r in log if r.fault)
    # The kind of each fault is drawn per request, so with ~14 faults one kind can be missing
    # in a run (the order of requests varies with the workers); at least four of five appear.
    assert set(faults) <= {"429", "500", "timeout", "drop", "malformed"} and len(set(faults)) >= 4, faults
    assert sum(faults.values()) >= 8  # ~15% of ~75 calls really failed and were retried
    # retries never exceed the configured count: at most RETRY_ATTEMPTS tries of any one call
    assert max(_tries_per_call(server).values()) <= RETRY_ATTEMPTS
    # the request budget held across the four forked workers, measured from the server's side
    window = 3.0
    assert max_requests_in_window(log, window, accepted_only=False) <= window * REQUESTS_PER_MINUTE / 60 + 2
    slot_file = state_dir_for(run_dir) / "rate_limit.slots"
    assert slot_file.is_file()


def test_a_model_that_always_fails_falls_back_to_the_next_as_planexe_does(
    http_reference: Path,
    sim_server_factory: Callable[..., SimServer],
    tmp_path: Path,
    luigi_config: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plain task and a fanned-out one, with ["broken", "simulated"]: each call ends on the second model."""
    import shutil

    from conftest import set_concurrency
    from pipeline_patches import pipeline as patches

    server = sim_server_factory(fail_models=("broken",))
    monkeypatch.setenv("PLANEXE_SIMLLM_URL", server.url)
    run_dir = tmp_path / "fallback"
    shutil.copytree(http_reference, run_dir)
    set_concurrency(luigi_config, **FAST_RETRIES)
    models = ["simulated-http-broken", "simulated-http"]
    speed = pe.SpeedVsDetailEnum.FAST_BUT_SKIP_DETAILS
    tasks = [
        patches.P.SWOTAnalysisTask(run_id_dir=run_dir, llm_models=models, speedvsdetail=speed),  # PlanExe's own task
        patches.P.CreateWBSLevel3Task(run_id_dir=run_dir, llm_models=models, speedvsdetail=speed),  # a fan-out
    ]
    for task in tasks:
        outputs = task.output()
        for target in (outputs.values() if isinstance(outputs, dict) else [outputs]):
            target.remove()
    shutil.rmtree(state_dir_for(run_dir), ignore_errors=True)
    assert luigi.build(tasks, local_scheduler=True, log_level="WARNING")
    assert differing_files(http_reference, run_dir) == []

    broken = collections.Counter(r.key for r in server.log if r.model == "broken")
    good = collections.Counter(r.key for r in server.log if r.model == "simulated")
    # SWOT's call and WBS level 3's two leaf tasks (FAST mode): each went to the broken model
    # first (a 500 is transient: retried up to the limit, no more), then fell back once.
    assert len(broken) == len(good) == 1 + 2
    assert set(broken.values()) == {RETRY_ATTEMPTS}
    assert set(good.values()) == {1}
    first_good = {r.key: r.arrival for r in server.log if r.model == "simulated"}
    assert min(first_good.values()) > min(r.arrival for r in server.log if r.model == "broken")
