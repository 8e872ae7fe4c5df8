"""Timelines and sweep plots render from recorded spans."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from planexe_concurrency.events import ItemEvent, ItemState, make_event
from planexe_concurrency.plots import gantt_html, gantt_png, item_spans, sweep_png
from planexe_concurrency.timing import TaskSpan

SPANS = [TaskSpan("Setup", 0.0, 1.0, 11, True), TaskSpan("Loop", 1.0, 3.0, 11, True), TaskSpan("Other", 1.0, 2.0, 12, False)]


def _events() -> list[ItemEvent]:
    evs = []
    for i, (start, end) in enumerate([(1.1, 2.0), (1.2, 2.9)]):
        evs.append(replace(make_event("Loop", i, 2, ItemState.RUNNING), time=start, pid=11))
        evs.append(replace(make_event("Loop", i, 2, ItemState.COMPLETED), time=end, pid=11))
    return evs


def test_item_spans_pair_running_and_completed() -> None:
    spans = item_spans(_events())
    assert [(s.item, s.start, s.end) for s in spans] == [(0, 1.1, 2.0), (1, 1.2, 2.9)]


def test_gantt_html_is_self_contained_and_shows_every_task() -> None:
    page = gantt_html("after <4 workers>", SPANS, item_spans(_events()))
    assert page.startswith("<!doctype html>") and "<script" not in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    for name in ("Setup: 1.00 s", "Loop: 2.00 s", "Other: 1.00 s (failed)", "Loop item 2: 1.70 s", "worker 2"):
        assert name in page
    assert "after &lt;4 workers&gt;" in page
    assert "No tasks ran" in gantt_html("empty", [])


def test_pngs_are_written(tmp_path: Path) -> None:
    gantt_png(tmp_path / "g.png", [("before", SPANS, []), ("after", SPANS, item_spans(_events()))])
    sweep_png(tmp_path / "s.png", [{"workers": 1, "max_parallel": 1, "speedup": 1.0}, {"workers": 1, "max_parallel": 4, "speedup": 1.5}])
    for name in ("g.png", "s.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
