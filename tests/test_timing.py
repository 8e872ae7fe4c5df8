"""Task timelines from Luigi events, and critical-path bounds."""
from __future__ import annotations

import json
from pathlib import Path

import luigi
import pytest

from planexe_concurrency.timing import (
    TaskCalls,
    TaskSpan,
    bounds,
    calls_per_task,
    critical_path,
    critical_path_at_width,
    read_task_spans,
    record_task_events,
    task_graph,
)


class _Leaf(luigi.Task):
    out = luigi.Parameter()

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(self.out)

    def run(self) -> None:
        with self.output().open("w") as f:
            f.write("x")


class _Root(luigi.Task):
    base = luigi.Parameter()

    def requires(self) -> list[luigi.Task]:
        return [_Leaf(out=f"{self.base}/a"), _Leaf(out=f"{self.base}/b")]

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(f"{self.base}/root")

    def run(self) -> None:
        with self.output().open("w") as f:
            f.write("done")


def test_records_start_and_finish_of_every_task_even_in_forked_workers(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    stop = record_task_events(path)
    assert record_task_events(path) is stop  # idempotent: one line per event, not two
    try:
        assert luigi.build([_Root(base=str(tmp_path))], workers=2, local_scheduler=True)
    finally:
        stop()
    assert luigi.build([_Leaf(out=str(tmp_path / "after"))], local_scheduler=True)  # not recorded any more
    spans = read_task_spans(path)
    assert sorted(s.task for s in spans) == ["_Leaf", "_Leaf", "_Root"]
    assert all(s.ok and s.end >= s.start for s in spans)
    assert len(path.read_text().splitlines()) == 6
    root = next(s for s in spans if s.task == "_Root")
    assert all(s.end <= root.start for s in spans if s.task == "_Leaf")


def test_failed_task_span_and_unpaired_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [
        {"task": "A", "task_id": "A1", "event": "start", "time": 1.0, "pid": 7},
        {"task": "A", "task_id": "A1", "event": "failure", "time": 3.0, "pid": 7},
        {"task": "B", "task_id": "B1", "event": "success", "time": 4.0, "pid": 7},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    (span,) = read_task_spans(path)
    assert (span.task, span.duration, span.ok) == ("A", 2.0, False)


def test_task_graph_from_requires(tmp_path: Path) -> None:
    assert task_graph(_Root(base=str(tmp_path))) == {"_Root": ["_Leaf"], "_Leaf": []}


def test_critical_path_picks_the_longest_chain() -> None:
    graph = {"end": ["a", "b"], "a": ["start"], "b": ["start"], "start": []}
    length, path = critical_path({"start": 1, "a": 5, "b": 2, "end": 1}, graph)
    assert (length, path) == (7, ["start", "a", "end"])
    with pytest.raises(ValueError, match="cycle"):
        critical_path({"x": 1}, {"x": ["y"], "y": ["x"]})


def test_bounds_overlap_parallel_calls() -> None:
    graph = {"end": ["loop"], "loop": []}
    tasks = {"loop": TaskCalls(duration=10.5, parallel_calls=[3, 3, 4]), "end": TaskCalls(duration=1)}
    b = bounds(tasks, graph)
    assert b.graph == pytest.approx(11.5)
    assert b.full == pytest.approx(1 + 10.5 - 10 + 4)
    assert b.full_path == ("loop", "end")
    assert TaskCalls(2.0).fully_parallel_duration == 2.0


def test_with_k_slots_a_loop_takes_its_calls_spread_over_k_and_no_less_than_its_longest() -> None:
    graph = {"end": ["loop"], "loop": []}
    tasks = {"loop": TaskCalls(duration=10.5, parallel_calls=[3, 3, 4]), "end": TaskCalls(duration=1)}
    assert tasks["loop"].duration_at_width(1) == pytest.approx(10.5)  # one slot: as sequential
    assert tasks["loop"].duration_at_width(2) == pytest.approx(0.5 + 5)  # 10 s of calls on 2 slots
    assert tasks["loop"].duration_at_width(8) == pytest.approx(tasks["loop"].fully_parallel_duration)  # the 4 s call
    assert critical_path_at_width(tasks, graph, 1) == pytest.approx(bounds(tasks, graph).graph)
    assert critical_path_at_width(tasks, graph, 2) == pytest.approx(6.5)
    assert TaskCalls(2.0).duration_at_width(3) == 2.0


def test_calls_attributed_to_the_span_that_contains_them() -> None:
    spans = [TaskSpan("A", 0, 2, 1, True), TaskSpan("B", 2, 5, 1, True)]
    calls = [(0.1, 0.9), (1.0, 1.9), (2.5, 4.5), (9, 10)]
    assert calls_per_task(spans, calls) == {"A": [pytest.approx(0.8), pytest.approx(0.9)], "B": [2.0]}


def test_scheduling_gaps_measure_from_when_a_task_could_start() -> None:
    from planexe_concurrency.timing import TaskSpan, scheduling_gaps

    spans = [
        TaskSpan("A", 0.0, 1.0, 1, True),
        TaskSpan("B", 0.0, 2.0, 2, True),
        TaskSpan("C", 2.25, 3.0, 3, True),  # ready when B ended
        TaskSpan("E", 3.0, 5.0, 5, True),  # ready at 1.0 (A) but waited for a slot: C ended at 3.0
        TaskSpan("D", 5.5, 6.0, 4, True),  # C ended at 3.0, but the slot came free at 5.0 (E)
    ]
    graph = {"A": [], "B": [], "C": ["A", "B"], "D": ["C", "X"], "E": ["A"]}
    assert scheduling_gaps(spans, graph) == {"C": 0.25, "E": 0.0, "D": 0.5}
