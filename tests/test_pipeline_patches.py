"""pipeline_patches against the double: rebinding, the shim, the luigi CLI, forked workers, stop, resume, errors."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import luigi
import pytest

from conftest import PipelineRunner, differing_files, set_concurrency, speculation_reports, true_in_a_forked_child, write_start_files
from planexe_concurrency.events import ItemState, read_events
from pipeline_patches import pipeline as patches
from pipeline_patches.planexe import load_planexe
from pipeline_patches.rundir import state_dir_for

REPO = Path(__file__).resolve().parent.parent
pe = load_planexe()
P = pe.pipeline


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PLANEXE_CONCURRENCY_TARGET"] = "double"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sequential run of PlanExe's own (double's) tasks, ALL_DETAILS."""
    run_dir = write_start_files(tmp_path_factory.mktemp("reference"))
    assert PipelineRunner(luigi.configuration.get_config())(run_dir, concurrent=False)
    return run_dir


def test_enable_rebinds_module_globals_so_requires_picks_concurrent_tasks(new_run_dir: Callable[[str], Path]) -> None:
    patches.enable()
    assert patches.is_enabled()
    root = P.FullPlanPipeline(run_id_dir=new_run_dir("r"), llm_models=["simulated"])
    deps = root.requires()
    for name, cls in patches.CONCURRENT_TASKS.items():
        assert any(type(t) is cls for t in deps.values()), name
    patches.disable()
    try:
        assert not patches.is_enabled()
        assert P.PlanTask.complete is luigi.Task.complete  # the double's PlanTask, like PlanExe's, inherits Luigi's
        deps = P.FullPlanPipeline(run_id_dir=new_run_dir("s"), llm_models=["simulated"]).requires()
        assert not any(type(t) in patches.CONCURRENT_TASKS.values() for t in deps.values())
        assert P.PlanTask.run is not patches._PLAN_TASK_PATCHES["run"]
    finally:
        patches.enable()
    assert P.PlanTask.run is patches._PLAN_TASK_PATCHES["run"]
    # same class names and task ids as PlanExe's, so an existing run directory resumes
    ours = patches.CONCURRENT_TASKS["GovernancePhase6ExtraTask"](run_id_dir=Path("/x"), llm_models=["m"])
    theirs = patches._ORIGINALS["GovernancePhase6ExtraTask"](run_id_dir=Path("/x"), llm_models=["m"])
    assert ours.task_id == theirs.task_id and ours.output()["raw"].path == theirs.output()["raw"].path
    # every other task keeps PlanExe's class; its run() is PlanTask's, patched
    assert patches.P.CreateWBSLevel3Task.run is patches._PLAN_TASK_PATCHES["run"]


def test_package_level_enable_and_disable() -> None:
    import pipeline_patches

    pipeline_patches.disable()
    assert not patches.is_enabled()
    pipeline_patches.enable()
    assert patches.is_enabled()


def test_shim_says_what_it_could_not_find(tmp_path: Path) -> None:
    code = "from pipeline_patches.planexe import load_planexe; load_planexe()"
    env = _env(PLANEXE_CONCURRENCY_TARGET="planexe")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    assert "PlanExe could not be found. Tried:" in proc.stderr
    assert "worker_plan_internal.plan.run_plan_pipeline" in proc.stderr and "planexe.plan.run_plan_pipeline" in proc.stderr
    proc = subprocess.run([sys.executable, "-c", code], env=_env(PLANEXE_CONCURRENCY_TARGET="nope"), capture_output=True, text=True)
    assert "PLANEXE_CONCURRENCY_TARGET='nope' is not allowed: expected auto | planexe | double" in proc.stderr


