"""Critical-path-first between tasks: Luigi's ``priority`` from the chain of tasks still ahead."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import luigi
import pytest

from planexe_concurrency.priority import CriticalPathPriority, remaining_chain
from tests.conftest import set_concurrency


def test_remaining_chain_is_the_heaviest_way_to_a_task_nothing_requires() -> None:
    #   root <- a <- leaf ; root <- b <- c <- leaf ; d alone
    graph = {"root": ["a", "b"], "a": ["leaf"], "b": ["c"], "c": ["leaf"], "leaf": [], "d": []}
    assert remaining_chain(graph) == {"root": 1, "a": 2, "b": 2, "c": 3, "leaf": 4, "d": 1}
    weights = {"a": 10.0}
    assert remaining_chain(graph, lambda n: weights.get(n, 1.0))["leaf"] == 12.0


def test_remaining_chain_names_a_cycle() -> None:
    with pytest.raises(ValueError, match="cycle"):
        remaining_chain({"a": ["b"], "b": ["a"]})


ORDER: list[str] = []
PRIORITY = CriticalPathPriority()


class _Step(luigi.Task):
    name = luigi.Parameter()
    needs = luigi.ListParameter(default=[])
    out_dir = luigi.Parameter()

    priority = property(PRIORITY)  # type: ignore[assignment]

    def requires(self) -> list[luigi.Task]:
        return [_Step(name=n, needs=GRAPH[n], out_dir=self.out_dir) for n in self.needs]

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(Path(str(self.out_dir)) / f"{self.name}.txt"))

    def run(self) -> None:
        ORDER.append(str(self.name))
        Path(self.output().path).write_text("done")


# "side" is named first, so Luigi (equal priorities: first heard of, first run) would start it
# before "deep", whose chain to the root is longer.
GRAPH = {"root": ["side", "mid"], "side": [], "mid": ["deep"], "deep": []}


def test_luigi_runs_the_longer_chain_first(tmp_path: Path) -> None:
    ORDER.clear()
    PRIORITY.clear()
    root = _Step(name="root", needs=GRAPH["root"], out_dir=str(tmp_path))
    assert luigi.build([root], local_scheduler=True, workers=1, log_level="WARNING")
    assert ORDER[0] == "deep" and ORDER[-1] == "root"
    assert [_Step(name=n, needs=GRAPH[n], out_dir=str(tmp_path)).priority for n in ("deep", "side", "root")] == [3, 2, 1]


def test_without_priorities_luigi_would_take_the_side_branch_first(tmp_path: Path) -> None:
    """The control for the test above: the same graph, priority off, runs "side" first."""
    ORDER.clear()
    off = CriticalPathPriority(enabled=lambda: False)
    root = _Step(name="root", needs=GRAPH["root"], out_dir=str(tmp_path))
    saved = _Step.priority
    _Step.priority = property(off)  # type: ignore[assignment]
    try:
        assert luigi.build([root], local_scheduler=True, workers=1, log_level="WARNING")
    finally:
        _Step.priority = saved  # type: ignore[assignment]
    assert ORDER[0] == "side"


def test_a_task_asked_before_its_root_is_raised_when_the_root_is_seen(tmp_path: Path) -> None:
    PRIORITY.clear()
    mid = _Step(name="mid", needs=GRAPH["mid"], out_dir=str(tmp_path))
    assert mid.priority == 1
    root = _Step(name="root", needs=GRAPH["root"], out_dir=str(tmp_path))
    assert root.priority == 1
    assert _Step(name="deep", needs=[], out_dir=str(tmp_path)).priority == 3


def test_planexe_tasks_get_their_chain_and_the_setting_turns_it_off(
    luigi_config: luigi.configuration.LuigiConfigParser, new_run_dir: Callable[[str], Path]
) -> None:
    from pipeline_patches import pipeline as patches
    from pipeline_patches.planexe import load_planexe

    pe = load_planexe()
    P = pe.pipeline

    def root_for(name: str) -> luigi.Task:
        return patches.ConcurrentFullPlanPipeline(
            run_id_dir=new_run_dir(name), speedvsdetail=pe.SpeedVsDetailEnum.ALL_DETAILS_BUT_SLOW, llm_models=["simulated"]
        )

    def tasks_under(root: luigi.Task) -> dict[str, luigi.Task]:
        stack, found = [root], {}
        while stack:
            task = stack.pop()
            if task.task_family not in found:
                found[task.task_family] = task
                stack.extend(luigi.task.flatten(task.requires()))
        return found

    def task_in(root: luigi.Task, family: str) -> luigi.Task:
        return tasks_under(root)[family]

    patches.enable()
    root = root_for("on")
    assert root.priority == 1
    # Both become ready when the level-1/2 WBS is in; the durations lead on to WBS level 3,
    # the review and the self-audit, the documents to find only to the report.
    durations, documents = task_in(root, "EstimateTaskDurationsTask"), task_in(root, "DraftDocumentsToFindTask")
    assert durations.priority > documents.priority > root.priority
    everything = tasks_under(root)
    first = max(everything.values(), key=lambda t: t.priority)
    assert first.priority > 30 and not luigi.task.flatten(first.requires())

    set_concurrency(luigi_config, critical_path_first=False)
    patches.CHAIN_PRIORITY.clear()
    assert task_in(root_for("off"), "EstimateTaskDurationsTask").priority == 0

    patches.disable()
    try:
        assert "priority" not in P.PlanTask.__dict__
        assert task_in(root_for("plain"), "EstimateTaskDurationsTask").priority == 0
    finally:
        patches.enable()
