"""fidelity = relaxed: the chained loops asked side by side, PlanExe's files and schemas kept."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import luigi
import pytest

from conftest import PipelineRunner, differing_files, set_concurrency, write_start_files
from planexe_concurrency.config import ConfigError, read_config, validate
from planexe_concurrency.events import ItemState, read_events
from pipeline_patches import pipeline as patches
from pipeline_patches.base import known_task_names
from pipeline_patches.relaxed import relaxed_runner
from pipeline_patches.rundir import state_dir_for

P = patches.P

pytestmark = pytest.mark.slow

RELAXED_TASKS = ("ReviewPlanTask", "SelfAuditTask", "PremortemTask", "QuestionsAndAnswersTask")
# What relaxed mode may change: the relaxed tasks, governance 5/6, and what reads them.
MAY_CHANGE = (
    "006-9-", "006-10-", "006-11-", "006-12-", "006-13-",  # governance 5, 6 and their consolidation
    "024-", "025-", "027-", "028-", "029-", "030-",  # review, summary, Q&A, premortem, self audit, report
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cfg = luigi.configuration.get_config()
    saved = dict(cfg.items("planexe_concurrency")) if cfg.has_section("planexe_concurrency") else {}
    runner = PipelineRunner(cfg)
    out = {}
    try:
        out["exact"] = write_start_files(tmp_path_factory.mktemp("exact"))
        assert runner(out["exact"], concurrent=False)
        out["relaxed"] = write_start_files(tmp_path_factory.mktemp("relaxed"))
        events = state_dir_for(out["relaxed"]) / "events.jsonl"
        assert runner(out["relaxed"], concurrent=True, workers=4, fidelity="relaxed", max_parallel=32, events_file=str(events))
    finally:
        cfg.remove_section("planexe_concurrency")
        cfg.add_section("planexe_concurrency")
        for key, value in saved.items():
            cfg.set("planexe_concurrency", key, value)
    return out


def _shape(value: Any) -> Any:
    """The JSON structure without the values or list lengths (answers may hold more or fewer items)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def test_relaxed_run_keeps_planexes_files_and_schemas(runs: dict[str, Path]) -> None:
    changed = differing_files(runs["exact"], runs["relaxed"])
    assert changed and all(name.startswith(MAY_CHANGE) for name in changed), changed
    assert (runs["relaxed"] / "999-pipeline_complete.txt").exists()
    for name in changed:
        if name.endswith(".json"):
            exact = json.loads((runs["exact"] / name).read_text())
            relaxed = json.loads((runs["relaxed"] / name).read_text())
            assert _shape(relaxed) == _shape(exact), name


def _sent(run_dir: Path, task: str) -> list[list[dict[str, str]]]:
    return json.loads((state_dir_for(run_dir) / "relaxed" / f"{task}.json").read_text())


def test_relaxed_prompts_do_not_carry_earlier_answers(runs: dict[str, Path]) -> None:
    review = _sent(runs["relaxed"], "ReviewPlanTask")
    assert len(review) == 16 and all([m["role"] for m in r] == ["system", "user"] for r in review)
    assert len({r[1]["content"] for r in review}) == 16  # each its own question
    audit = _sent(runs["relaxed"], "SelfAuditTask")
    assert len(audit) == 20 and len({r[-1]["content"] for r in audit}) == 1  # one user prompt, no answers
    assert len({r[0]["content"] for r in audit}) == 20  # each its own checklist item
    premortem = _sent(runs["relaxed"], "PremortemTask")
    assert len(premortem) == 3 and all("assistant" not in [m["role"] for m in r] for r in premortem)
    qa = _sent(runs["relaxed"], "QuestionsAndAnswersTask")
    assert [[m["role"] for m in r] for r in qa] == [["system", "user"], ["system", "user", "user"]]


def test_relaxed_requests_are_in_flight_together(runs: dict[str, Path]) -> None:
    events = read_events(state_dir_for(runs["relaxed"]) / "events.jsonl")
    for task, calls in (("ReviewPlanTask", 16), ("SelfAuditTask", 20), ("PremortemTask", 3), ("QuestionsAndAnswersTask", 2)):
        running = [e for e in events if e.task == task and e.state is ItemState.RUNNING]
        assert len(running) == calls, task
        pending = [e for e in events if e.task == task and e.state is ItemState.PENDING]
        assert len(pending) == calls and len({e.total for e in pending}) == 1  # one fan-out, not a loop of one-call runs


def test_relaxed_can_be_chosen_per_task_and_checked(tmp_path: Path, runs: dict[str, Path], luigi_config: Any) -> None:
    set_concurrency(luigi_config, task_overrides='{"ReviewPlanTask": {"fidelity": "relaxed", "relaxed_reconcile": "questions"}}')
    assert relaxed_runner(P.ReviewPlanTask(run_id_dir=tmp_path, llm_models=["simulated"])) is not None
    assert relaxed_runner(P.SelfAuditTask(run_id_dir=tmp_path, llm_models=["simulated"])) is None
    run_dir = tmp_path / "per-task"
    shutil.copytree(runs["exact"], run_dir)
    task = P.ReviewPlanTask(run_id_dir=run_dir, llm_models=["simulated"])
    for target in task.output().values():
        target.remove()
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    assert differing_files(runs["exact"], run_dir) == ["024-1-review_plan_raw.json", "024-2-review_plan.md"]
    sent = _sent(run_dir, "ReviewPlanTask")  # reconcile = questions: every earlier question, no answer
    assert [len(r) for r in sent] == list(range(2, 18)) and all(m["role"] != "assistant" for r in sent for m in r)
    assert not list((state_dir_for(run_dir) / "relaxed").glob("SelfAudit*"))
    assert not [p for p in (state_dir_for(run_dir) / "relaxed").rglob("*") if p.is_file() and "scratch" in p.parts]


def test_bad_fidelity_values_are_refused(luigi_config: Any) -> None:
    set_concurrency(luigi_config, fidelity="loose")
    with pytest.raises(ConfigError, match="fidelity = 'loose' is not allowed: expected one of exact | relaxed"):
        validate(read_config(), known_task_names())
    set_concurrency(luigi_config, fidelity="exact", task_overrides='{"SelfAuditTask": {"relaxed_reconcile": "maybe"}}')
    with pytest.raises(ConfigError, match="relaxed_reconcile = 'maybe' is not allowed"):
        validate(read_config(), known_task_names())


def test_relaxed_governance_per_task(tmp_path: Path, luigi_config: Any) -> None:
    set_concurrency(luigi_config, task_overrides='{"GovernancePhase6ExtraTask": {"fidelity": "relaxed"}}')
    phase5 = P.GovernancePhase5MonitoringProgressTask(run_id_dir=tmp_path, llm_models=["simulated"])
    phase6 = P.GovernancePhase6ExtraTask(run_id_dir=tmp_path, llm_models=["simulated"])
    assert "governance_phase4_decision_escalation_matrix" in phase5.requires()  # exact: still chained
    assert not {"governance_phase4_decision_escalation_matrix", "governance_phase5_monitoring_progress"} & set(phase6.requires())