def test_shim_finds_the_older_planexe_layout(tmp_path: Path) -> None:
    """The older layout keeps everything in one ``planexe`` package."""
    for mod, body in {
        "planexe/__init__.py": "",
        "planexe/plan/__init__.py": "",
        "planexe/plan/run_plan_pipeline.py": "MARK = 'old layout'\n",
        "planexe/plan/filenames.py": "FilenameEnum = None\nExtraFilenameEnum = None\n",
        "planexe/plan/speedvsdetail.py": "SpeedVsDetailEnum = None\n",
        "planexe/llm_util/__init__.py": "",
        "planexe/llm_util/llm_executor.py": "class PipelineStopRequested(RuntimeError):\n    pass\n",
    }.items():
        (tmp_path / mod).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / mod).write_text(body)
    code = "from pipeline_patches.planexe import load_planexe; api = load_planexe(); print(api.layout, api.pipeline.MARK)"
    env = _env(PLANEXE_CONCURRENCY_TARGET="auto", PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.stdout.strip() == "planexe old layout", proc.stderr


@pytest.mark.slow
def test_luigi_command_line_with_several_workers(reference: Path, new_run_dir: Callable[[str], Path]) -> None:
    run_dir = new_run_dir("cli")
    cmd = [
        sys.executable, "-m", "luigi", "--module", "pipeline_patches.pipeline", "ConcurrentFullPlanPipeline",
        "--run-id-dir", str(run_dir), "--llm-models", '["simulated"]', "--workers", "4", "--local-scheduler",
        "--planexe-concurrency-max-parallel", "8",
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert differing_files(reference, run_dir) == []
    output = proc.stdout + proc.stderr
    assert output.count("Done scheduling tasks") == 1 and "is not of type string" not in output  # each line once
    reports = speculation_reports(run_dir)
    # five leaves: the first asked by the real pass, the other four sent at once beside it
    assert reports["CreateWBSLevel3Task"]["sent_early"] == 4 and sum(r["wasted"] for r in reports.values()) == 0


class FileProgress:
    """A PlanExe-style progress/stop callback whose state lives on disk, as it must across forks."""

    def __init__(self, path: Path, stop_after: int | None = None) -> None:
        self.path = path
        self.stop_after = stop_after

    def __call__(self, task: Any, duration: float) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"task": task.task_family, "pid": os.getpid(), "time": time.time()}) + "\n")
        if self.stop_after is not None and len(self.path.read_text().splitlines()) >= self.stop_after:
            raise pe.PipelineStopRequested("stop requested by the test")


def _only_whole_files(run_dir: Path, reference: Path) -> None:
    """Every file the interrupted run left is the complete file a full run writes (the double is deterministic)."""
    from pipeline_patches.compare import plan_files

    ours, full = plan_files(run_dir), plan_files(reference)
    partial = [name for name, data in ours.items() if name in full and data != full[name]]
    assert partial == []
    assert not list(run_dir.rglob("*.tmp"))


@pytest.mark.slow
def test_forked_workers_report_progress_and_a_stop_ends_every_task_then_resumes(
    reference: Path, new_run_dir: Callable[[str], Path], run_pipeline: PipelineRunner, tmp_path: Path
) -> None:
    run_dir = new_run_dir("stop")
    events_file = state_dir_for(run_dir) / "events.jsonl"
    progress = tmp_path / "progress.jsonl"
    latency = os.environ.get("PLANEXE_SIMLLM_LATENCY")
    os.environ["PLANEXE_SIMLLM_LATENCY"] = "0.05"
    try:
        ok = run_pipeline(
            run_dir, concurrent=True, workers=4, callback=FileProgress(progress, stop_after=40),
            events_file=str(events_file), max_parallel=8,
        )
    finally:
        if latency is None:
            os.environ.pop("PLANEXE_SIMLLM_LATENCY")
        else:
            os.environ["PLANEXE_SIMLLM_LATENCY"] = latency
    assert not ok
    flag = run_dir / pe.ExtraFilenameEnum.PIPELINE_STOP_REQUESTED_FLAG.value
    assert flag.exists()
    lines = [json.loads(x) for x in progress.read_text().splitlines()]
    # tasks of several forked workers reported, and every call ran in the parent, which owns the callback
    assert len({x["task"] for x in lines}) > 1
    assert {x["pid"] for x in lines} == {os.getpid()}
    # after the stop, no fan-out item started more than one call's latency later
    stopped_at = flag.stat().st_mtime
    events = read_events(events_file)
    late = [e for e in events if e.state is ItemState.RUNNING and e.time > stopped_at + 0.5]
    assert late == []
    # every fan-out that was in flight ended within about one call's latency (0.05 s) of the flag
    assert max(e.time for e in events) <= stopped_at + 0.05 + 0.5
    _only_whole_files(run_dir, reference)
    # a later run resumes and ends with exactly the reference files
    flag.unlink()
    assert run_pipeline(run_dir, concurrent=True, workers=4, max_parallel=8)
    assert differing_files(reference, run_dir) == []


