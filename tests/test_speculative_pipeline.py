"""The speculative mechanism on the double's pipeline: task code we have never seen, ids drawn in a task, missing tasks.

The plugin names no task and rebuilds no query, so a task body PlanExe rewrites tomorrow
must still fan out and still write what PlanExe's own sequential run writes. These tests
rewrite the double's bodies at test time (a different query, another order, uuid4 ids in the
prompts, a task removed) and check exactly that.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable

import luigi
import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.llms.llm import LLM
from pydantic import BaseModel

from conftest import differing_files, set_concurrency, speculation_reports
from pipeline_patches import pipeline as patches
from pipeline_patches.planexe import load_planexe
from pipeline_patches.rundir import state_dir_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
pe = load_planexe()
P = pe.pipeline


def _variant_wbs3(draw_ids: bool) -> Callable[[Any], None]:
    """CreateWBSLevel3Task as a later PlanExe might write it: other wording, last task first, maybe uuid4 tags."""
    module = sys.modules[P.CreateWBSLevel3Task.__module__]
    g = vars(module)

    def run_inner(self: Any) -> None:
        llm_executor = self.create_llm_executor()
        project_plan = g["_json"](self.input()["project_plan"]["raw"])
        wbs_project = g["WBSProject"].from_dict(g["_json"](self.input()["wbs_project"]))
        leaves: list[str] = []

        def visit(task: Any) -> None:
            if not task.task_children:
                leaves.append(task.id)
            for child in task.task_children:
                visit(child)

        visit(wbs_project.root_task)
        tags = [str(uuid.uuid4()) for _ in leaves] if draw_ids else [""] * len(leaves)
        accumulated: list[Any] = []
        for index, (task_id, tag) in reversed(list(enumerate(zip(leaves, tags), start=1))):
            query = f"Decompose {task_id!r} {tag}\nPlan: {json.dumps(project_plan, sort_keys=True)[:400]}"

            def execute(llm: LLM) -> Any:
                return g["CreateWBSLevel3"].execute(llm, query, task_id)

            wbs3 = llm_executor.run(execute)
            with open(self.run_id_dir / g["FilenameEnum"].WBS_LEVEL3_RAW_TEMPLATE.value.format(index), "w") as f:
                json.dump(wbs3.raw_response_dict(), f, indent=2)
            accumulated.extend(wbs3.tasks)
        with open(self.file_path(g["FilenameEnum"].WBS_LEVEL3), "w") as f:
            json.dump(accumulated, f, indent=2)

    return run_inner


def _build(run_dir: Path, task_name: str, *, concurrent: bool, workers: int = 1) -> bool:
    if concurrent:
        patches.enable()
        root = patches.ConcurrentFullPlanPipeline(run_id_dir=run_dir, llm_models=["simulated"])
    else:
        patches.disable()
        root = P.FullPlanPipeline(run_id_dir=run_dir, llm_models=["simulated"])
    try:
        task = root.clone(getattr(P, task_name))
        return bool(luigi.build([task], local_scheduler=True, workers=workers, log_level="WARNING")) and task.complete()
    finally:
        patches.enable()


@pytest.mark.parametrize("workers", [1, 4])
def test_a_rewritten_task_body_fans_out_and_writes_what_its_own_sequential_run_writes(
    monkeypatch: pytest.MonkeyPatch, new_run_dir: Callable[[str], Path], luigi_config: Any, workers: int
) -> None:
    monkeypatch.setattr(P.CreateWBSLevel3Task, "run_inner", _variant_wbs3(draw_ids=False))
    set_concurrency(luigi_config, max_parallel=8)
    sequential, concurrent = new_run_dir("sequential"), new_run_dir("concurrent")
    assert _build(sequential, "CreateWBSLevel3Task", concurrent=False)
    assert _build(concurrent, "CreateWBSLevel3Task", concurrent=True, workers=workers)
    assert differing_files(sequential, concurrent) == []
    report = speculation_reports(concurrent)["CreateWBSLevel3Task"]
    leaves = len(list(sequential.glob("023-1-*")))
    assert leaves > 3
    # the first leaf is the real pass's own; the record pass beside it sends the others at once
    assert (report["rounds"], report["sent_early"], report["used"], report["wasted"], report["asked_live"]) == (1, leaves - 1, leaves - 1, 0, 1)


def test_a_task_that_reads_a_file_it_does_not_declare_still_fans_out(
    monkeypatch: pytest.MonkeyPatch, new_run_dir: Callable[[str], Path], luigi_config: Any
) -> None:
    """A record pass sees the task's declared inputs; code reading another file of the run gets them all, and a second try."""
    rewritten = _variant_wbs3(draw_ids=False)
    plan_name = P.FilenameEnum.INITIAL_PLAN.value
    seen: list[set[str]] = []

    def reads_the_plan_too(self: Any) -> None:
        if "scratch" in Path(self.run_id_dir).parts:
            seen.append(set(os.listdir(self.run_id_dir)))
        (Path(self.run_id_dir) / plan_name).read_text(encoding="utf-8")  # no task of its inputs writes it
        rewritten(self)

    monkeypatch.setattr(P.CreateWBSLevel3Task, "run_inner", reads_the_plan_too)
    set_concurrency(luigi_config, max_parallel=8)
    sequential, concurrent = new_run_dir("sequential"), new_run_dir("concurrent")
    assert _build(sequential, "CreateWBSLevel3Task", concurrent=False)
    assert _build(concurrent, "CreateWBSLevel3Task", concurrent=True)
    assert differing_files(sequential, concurrent) == []
    report = speculation_reports(concurrent)["CreateWBSLevel3Task"]
    leaves = len(list(sequential.glob("023-1-*")))
    assert report["fell_back"] == "" and report["wasted"] == 0
    assert report["sent_early"] == report["used"] == leaves - 1
    declared = {Path(t.path).name for t in luigi.task.flatten(P.CreateWBSLevel3Task(run_id_dir=concurrent).input())}
    assert seen[0] == declared  # the first try: only what the task declares
    assert plan_name in seen[1] and declared < seen[1]  # then the rest of the run


