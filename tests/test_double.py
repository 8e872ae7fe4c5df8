"""The PlanExe test double: graph, call counts, loops, determinism, fallback and stop handling.

The plugin is tested against this double, so the double must keep PlanExe's surface: the
63 tasks and 426 requires-edges, the number and chaining of LLM calls per task, the loops'
per-item files and FAST truncations, and the executor's fallback and stop semantics.
"""
from __future__ import annotations

import collections
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import luigi
import pytest
from llama_index.core.llms.llm import LLM

from pipeline_patches import planexe_double

planexe_double.activate()

from worker_plan_api.filenames import ExtraFilenameEnum, FilenameEnum  # noqa: E402
from worker_plan_api.speedvsdetail import SpeedVsDetailEnum  # noqa: E402
from worker_plan_internal import llm_factory  # noqa: E402
from worker_plan_internal.llm_util import llm_executor as E  # noqa: E402
from worker_plan_internal.luigi_util.obtain_output_files import ObtainOutputFiles  # noqa: E402
from worker_plan_internal.plan import run_plan_pipeline as P  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Parameter .* is not of type string:UserWarning")

REPO = Path(__file__).resolve().parents[1]
START_TIME = """{
  "server_iso_utc": "2026-01-05T09:30:00Z",
  "server_iso_local": "2026-01-05T10:30:00+01:00",
  "server_timezone_name": "CET"
}"""
PLAN = "Plan:\nOpen a community tool library in a small town within six months.\n\nProject start ASAP"

# LLM calls per task for the plan above (GRAPH.md has the same table).
MULTI_CALL_ALL = {
    "PremiseAttackTask": 5,
    "ConsolidateAssumptionsMarkdownTask": 8,
    "ExpertReviewTask": 4,
    "DraftDocumentsToFindTask": 3,
    "DraftDocumentsToCreateTask": 3,
    "EstimateTaskDurationsTask": 3,
    "CreateWBSLevel3Task": 5,
    "ReviewPlanTask": 16,
    "QuestionsAndAnswersTask": 2,
    "PremortemTask": 3,
    "SelfAuditTask": 20,
}
MULTI_CALL_FAST = {
    **MULTI_CALL_ALL,
    "DraftDocumentsToFindTask": 2,
    "DraftDocumentsToCreateTask": 2,
    "EstimateTaskDurationsTask": 2,
    "CreateWBSLevel3Task": 2,
    "ReviewPlanTask": 3,
    "PremortemTask": 1,
    "SelfAuditTask": 2,
}
NO_CALL = {
    "StartTimeTask", "SetupTask", "StrategicDecisionsMarkdownTask", "ScenariosMarkdownTask",
    "ConsolidateGovernanceTask", "TeamMarkdownTask", "MarkdownWithDocumentsToCreateAndFindTask",
    "WBSProjectLevel1AndLevel2Task", "WBSProjectLevel1AndLevel2AndLevel3Task", "CreateScheduleTask",
    "ReportTask", "FullPlanPipeline",
}


def expected_calls(fast: bool) -> dict[str, int]:
    multi = MULTI_CALL_FAST if fast else MULTI_CALL_ALL
    return {name: (0 if name in NO_CALL else multi.get(name, 1)) for name in task_names()}


def task_names() -> list[str]:
    """The double's task classes, in module order."""
    return [
        name for name, obj in vars(P).items()
        if isinstance(obj, type) and issubclass(obj, P.PlanTask) and obj is not P.PlanTask and obj.__module__ == P.__name__
    ]


def restore_own_tasks(mp: pytest.MonkeyPatch) -> None:
    """Bind the double's own task classes, even where the plugin has rebound the names."""
    for name, obj in list(vars(P).items()):
        if isinstance(obj, type) and issubclass(obj, luigi.Task) and obj.__module__ != P.__name__:
            own = next((b for b in obj.__mro__ if b.__module__ == P.__name__ and b.__name__ == name), None)
            if own is not None:
                mp.setattr(P, name, own)


def make_run_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / FilenameEnum.START_TIME.value).write_text(START_TIME)
    (path / FilenameEnum.INITIAL_PLAN.value).write_text(PLAN)
    return path