def _copy_run(reference: Path, dest: Path) -> Path:
    shutil.copytree(reference, dest)
    return dest


def test_resume_reuses_saved_answers_and_asks_corrupt_ones_again(
    reference: Path, tmp_path: Path, luigi_config: Any
) -> None:
    run_dir = _copy_run(reference, tmp_path / "resume")
    events_file = tmp_path / "events.jsonl"
    set_concurrency(luigi_config, events_file=str(events_file))
    task = P.CreateWBSLevel3Task(run_id_dir=run_dir, llm_models=["simulated"])
    task.output().remove()
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    first = read_events(events_file)
    assert sum(e.state is ItemState.RUNNING for e in first) == 5
    assert differing_files(reference, run_dir) == []

    answers = sorted((state_dir_for(run_dir) / "answers" / "CreateWBSLevel3Task").glob("*.json"))
    assert len(answers) == 5
    answers[1].write_text('{"request": "x", "val')  # an answer cut short
    (run_dir / "023-1-3-wbs_level3_raw.json").unlink()  # a raw file gone (its answer is fine)
    task.output().remove()
    events_file.unlink()
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    second = read_events(events_file)
    assert sum(e.state is ItemState.RUNNING for e in second) == 1  # only the cut-short one is asked again
    report = speculation_reports(run_dir)["CreateWBSLevel3Task"]
    # four come from disk; the call left is asked once (early or by the real pass), nothing in vain
    assert (report["replayed_from_store"], report["used"] + report["asked_live"], report["wasted"]) == (4, 1, 0)
    assert differing_files(reference, run_dir) == []


def test_loop_failure_raises_planexes_message(reference: Path, tmp_path: Path) -> None:
    run_dir = _copy_run(reference, tmp_path / "fail")
    task = P.DraftDocumentsToFindTask(run_id_dir=run_dir, llm_models=["simulated-fail"])
    before = (run_dir / task.output().path).read_bytes()
    with pytest.raises(Exception) as info:
        task.run()
    chain = []
    err: BaseException | None = info.value
    while err is not None:
        chain.append(str(err))
        err = err.__cause__
    assert "DraftDocumentsToFindTask" in chain[0]  # PlanTask.run wraps it, naming the task
    assert "Document-to-find 1 LLM interaction failed." in chain
    assert any("Exhausted all LLMs" in c for c in chain)
    assert (run_dir / task.output().path).read_bytes() == before  # nothing half-written


def test_stop_request_inside_a_loop_is_not_wrapped(reference: Path, tmp_path: Path) -> None:
    run_dir = _copy_run(reference, tmp_path / "stop-inside")
    for p in run_dir.glob("022-*"):
        p.unlink()
    shutil.rmtree(state_dir_for(run_dir), ignore_errors=True)

    def stop(task: Any, duration: float) -> None:
        raise pe.PipelineStopRequested("user closed the tab")

    task = P.EstimateTaskDurationsTask(run_id_dir=run_dir, llm_models=["simulated"], _pipeline_executor_callback=stop)
    with pytest.raises(pe.PipelineStopRequested, match="user closed the tab"):
        task.run()
    assert (run_dir / pe.ExtraFilenameEnum.PIPELINE_STOP_REQUESTED_FLAG.value).exists()
    assert not Path(task.output().path).exists()