def test_ids_a_task_draws_are_the_same_in_every_pass(
    monkeypatch: pytest.MonkeyPatch, new_run_dir: Callable[[str], Path], luigi_config: Any
) -> None:
    monkeypatch.setattr(P.CreateWBSLevel3Task, "run_inner", _variant_wbs3(draw_ids=True))
    run_dir = new_run_dir("concurrent")
    assert _build(run_dir, "CreateWBSLevel3Task", concurrent=True)
    report = speculation_reports(run_dir)["CreateWBSLevel3Task"]
    assert report["rounds"] == 1 and report["wasted"] == 0 and report["asked_live"] == 1
    assert report["used"] == report["sent_early"] >= 3


def test_with_speculation_off_for_a_task_it_runs_one_call_at_a_time(
    new_run_dir: Callable[[str], Path], luigi_config: Any
) -> None:
    set_concurrency(luigi_config, task_overrides='{"CreateWBSLevel3Task": {"speculate": false}}')
    run_dir = new_run_dir("off")
    assert _build(run_dir, "CreateWBSLevel3Task", concurrent=True)
    reports = speculation_reports(run_dir)
    assert "CreateWBSLevel3Task" not in reports and "EstimateTaskDurationsTask" in reports


def test_a_task_whose_code_rejects_a_stand_in_runs_as_planexe_does(
    monkeypatch: pytest.MonkeyPatch, new_run_dir: Callable[[str], Path]
) -> None:
    import logging

    from pipeline_patches import speculative

    monkeypatch.setattr(speculative, "_told_unavailable", set())  # told once per task and process
    told: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "rejected a stand-in answer" in record.getMessage():
                told.append(record.getMessage())

    keep = Keep(level=logging.WARNING)
    ours = logging.getLogger("planexe_concurrency")
    ours.addHandler(keep)
    monkeypatch.setattr(ours, "level", logging.INFO)
    original = P.CreateWBSLevel3Task.run_inner

    def picky(self: Any) -> None:
        if "scratch" in Path(self.run_id_dir).parts:  # a record pass: as if a stand-in answer were refused
            raise ValueError("this answer does not look like one of ours")
        original(self)

    monkeypatch.setattr(P.CreateWBSLevel3Task, "run_inner", picky)
    sequential, concurrent = new_run_dir("sequential"), new_run_dir("concurrent")
    assert _build(sequential, "CreateWBSLevel3Task", concurrent=False)
    try:
        assert _build(concurrent, "CreateWBSLevel3Task", concurrent=True)
    finally:
        ours.removeHandler(keep)
    assert differing_files(sequential, concurrent) == []
    report = speculation_reports(concurrent)["CreateWBSLevel3Task"]
    assert report["fell_back"] == "ValueError: this answer does not look like one of ours" and report["sent_early"] == 0
    assert len(told) == 1 and "task=CreateWBSLevel3Task" in told[0] and "does not look like one of ours" in told[0]