@functools.lru_cache(maxsize=None)
def _speed(fast: bool) -> SpeedVsDetailEnum:
    return SpeedVsDetailEnum.FAST_BUT_SKIP_DETAILS if fast else SpeedVsDetailEnum.ALL_DETAILS_BUT_SLOW


def run_counted(run_dir: Path, fast: bool) -> tuple[bool, collections.Counter[str]]:
    """Run FullPlanPipeline sequentially; count LLM calls per task (each attempt gets a fresh SimulatedLLM)."""
    current: list[str | None] = [None]
    made: list[tuple[str | None, Any]] = []
    original_run = P.PlanTask.run

    def run(self: P.PlanTask) -> None:
        current[0] = self.task_family
        return original_run(self)

    def get_llm(name: str | None = None, **kwargs: Any) -> Any:
        llm = llm_factory.get_llm(name, **kwargs)
        made.append((current[0], llm))
        return llm

    with pytest.MonkeyPatch.context() as mp:
        restore_own_tasks(mp)
        mp.setattr(P.PlanTask, "run", run)
        mp.setattr(E, "get_llm", get_llm)
        root = P.FullPlanPipeline(run_id_dir=run_dir, speedvsdetail=_speed(fast), llm_models=["simulated"])
        ok = luigi.build([root], local_scheduler=True, workers=1, log_level="WARNING")
    counts: collections.Counter[str] = collections.Counter()
    for family, llm in made:
        counts[family] += llm.call_count
    return bool(ok), counts


def files_of(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, collections.Counter[str]]]:
    """Three sequential runs shared by the module: ALL_DETAILS twice (determinism) and FAST once."""
    out = {}
    for label, fast in (("all", False), ("all-again", False), ("fast", True)):
        run_dir = make_run_dir(tmp_path_factory.mktemp("double") / label)
        ok, counts = run_counted(run_dir, fast)
        assert ok, f"{label} run failed"
        out[label] = (run_dir, counts)
    return out


@pytest.fixture
def own_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    restore_own_tasks(monkeypatch)


@pytest.fixture
def finished_copy(runs: dict, tmp_path: Path, own_tasks: None) -> Callable[[str], Path]:
    """A fresh copy of a finished run directory, to rerun one task in."""

    def make(label: str = "all") -> Path:
        target = tmp_path / label
        shutil.copytree(runs[label][0], target)
        return target

    return make


# ----------------------------------------------------------------------------- activation


def test_importing_the_double_does_not_activate_it() -> None:
    code = "import sys, pipeline_patches.planexe_double as d; print(str(d.DOUBLE_ROOT) in sys.path)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_activate_is_idempotent() -> None:
    planexe_double.activate()
    planexe_double.activate()
    assert sys.path.count(str(planexe_double.DOUBLE_ROOT)) == 1
    assert planexe_double.is_active()
    assert Path(P.__file__).is_relative_to(planexe_double.DOUBLE_ROOT)


# ----------------------------------------------------------------------------- the graph


def _graph() -> dict[str, list[str]]:
    graph: dict[str, list[str]] = {}
    stack: list[luigi.Task] = [P.FullPlanPipeline(run_id_dir=Path("/nonexistent"), llm_models=["simulated"])]
    while stack:
        task = stack.pop()
        if task.task_family in graph:
            continue
        req = task.requires()
        deps = list(req.values()) if isinstance(req, dict) else ([req] if req else [])
        graph[task.task_family] = [d.task_family for d in deps]
        stack.extend(deps)
    return graph


def test_graph_has_planexes_shape(own_tasks: None) -> None:
    graph = _graph()
    assert len(graph) == 63 == len(task_names())
    assert sum(len(v) for v in graph.values()) == 426

    @functools.lru_cache(maxsize=None)
    def depth(name: str) -> int:
        return 1 + max((depth(d) for d in graph[name]), default=0)

    # The longest chain, FullPlanPipeline (a pure aggregator) left out: SetupTask .. ReportTask.
    assert max(depth(n) for n in graph if n != "FullPlanPipeline") == 37
    assert depth("ReportTask") == 37


def test_requires_looks_task_classes_up_in_module_globals(monkeypatch: pytest.MonkeyPatch, own_tasks: None) -> None:
    class OtherSetup(P.SetupTask):
        pass

    monkeypatch.setattr(P, "SetupTask", OtherSetup)
    task = P.PlanTypeTask(run_id_dir=Path("/nonexistent"), llm_models=["simulated"])
    assert isinstance(task.requires()["setup"], OtherSetup)