@pytest.mark.slow
def test_governance_parallel_changes_only_phases_5_and_6_and_what_reads_them(
    reference: Path, new_run_dir: Callable[[str], Path], run_pipeline: PipelineRunner, luigi_config: Any
) -> None:
    set_concurrency(luigi_config, governance_parallel=True)
    p5 = patches.CONCURRENT_TASKS["GovernancePhase5MonitoringProgressTask"](run_id_dir=Path("/x"), llm_models=["m"])
    p6 = patches.CONCURRENT_TASKS["GovernancePhase6ExtraTask"](run_id_dir=Path("/x"), llm_models=["m"])
    assert "governance_phase4_decision_escalation_matrix" not in p5.requires()
    assert {"governance_phase4_decision_escalation_matrix", "governance_phase5_monitoring_progress"}.isdisjoint(p6.requires())
    run_dir = new_run_dir("governance")
    assert run_pipeline(run_dir, concurrent=True, workers=4, governance_parallel=True)
    changed = differing_files(reference, run_dir)
    fe = pe.FilenameEnum
    allowed = {
        fe.GOVERNANCE_PHASE5_MONITORING_PROGRESS_RAW.value,
        fe.GOVERNANCE_PHASE5_MONITORING_PROGRESS_MARKDOWN.value,
        fe.GOVERNANCE_PHASE6_EXTRA_RAW.value,
        fe.GOVERNANCE_PHASE6_EXTRA_MARKDOWN.value,
        fe.CONSOLIDATE_GOVERNANCE_MARKDOWN.value,
        fe.REPORT.value,
    }
    assert fe.GOVERNANCE_PHASE5_MONITORING_PROGRESS_RAW.value in changed
    assert fe.GOVERNANCE_PHASE6_EXTRA_RAW.value in changed
    assert set(changed) <= allowed, set(changed) - allowed
    set_concurrency(luigi_config, governance_parallel=False)
    assert "governance_phase4_decision_escalation_matrix" in p5.requires()


def _ours_and_planexes_with_a_failing_model(reference: Path, tmp_path: Path, task_name: str) -> dict[str, dict[str, bytes]]:
    """The files PlanExe's task writes, patched and not, when every call fails ('simulated-fail')."""
    outputs = {}
    for name in ("ours", "planexe"):
        run_dir = _copy_run(reference, tmp_path / name)
        task = getattr(P, task_name)(run_id_dir=run_dir, llm_models=["simulated-fail"])
        for target in task.output().values():
            target.remove()
        if name == "planexe":
            patches.disable()
        try:
            task.run()
        finally:
            patches.enable()
        outputs[name] = {k: Path(t.path).read_bytes() for k, t in task.output().items()}
    return outputs


def test_consolidate_assumptions_carries_on_past_failed_items_like_planexe(reference: Path, tmp_path: Path) -> None:
    outputs = _ours_and_planexes_with_a_failing_model(reference, tmp_path, "ConsolidateAssumptionsMarkdownTask")
    assert outputs["ours"] == outputs["planexe"]
    assert outputs["ours"]["short"].count(b"Error shortening markdown file.") == 8