def test_a_resumed_task_asks_nothing_it_asked_before(new_run_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = new_run_dir("resume")
    assert _build(run_dir, "CreateWBSLevel3Task", concurrent=True)
    answers = state_dir_for(run_dir) / "answers" / "CreateWBSLevel3Task"
    saved = len(list(answers.glob("*.json")))
    assert saved > 3
    before = (run_dir / "023-2-wbs_level3.json").read_text()
    (run_dir / "023-2-wbs_level3.json").unlink()  # as if killed before the merge
    assert _build(run_dir, "CreateWBSLevel3Task", concurrent=True)
    report = speculation_reports(run_dir)["CreateWBSLevel3Task"]
    assert report["sent_early"] == 0 and report["asked_live"] == 0 and report["replayed_from_store"] == saved
    assert (run_dir / "023-2-wbs_level3.json").read_text() == before


def test_the_plugin_imports_and_runs_on_a_planexe_without_some_tasks(tmp_path: Path) -> None:
    """A PlanExe from before SelfAudit, PremiseAttack and the governance phases existed (names removed before import)."""
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from pipeline_patches.planexe import load_planexe
P = load_planexe().pipeline
for name in ("SelfAuditTask", "GovernancePhase5MonitoringProgressTask", "GovernancePhase6ExtraTask",
             "PremortemTask", "QuestionsAndAnswersTask"):
    delattr(P, name)
import pipeline_patches.pipeline as patches
assert patches.is_enabled()
assert patches.CONCURRENT_TASKS == {{}}, patches.CONCURRENT_TASKS
import luigi
root = patches.ConcurrentFullPlanPipeline(run_id_dir={str(tmp_path / 'run')!r}, llm_models=["simulated"])
task = root.clone(P.CreateWBSLevel3Task)
assert luigi.build([task], local_scheduler=True, log_level="WARNING")
print("ok")
"""
    from conftest import write_start_files

    write_start_files(tmp_path / "run")
    env = dict(os.environ, PLANEXE_CONCURRENCY_TARGET="double")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


# -- tasks PlanExe might add tomorrow: defined here, unknown to the plugin -------------------------
class Verdict(BaseModel):
    text: str
    go_on: bool


def _ask(executor: Any, question: str, model: type[BaseModel] = Verdict) -> Any:
    messages = [ChatMessage(role=MessageRole.SYSTEM, content="Answer briefly."), ChatMessage(role=MessageRole.USER, content=question)]

    def execute_function(llm: LLM) -> Any:
        return llm.as_structured_llm(model).chat(messages).raw

    return executor.run(execute_function)


class _NewTask(P.PlanTask):
    """Shared output and input of the tasks below: PlanExe's plan file in, one JSON file out."""

    def requires(self) -> Any:
        return self.clone(P.SetupTask)

    def output(self) -> Any:
        return luigi.LocalTarget(str(self.run_id_dir / f"900-{type(self).__name__}.json"))

    def _plan(self) -> str:
        with self.input().open("r") as f:
            return f.read()[:300]

    def _write(self, answers: list[Any]) -> None:
        with open(self.output().path, "w") as f:
            json.dump([a.model_dump(mode="json") if hasattr(a, "model_dump") else a for a in answers], f, indent=2)


class NewIndependentLoopTask(_NewTask):
    def run_inner(self) -> None:
        executor = self.create_llm_executor()
        plan = self._plan()
        self._write([_ask(executor, f"Aspect {i} of this plan:\n{plan}") for i in range(1, 7)])


class NewTextChainTask(_NewTask):
    def run_inner(self) -> None:
        executor = self.create_llm_executor()
        answers: list[Any] = []
        for i in range(1, 6):
            earlier = "\n".join(a.text for a in answers)
            answers.append(_ask(executor, f"Step {i}; what was said so far:\n{earlier}"))
        self._write(answers)


class NewControlFlowTask(_NewTask):
    def run_inner(self) -> None:
        executor = self.create_llm_executor()
        first = _ask(executor, "Item 1")
        second = _ask(executor, "Item 2")
        answers = [first, second]
        if second.go_on:  # item 3 only if answer 2 says so: its prompt holds no text of answer 2
            answers.append(_ask(executor, "Item 3"))
        answers.append(_ask(executor, "Item 4"))
        self._write(answers)


NEW_TASKS = (NewIndependentLoopTask, NewTextChainTask, NewControlFlowTask)


def _build_new(run_dir: Path, *, concurrent: bool, models: list[str]) -> None:
    (patches.enable if concurrent else patches.disable)()
    try:
        tasks = [cls(run_id_dir=run_dir, llm_models=models) for cls in NEW_TASKS]
        assert luigi.build(tasks, local_scheduler=True, workers=1, log_level="WARNING")
    finally:
        patches.enable()


def test_tasks_the_plugin_has_never_seen_fan_out_and_write_their_own_sequential_output(
    sim_server_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, new_run_dir: Callable[[str], Path],
    luigi_config: Any,
) -> None:
    from planexe_concurrency.simllm.server import peak_in_flight

    set_concurrency(luigi_config, max_parallel=8)
    server = sim_server_factory(latency=0.3)
    monkeypatch.setenv("PLANEXE_SIMLLM_URL", server.url)
    sequential, concurrent = new_run_dir("sequential"), new_run_dir("concurrent")
    _build_new(sequential, concurrent=False, models=["simulated-http"])
    asked_sequentially = len(server.log)
    server.clear_log()
    _build_new(concurrent, concurrent=True, models=["simulated-http"])
    assert differing_files(sequential, concurrent) == []
    reports = speculation_reports(concurrent)

    loop = reports["NewIndependentLoopTask"]
    assert (loop["rounds"], loop["sent_early"], loop["used"], loop["wasted"], loop["asked_live"]) == (1, 5, 5, 0, 1)
    assert peak_in_flight(server.log) >= 4  # from the server's side (only the new loop can put 4 in flight)

    chain = reports["NewTextChainTask"]
    assert chain["wasted"] == 0 and chain["used"] + chain["asked_live"] == 5

    flow = reports["NewControlFlowTask"]
    items = len(json.loads((sequential / "900-NewControlFlowTask.json").read_text()))
    assert flow["used"] + flow["asked_live"] == items  # whatever the guesses, each real call once in the replay
    # every request asked in the sequential run was asked, plus at most the wasted guesses
    assert len(server.log) == asked_sequentially + sum(r["wasted"] for r in reports.values())


def test_call_shapes_need_two_one_call_tasks_and_none_with_more(tmp_path: Path) -> None:
    from pipeline_patches.speculative import CallShapes

    shapes = CallShapes(tmp_path / "shapes")

    def shared(self: Any) -> None: ...

    def other(self: Any) -> None:
        return None

    key = CallShapes.key(shared)
    assert key != CallShapes.key(other) and not shapes.one_call_only(key)
    shapes.note(key, "A", 1)
    assert not shapes.one_call_only(key)
    shapes.note(key, "B", 0)
    assert shapes.one_call_only(key)
    shapes.note(key, "C", 3)  # a task with the same code made more: record again
    assert not shapes.one_call_only(key)