def test_plan_task_parameters() -> None:
    params = dict(P.PlanTask.get_params())
    assert set(params) == {"run_id_dir", "speedvsdetail", "llm_models", "_pipeline_executor_callback"}
    callback = params["_pipeline_executor_callback"]
    assert callback.significant is False
    assert callback.visibility == luigi.parameter.ParameterVisibility.PRIVATE
    assert isinstance(params["speedvsdetail"], luigi.EnumParameter)
    assert isinstance(params["llm_models"], luigi.ListParameter)


def test_entry_point_anchor_is_there_once() -> None:
    text = Path(P.__file__).read_text(encoding="utf-8")
    assert text.splitlines().count("if __name__ == '__main__':") == 1


# ----------------------------------------------------------------------------- whole runs


@pytest.mark.parametrize("label", ["all", "fast"])
def test_full_pipeline_writes_every_expected_file(runs: dict, label: str, own_tasks: None) -> None:
    run_dir, _ = runs[label]
    root = P.FullPlanPipeline(run_id_dir=run_dir, speedvsdetail=_speed(label == "fast"), llm_models=["simulated"])
    expected = ObtainOutputFiles.execute(root).get_all_filenames()
    assert len(expected) == 111
    present = set(files_of(run_dir))
    assert [name for name in expected if name not in present] == []
    assert root.complete()


def test_two_runs_are_byte_identical(runs: dict) -> None:
    first, second = files_of(runs["all"][0]), files_of(runs["all-again"][0])
    assert len(first) > 120
    assert [name for name in first if first[name] != second.get(name)] == []
    assert set(first) == set(second)


@pytest.mark.parametrize("label", ["all", "fast"])
def test_llm_calls_per_task_match_the_table(runs: dict, label: str) -> None:
    _, counts = runs[label]
    fast = label == "fast"
    expected = expected_calls(fast)
    assert {name: counts.get(name, 0) for name in expected} == expected
    assert sum(counts.values()) == (73 if fast else 112)


def test_fast_mode_truncates_the_document_duration_and_wbs3_loops(runs: dict) -> None:
    files = {
        "all": set(files_of(runs["all"][0])),
        "fast": set(files_of(runs["fast"][0])),
    }
    templates = {
        FilenameEnum.DRAFT_DOCUMENTS_TO_FIND_RAW_TEMPLATE: (3, 2),
        FilenameEnum.DRAFT_DOCUMENTS_TO_CREATE_RAW_TEMPLATE: (3, 2),
        FilenameEnum.TASK_DURATIONS_RAW_TEMPLATE: (3, 2),
        FilenameEnum.WBS_LEVEL3_RAW_TEMPLATE: (5, 2),
        FilenameEnum.EXPERT_CRITICISM_RAW_TEMPLATE: (2, 2),
    }
    for template, (n_all, n_fast) in templates.items():
        for label, n in (("all", n_all), ("fast", n_fast)):
            # Numbered from 1, with no gaps.
            found = sorted(i for i in range(0, 10) if template.value.format(i) in files[label])
            assert found == list(range(1, n + 1)), (template.name, label)
    # FAST drafts 2 documents, but the merged file still lists every filtered document.
    fast_dir = runs["fast"][0]
    merged = json.loads((fast_dir / FilenameEnum.DRAFT_DOCUMENTS_TO_FIND_CONSOLIDATED.value).read_text())
    clean = json.loads((fast_dir / FilenameEnum.FILTER_DOCUMENTS_TO_FIND_CLEAN.value).read_text())
    assert len(merged) == len(clean) == 3
    assert ["essential_information" in d for d in merged] == [True, True, False]