def test_premise_attack_asks_its_five_lenses_at_once_and_writes_planexes_files(
    reference: Path, tmp_path: Path, luigi_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = _copy_run(reference, tmp_path / "premise")
    events_file = tmp_path / "events.jsonl"
    set_concurrency(luigi_config, events_file=str(events_file), max_parallel=8)
    task = P.PremiseAttackTask(run_id_dir=run_dir, llm_models=["simulated"])
    for target in task.output().values():
        target.remove()
    monkeypatch.setenv("PLANEXE_SIMLLM_LATENCY", "0.2")
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    assert differing_files(reference, run_dir) == []
    events = read_events(events_file)
    running = sorted(e.time for e in events if e.state is ItemState.RUNNING)
    assert len(running) == 5
    assert running[-1] - running[0] < 0.2  # all five in flight together, not one after another


def test_premise_attack_skips_failed_lenses_like_planexe(
    reference: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="planexe_concurrency"):
        outputs = _ours_and_planexes_with_a_failing_model(reference, tmp_path, "PremiseAttackTask")
    assert outputs["ours"] == outputs["planexe"]
    assert b'"response_list": []' in outputs["ours"]["raw"]
    # each lens given up is logged at WARNING with its task and call (README), none at ERROR by us
    ours = [r for r in caplog.records if r.name.startswith("planexe_concurrency")]
    failed = [r.getMessage() for r in ours if r.levelno == logging.WARNING and "state=failed" in r.getMessage()]
    assert all(any("task=PremiseAttackTask" in m and f"label='call {n}'" in m for m in failed) for n in range(1, 6))
    early = [r for r in ours if "failed after retries and fallback" in r.getMessage()]
    assert early and all(r.levelno == logging.WARNING for r in early)  # a call an early send gave up
    assert not [r for r in ours if r.levelno >= logging.ERROR]


def test_the_warm_up_imports_what_every_task_would_and_no_client_library_its_models_do_not_use() -> None:
    """Every task's run imports ``pipeline_patches.relaxed`` (~30 ms of each forked task when the
    parent has not); openai, imported for the double's simulated LLM, was ~2 s of every start."""
    code = (
        "import sys; from pipeline_patches.flag_toggle import warm_up; warm_up(['simulated']); "
        "print(sorted(m for m in ('pipeline_patches.relaxed', 'openai') if m in sys.modules))"
    )
    env = {**os.environ, "PLANEXE_CONCURRENCY_TARGET": "double"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "['pipeline_patches.relaxed']"


def test_a_forked_task_finds_the_modules_that_bound_uuid4_without_walking_sys_modules() -> None:
    """The parent may import more after the warm-up; the list is found again before each fork,
    so a forked task never walks sys.modules (a walk there copies every page it touches)."""
    import types

    from pipeline_patches import speculative

    package = load_planexe().pipeline.__name__.split(".")[0]
    speculative.uuid_bound_modules(package)
    sys.modules["_planexe_concurrency_imported_after_the_warm_up"] = types.ModuleType("later")
    try:
        current = true_in_a_forked_child(lambda: speculative._bound_cache[package][0] == len(sys.modules))
    finally:
        del sys.modules["_planexe_concurrency_imported_after_the_warm_up"]
    assert current


def test_luigis_command_line_warms_the_parent_up_once(new_run_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``luigi --module`` the root is built in the parent: the LLM clients are built there too."""
    from luigi.cmdline_parser import CmdlineParser

    from pipeline_patches import pipeline as patches

    warmed: list[tuple[str, ...]] = []
    monkeypatch.setattr(patches, "warm_up", lambda models: warmed.append(tuple(models)) or 0.0)
    monkeypatch.setattr(patches, "_warmed", set())
    run_dir = new_run_dir("warm")
    patches.ConcurrentFullPlanPipeline(run_id_dir=run_dir, llm_models=["simulated"])
    assert warmed == []  # in code (luigi.build, our CLI): the caller warms up, as `run` does
    for name in ("warm-cli", "warm-cli-again"):  # new task ids: Luigi reuses an instance it has built
        words = ["ConcurrentFullPlanPipeline", "--run-id-dir", str(new_run_dir(name)), "--llm-models", '["simulated"]']
        with CmdlineParser.global_instance(words) as cmdline:
            cmdline.get_task_obj()
    assert warmed == [("simulated",)]