def test_loop_files_have_planexes_shapes(runs: dict) -> None:
    run_dir = runs["all"][0]

    def load(name: str) -> Any:
        return json.loads((run_dir / name).read_text())

    raw = load(FilenameEnum.DRAFT_DOCUMENTS_TO_FIND_RAW_TEMPLATE.value.format(1))
    assert {"metadata", "system_prompt", "user_prompt"} <= set(raw)
    assert raw["user_prompt"].endswith(repr(load(FilenameEnum.FILTER_DOCUMENTS_TO_FIND_CLEAN.value)[0]))
    durations = load(FilenameEnum.TASK_DURATIONS.value)
    assert len(durations) == 7  # 2 phases + 5 subtasks, estimated 3 at a time
    assert all("query" in load(FilenameEnum.TASK_DURATIONS_RAW_TEMPLATE.value.format(i)) for i in (1, 2, 3))
    wbs3 = load(FilenameEnum.WBS_LEVEL3.value)
    leaves = {t["parent_id"] for t in wbs3}
    assert len(leaves) == 5
    # The merged durations carry the requested ids (ids are uuid5 of content: stable run to run).
    wbs12 = load(FilenameEnum.WBS_PROJECT_LEVEL1_AND_LEVEL2.value)["wbs_project"]
    ids = [c["id"] for p in wbs12["task_children"] for c in [p, *p.get("task_children", [])]]
    assert [d["task_id"] for d in durations] == ids
    short = (run_dir / FilenameEnum.CONSOLIDATE_ASSUMPTIONS_SHORT_MARKDOWN.value).read_text()
    assert short.startswith("# Purpose\n") and short.count("\n\n# ") == 7


# ----------------------------------------------------------------------------- per-item errors


@pytest.mark.parametrize(
    ("task_name", "stubbed", "message"),
    [
        ("DraftDocumentsToFindTask", "DraftDocumentToFind", "Document-to-find 1 LLM interaction failed."),
        ("DraftDocumentsToCreateTask", "DraftDocumentToCreate", "Document-to-create 1 LLM interaction failed."),
        ("EstimateTaskDurationsTask", "EstimateWBSTaskDurations", "Task durations chunk 1 LLM interaction failed."),
        ("CreateWBSLevel3Task", "CreateWBSLevel3", "WBS Level 3 task 1 LLM interaction failed."),
    ],
)
def test_a_failed_item_fails_the_loop_with_its_number(
    finished_copy: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch, task_name: str, stubbed: str, message: str
) -> None:
    run_dir = finished_copy("all")

    class Failing:
        @staticmethod
        def execute(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("provider down")

        format_query = getattr(P, stubbed).__dict__.get("format_query")

    monkeypatch.setattr(P, stubbed, Failing)
    task = getattr(P, task_name)(run_id_dir=run_dir, llm_models=["simulated"])
    with pytest.raises(Exception) as info:
        task.run()
    assert task_name in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)
    assert str(info.value.__cause__) == message


def test_consolidate_assumptions_goes_on_past_a_failed_item(
    finished_copy: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = finished_copy("all")
    real = P.ShortenMarkdown
    calls: list[str] = []

    class FlakyShorten:
        @staticmethod
        def execute(llm: Any, markdown: str) -> Any:
            calls.append(markdown)
            if len(calls) == 3:
                raise RuntimeError("provider down")
            return real.execute(llm, markdown)

    monkeypatch.setattr(P, "ShortenMarkdown", FlakyShorten)
    from pipeline_patches import pipeline as patches

    patches.disable()  # the double's own loop, as PlanExe runs it (record passes would call execute too)
    try:
        P.ConsolidateAssumptionsMarkdownTask(run_id_dir=run_dir, llm_models=["simulated"]).run()
    finally:
        patches.enable()
    short = (run_dir / FilenameEnum.CONSOLIDATE_ASSUMPTIONS_SHORT_MARKDOWN.value).read_text()
    assert len(calls) == 8
    assert "**Problem with document:** 'Physical Locations'" in short
    assert short.count("# ") >= 7


def test_stop_inside_a_loop_propagates_unwrapped_and_writes_the_flag(
    finished_copy: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = finished_copy("all")

    class Stopping:
        @staticmethod
        def execute(*args: Any, **kwargs: Any) -> Any:
            raise E.PipelineStopRequested("user pressed stop")

    monkeypatch.setattr(P, "ShortenMarkdown", Stopping)
    with pytest.raises(E.PipelineStopRequested):
        P.ConsolidateAssumptionsMarkdownTask(run_id_dir=run_dir, llm_models=["simulated"]).run()
    assert (run_dir / ExtraFilenameEnum.PIPELINE_STOP_REQUESTED_FLAG.value).exists()


# ----------------------------------------------------------------------------- executor, factory, stop


def _ask(llm: LLM) -> str:
    return llm.complete("hello").text


def test_executor_falls_back_to_the_next_model() -> None:
    seen: list[E.ShouldStopCallbackParameters] = []
    executor = E.LLMExecutor(E.LLMModelFromName.from_names(["simulated-fail", "simulated"]), should_stop_callback=seen.append)
    assert executor.run(_ask).startswith("[simulated:")
    assert [a.success for a in executor.attempts] == [False, True]
    assert executor.attempts[0].stage == "execute"
    assert [p.attempt_index for p in seen] == [0, 1]
    assert all(p.total_attempts == 2 for p in seen)


def test_executor_exhausts_all_models() -> None:
    class Broken(E.LLMModelBase):
        def create_llm(self) -> Any:
            raise RuntimeError("no such model")

    executor = E.LLMExecutor([E.LLMModelFromName("simulated-fail"), Broken()])
    with pytest.raises(Exception, match="Exhausted all LLMs"):
        executor.run(_ask)
    assert [a.stage for a in executor.attempts] == ["execute", "create"]


def lambda_with_any_hint(llm: Any) -> None:
    return None


def test_executor_validates_its_arguments() -> None:
    with pytest.raises(ValueError):
        E.LLMExecutor([])
    with pytest.raises(TypeError):
        E.LLMExecutor([E.LLMModelFromName("simulated")], should_stop_callback="nope")  # type: ignore[arg-type]
    executor = E.LLMExecutor([E.LLMModelFromName("simulated")])
    with pytest.raises(TypeError):
        executor.run(lambda a, b: None)  # type: ignore[arg-type,misc]

    def wrong_hint(llm: int) -> None:
        return None

    with pytest.raises(TypeError):
        executor.run(wrong_hint)  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # like PlanExe: a non-LLM hint, even Any, is refused
        executor.run(lambda_with_any_hint)


def test_stop_from_the_function_or_the_callback_propagates_unwrapped() -> None:
    def stop(llm: LLM) -> None:
        raise E.PipelineStopRequested("from the function")

    executor = E.LLMExecutor(E.LLMModelFromName.from_names(["simulated", "simulated"]))
    with pytest.raises(E.PipelineStopRequested, match="from the function"):
        executor.run(stop)

    def stop_callback(parameters: E.ShouldStopCallbackParameters) -> None:
        raise E.PipelineStopRequested("from the callback")

    executor = E.LLMExecutor(E.LLMModelFromName.from_names(["simulated-fail", "simulated"]), should_stop_callback=stop_callback)
    with pytest.raises(E.PipelineStopRequested, match="from the callback"):
        executor.run(_ask)
    assert len(executor.attempts) == 1


def test_plan_task_writes_the_stop_flag_when_the_callback_stops(tmp_path: Path, own_tasks: None) -> None:
    run_dir = make_run_dir(tmp_path / "stop")
    calls: list[tuple[str, float]] = []

    def callback(task: P.PlanTask, duration: float) -> None:
        calls.append((task.task_family, duration))
        raise E.PipelineStopRequested("stop")

    task = P.RedlineGateTask(run_id_dir=run_dir, llm_models=["simulated"], _pipeline_executor_callback=callback)
    with pytest.raises(E.PipelineStopRequested):
        task.run()
    assert [name for name, _ in calls] == ["RedlineGateTask"]
    assert (run_dir / ExtraFilenameEnum.PIPELINE_STOP_REQUESTED_FLAG.value).exists()


def test_plan_task_wraps_other_failures(tmp_path: Path, own_tasks: None) -> None:
    run_dir = make_run_dir(tmp_path / "fail")
    task = P.IdentifyPurposeTask(run_id_dir=run_dir, llm_models=["simulated-fail"])
    with pytest.raises(Exception) as info:
        task.run()
    assert "IdentifyPurposeTask" in str(info.value)
    assert "Exhausted all LLMs" in str(info.value.__cause__)
    assert not (run_dir / ExtraFilenameEnum.PIPELINE_STOP_REQUESTED_FLAG.value).exists()


def test_start_files_must_exist(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=FilenameEnum.START_TIME.value):
        P.StartTimeTask(run_id_dir=tmp_path).run()
    with pytest.raises(AssertionError, match=FilenameEnum.INITIAL_PLAN.value):
        P.SetupTask(run_id_dir=tmp_path).run()


def test_execute_pipeline_stops_on_request_and_reports_progress(tmp_path: Path, own_tasks: None) -> None:
    run_dir = make_run_dir(tmp_path / "demo")
    (run_dir / ExtraFilenameEnum.PIPELINE_STOP_REQUESTED_FLAG.value).touch()  # stale flag: removed by run()
    pipeline = P.DemoStoppingExecutePipeline(
        run_id_dir=run_dir, speedvsdetail=SpeedVsDetailEnum.FAST_BUT_SKIP_DETAILS, llm_models=["simulated"]
    )
    pipeline.setup()
    assert len(pipeline.all_expected_filenames) == 111
    assert pipeline.get_progress_percentage().progress_message == "2 of 111"
    pipeline.run()
    assert pipeline.luigi_build_return_value is False
    assert pipeline.has_stop_flag_file
    assert not pipeline.has_pipeline_complete_file and not pipeline.has_report_file
    expected = json.loads((run_dir / ExtraFilenameEnum.EXPECTED_FILENAMES1_JSON.value).read_text())
    assert expected == pipeline.all_expected_filenames
    with pytest.raises(FileNotFoundError):
        P.ExecutePipeline(run_id_dir=tmp_path / "missing", speedvsdetail=SpeedVsDetailEnum.FAST_BUT_SKIP_DETAILS,
                          llm_models=["simulated"]).setup()


def test_llm_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    assert llm_factory.get_llm_names_by_priority() == ["simulated"]
    assert all(llm_factory.is_valid_llm_name(n) for n in ("simulated", "simulated-fail", "simulated-http"))
    assert not llm_factory.is_valid_llm_name("gpt-4o")
    with pytest.raises(ValueError):
        llm_factory.get_llm("gpt-4o")
    monkeypatch.setenv("PLANEXE_SIMLLM_LATENCY", "uniform:0.1:0.2")
    assert llm_factory.get_llm("simulated").latency == "uniform:0.1:0.2"
    monkeypatch.setenv("PLANEXE_SIMLLM_LATENCY", "0.25")
    assert llm_factory.get_llm().latency == 0.25
    assert llm_factory.get_llm("simulated-fail").fail is True
    monkeypatch.delenv("PLANEXE_SIMLLM_URL", raising=False)
    with pytest.raises(ValueError, match="PLANEXE_SIMLLM_URL"):
        llm_factory.get_llm("simulated-http")
    pytest.importorskip("llama_index.llms.openai_like")
    monkeypatch.setenv("PLANEXE_SIMLLM_URL", "http://127.0.0.1:9/")
    http = llm_factory.get_llm("simulated-http")
    assert type(http).__name__ == "OpenAILike" and http.api_base == "http://127.0.0.1:9/v1" and http.max_retries == 0
    assert P.ExecutePipeline.resolve_llm_models(None) == ["simulated"]
    assert P.ExecutePipeline.resolve_llm_models("auto") == ["simulated"]
    assert P.ExecutePipeline.resolve_llm_models("simulated-fail") == ["simulated-fail"]
    with pytest.raises(ValueError):
        P.ExecutePipeline.resolve_llm_models("gpt-4o")


@pytest.mark.slow
def test_module_entry_point_runs_the_pipeline(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path / "main")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(planexe_double.DOUBLE_ROOT), str(REPO)]),
        "RUN_ID_DIR": str(run_dir),
        "SPEED_VS_DETAIL": "fast_but_skip_details",
        "LLM_MODEL": "simulated",
        "PLANEXE_LOG_LEVEL": "WARNING",
        "PLANEXE_CONCURRENCY": "",
    }
    cmd = [sys.executable, "-W", "ignore", "-m", "worker_plan_internal.plan.run_plan_pipeline"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (run_dir / FilenameEnum.PIPELINE_COMPLETE.value).exists()
    assert (run_dir / ExtraFilenameEnum.LOG_TXT.value).exists()
    env["RUN_ID_DIR"] = "relative/dir"
    assert subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60).returncode == 1
