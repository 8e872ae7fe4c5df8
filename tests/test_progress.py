"""The run's progress, read from its event files, and how the console shows it (in-process units)."""
from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path

import pytest

from planexe_concurrency.console import (
    ConsoleHandler, ProgressReporter, configure_console, configure_logging, console_level, live_renderable, plain_line,
    summary_lines,
)
from planexe_concurrency.events import ItemState, JsonlEventLog, make_event
from planexe_concurrency.plots import write_timeline
from planexe_concurrency.progress import (
    CONSOLE_FILE, DONE, FAILED, INTERRUPTED, RUNNING, JsonlTail, RunInfo, RunProgress, sequential_estimate, summarise,
)
from planexe_concurrency.timing import TaskSpan, _append_line

GRAPH = {"Root": ["B", "C"], "B": ["A"], "C": ["A"], "A": []}


def _task(state_dir: Path, task: str, event: str, when: float, pid: int = 11, **extra: object) -> None:
    _append_line(state_dir / "tasks.jsonl", {"task": task, "task_id": task + "_x", "event": event, "time": when, "pid": pid, "ppid": 1, **extra})


def _call(state_dir: Path, task: str, item: int, state: ItemState, when: float, pid: int = 11, **extra: object) -> None:
    event = make_event(task, item, 2, state, label=f"call {item + 1}", **extra)
    JsonlEventLog(state_dir / "events.jsonl")(event.__class__(**{**event.__dict__, "time": when, "pid": pid}))


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / ".planexe_concurrency" / "run"
    d.mkdir(parents=True)
    return d


def test_counts_follow_the_files_as_they_grow(state_dir: Path) -> None:
    t0 = time.time() - 10
    RunInfo(run_dir=str(state_dir), graph=GRAPH, started=t0, workers=4).write(state_dir)
    progress = RunProgress(state_dir)
    assert progress.poll().tasks_done == 0 and progress.poll().eta is None

    _task(state_dir, "A", "start", t0 + 0.1)
    _call(state_dir, "A", 0, ItemState.RUNNING, t0 + 0.2, attempt=1)
    _call(state_dir, "A", 0, ItemState.RUNNING, t0 + 0.5, attempt=2)  # a retry
    _call(state_dir, "A", 1, ItemState.RUNNING, t0 + 0.2, attempt=1)
    snap = progress.poll(now=t0 + 1)
    assert (snap.tasks_done, snap.tasks_total, snap.calls_in_flight, snap.calls_retried) == (0, 4, 2, 1)
    assert [(r.task, r.calls_done, r.calls_in_flight) for r in snap.running] == [("A", 0, 2)]

    _call(state_dir, "A", 0, ItemState.COMPLETED, t0 + 1.0, attempt=2, duration=0.5)
    _call(state_dir, "A", 1, ItemState.COMPLETED, t0 + 1.1, attempt=1, duration=0.9, cached=True)
    _task(state_dir, "A", "success", t0 + 2.1)
    _task(state_dir, "B", "start", t0 + 2.2, pid=12)
    snap = progress.poll(now=t0 + 3)
    assert (snap.tasks_done, snap.calls_answered, snap.calls_in_flight, snap.calls_cached) == (1, 2, 0, 1)
    # Left: B (running 0.8 s of a typical 2.0 s), C (2.0 s) side by side, then Root (2.0 s).
    assert snap.eta == pytest.approx(2.0 + 2.0)
    assert "1/4 tasks" in plain_line(snap) and "2 answered" in plain_line(snap) and "~0:04 left" in plain_line(snap)


def test_one_worker_adds_up_what_is_left_and_a_resume_counts_what_was_done(state_dir: Path) -> None:
    t0 = time.time() - 10
    _task(state_dir, "B", "start", t0 - 100)  # an earlier run's lines are not this run's
    _task(state_dir, "B", "success", t0 - 99)
    RunInfo(run_dir=str(state_dir), graph=GRAPH, started=t0, workers=1, complete_at_start=["A"]).write(state_dir)
    _task(state_dir, "B", "start", t0 + 1)
    _task(state_dir, "B", "success", t0 + 2)
    snap = RunProgress(state_dir).poll(now=t0 + 3)
    assert snap.tasks_done == 2
    assert snap.eta == pytest.approx(2.0)  # C then Root, 1 s each, one after the other


def test_a_failed_task_names_its_call_and_error(state_dir: Path) -> None:
    t0 = time.time()
    RunInfo(run_dir=str(state_dir), graph=GRAPH, started=t0, state=FAILED, ended=t0 + 5).write(state_dir)
    _task(state_dir, "C", "start", t0 + 0.1)
    _call(state_dir, "Other", 0, ItemState.FAILED, t0 + 0.2, error="a lens PlanExe skips")
    _call(state_dir, "C", 1, ItemState.FAILED, t0 + 0.3, error="RuntimeError: Exhausted all LLMs\nsecond line")
    _task(state_dir, "C", "failure", t0 + 0.4, error="ValueError: wrapped")
    snap = RunProgress(state_dir).poll()
    assert (snap.state, snap.tasks_failed, snap.failed_task, snap.failed_item) == (FAILED, 1, "C", "2/2 (call 2)")
    assert snap.failed_error.startswith("RuntimeError: Exhausted")
    assert snap.elapsed == pytest.approx(5.0) and snap.eta == 0.0
    summary = summarise(state_dir, 5.0, FAILED)
    lines = summary_lines(summary, run_dir=Path("/r"), report=None, log_file=Path("/l"), timeline=None, resume="planexe-concurrency run --run-dir /r")
    assert lines[0].startswith("planexe-concurrency: FAILED after 5.0s in task=C item=2/2 (call 2)")
    assert lines[1] == "  error: RuntimeError: Exhausted all LLMs | second line"
    assert lines[2] == "  resume with: planexe-concurrency run --run-dir /r"


def test_a_task_failure_without_a_failed_call_reports_the_task_error(state_dir: Path) -> None:
    RunInfo(run_dir=str(state_dir), graph=GRAPH).write(state_dir)
    _task(state_dir, "B", "start", time.time())
    _task(state_dir, "B", "failure", time.time(), error="KeyError: 'x'")
    assert RunProgress(state_dir).poll().failed_error == "KeyError: 'x'"


def test_a_running_run_whose_process_is_gone_is_interrupted(state_dir: Path) -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    RunInfo(run_dir=str(state_dir), graph=GRAPH, pid=pid).write(state_dir)
    assert RunProgress(state_dir).poll().state == INTERRUPTED
    RunInfo(run_dir=str(state_dir), graph=GRAPH, pid=pid, host="elsewhere").write(state_dir)
    assert RunProgress(state_dir).poll().state == RUNNING  # another host's process: not ours to judge
    assert RunInfo.read(state_dir.parent / "none") is None


def test_a_tail_waits_for_the_end_of_a_half_written_line(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    tail = JsonlTail(path)
    assert list(tail.records()) == []
    path.write_bytes(b'{"a": 1}\n{"b"')
    assert list(tail.records()) == [{"a": 1}]
    with open(path, "ab") as f:
        f.write(b': 2}\nnot json\n')
    assert list(tail.records()) == [{"b": 2}]


def test_sequential_estimate_adds_each_call_and_the_time_outside_them() -> None:
    class Call:
        def __init__(self, start: float, end: float, pid: int = 1) -> None:
            self.start, self.end, self.pid = start, end, pid

    spans = [TaskSpan("T", 0.0, 10.0, 1, True), TaskSpan("U", 10.0, 11.0, 2, True)]
    calls = [Call(1.0, 5.0), Call(2.0, 6.0), Call(7.0, 8.0), Call(10.2, 10.7, pid=2)]
    # T: 10 s span, calls cover 1-6 and 7-8 (6 s) -> 4 s outside + 4 + 4 + 1 s of calls; U: 0.5 + 0.5
    assert sequential_estimate(spans, calls) == pytest.approx(4 + 9 + 0.5 + 0.5)


def test_summary_of_a_finished_run_and_its_timeline(state_dir: Path) -> None:
    t0 = time.time()
    RunInfo(run_dir=str(state_dir), graph=GRAPH, started=t0, state=DONE, ended=t0 + 4).write(state_dir)
    for i, (task, start, end) in enumerate([("A", 0.0, 1.0), ("B", 1.0, 3.0), ("C", 1.0, 2.0), ("Root", 3.0, 3.5)]):
        _task(state_dir, task, "start", t0 + start, pid=20 + i)
        _call(state_dir, task, 0, ItemState.RUNNING, t0 + start + 0.1, pid=20 + i)
        _call(state_dir, task, 0, ItemState.COMPLETED, t0 + end - 0.1, pid=20 + i, duration=end - start - 0.2)
        _task(state_dir, task, "success", t0 + end, pid=20 + i)
    summary = summarise(state_dir, 3.5, DONE)
    assert summary.critical_path == pytest.approx(3.5) and summary.from_critical_path == pytest.approx(1.0)
    assert summary.sequential_estimate == pytest.approx(4.5) and summary.speed_up == pytest.approx(4.5 / 3.5)
    assert summary.longest[0] == ("B", pytest.approx(2.0))
    written = write_timeline(state_dir, "run (done)")
    assert written[0].name == "timeline.html" and "<svg" in written[0].read_text()
    assert [p.name for p in written[1:]] == ["timeline.png"] and written[1].stat().st_size > 1000
    lines = summary_lines(summary, run_dir=Path("/r"), report=Path("/r/report.html"), log_file=Path("/l"), timeline=written[0], resume="x")
    assert lines[0].startswith("planexe-concurrency: done in 0:04 (3.5s): 4/4 tasks, 4 LLM calls answered, 0 retried, 0 failed")
    assert "speed-up 1.29x against 4.5s" in lines[1] and "1.00x its tasks' critical path (3.5s)" in lines[1]
    assert lines[2] == "  longest tasks: B 2.0s, A 1.0s, C 1.0s"
    assert lines[3] == "  outputs: /r   report: /r/report.html"
    assert lines[4].startswith("  log: /l   timeline: ")


def test_the_live_display_draws_on_a_terminal_and_prints_lines_above_it(state_dir: Path) -> None:
    t0 = time.time()
    RunInfo(run_dir=str(state_dir), graph=GRAPH, started=t0).write(state_dir)
    _task(state_dir, "A", "start", t0)
    _call(state_dir, "A", 0, ItemState.RUNNING, t0, attempt=1)
    screen = io.StringIO()
    reporter = ProgressReporter(state_dir, stream=screen, live=True, tick=0.05, title="PlanExe: run")
    with reporter:
        (state_dir / CONSOLE_FILE).write_text("WARNING from a forked worker\n")
        time.sleep(0.3)
        reporter.print_line("a notice")
    text = screen.getvalue()
    assert "\x1b[" in text  # drawn, with control sequences
    assert "0/4 tasks" in text and "LLM calls: 0 answered · 1 in flight" in text and "▸ A  0 answered, 1 in flight" in text
    assert text.count("WARNING from a forked worker") == 1 and "a notice" in text


def test_the_live_display_lists_at_most_six_running_tasks(state_dir: Path) -> None:
    from rich.console import Console

    t0 = time.time()
    RunInfo(run_dir=str(state_dir), graph={f"T{i}": [] for i in range(9)}, started=t0).write(state_dir)
    for i in range(9):
        _task(state_dir, f"T{i}", "start", t0 + i)
    snap = RunProgress(state_dir).poll()
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(live_renderable(snap))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert text.count("▸") == 6 and "… and 3 more" in text and "starting" in text


def test_plain_progress_is_one_line_per_interval_without_control_characters(state_dir: Path) -> None:
    RunInfo(run_dir=str(state_dir), graph=GRAPH).write(state_dir)
    lines: list[str] = []
    reporter = ProgressReporter(state_dir, stream=io.StringIO(), live=False, interval=0.2, tick=0.02, plain_printer=lines.append)
    with reporter:
        time.sleep(0.7)
    assert 2 <= len(lines) <= 4
    assert all("\x1b" not in line and "\r" not in line for line in lines)
    assert lines[0].startswith("planexe-concurrency: running: 0/4 tasks")
    piped = io.StringIO()
    ProgressReporter(state_dir, stream=piped, live=None, interval=0.0).refresh()
    assert piped.getvalue().count("\n") == 1  # not a terminal: the plain line, written to the stream


def test_console_levels() -> None:
    assert [console_level(v) for v in (0, 1, 2)] == [logging.WARNING, logging.INFO, logging.DEBUG]
    assert console_level(0, "error") == logging.ERROR and console_level(1, default="INFO") == logging.INFO
    with pytest.raises(ValueError, match="unknown log level"):
        console_level(0, "loud")


def test_logging_goes_once_to_the_file_and_warnings_to_the_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    root = logging.getLogger()
    configure_console(0)
    console = configure_logging(0, tmp_path / "log.txt", tmp_path / CONSOLE_FILE)
    assert sum(1 for h in root.handlers if isinstance(h, ConsoleHandler)) == 1  # replaced, not added
    logging.getLogger("luigi-interface").debug("scheduler detail")
    logging.getLogger("planexe_concurrency").info("a task's item")
    logging.getLogger("somewhere").warning("look here")
    pid = os.fork()
    if pid == 0:  # a forked Luigi worker: its console line goes to the parent's file
        logging.getLogger("child").warning("from the worker")
        os._exit(0)
    os.waitpid(pid, 0)
    for handler in root.handlers:
        handler.flush()
    log = (tmp_path / "log.txt").read_text()
    assert log.count("scheduler detail") == 1 and log.count("a task's item") == 1 and log.count("look here") == 1
    err = capsys.readouterr().err
    assert err == "WARNING somewhere: look here\n"
    assert (tmp_path / CONSOLE_FILE).read_text() == "WARNING child: from the worker\n"
    seen: list[str] = []
    console.printer = seen.append
    logging.getLogger("x").error("drawn by the display")
    assert seen == ["ERROR x: drawn by the display"]


def test_run_info_round_trips(state_dir: Path) -> None:
    info = RunInfo(run_dir="/r", graph=GRAPH, command=["planexe-concurrency", "run"], summary={"wall": 1.0})
    info.write(state_dir)
    data = json.loads((state_dir / "run.json").read_text())
    data["unknown_later_field"] = 1
    (state_dir / "run.json").write_text(json.dumps(data))
    assert RunInfo.read(state_dir) == info


def test_a_stopped_run_without_a_failed_task_says_so(state_dir: Path) -> None:
    RunInfo(run_dir=str(state_dir), graph=GRAPH, state="stopped").write(state_dir)
    lines = summary_lines(summarise(state_dir, 3.0, "stopped"), run_dir=Path("/r"), report=None, log_file=Path("/l"), timeline=None, resume="again")
    assert lines == ["planexe-concurrency: STOPPED after 3.0s: 0 LLM calls answered, 0 retried, 0 failed", "  resume with: again", "  log: /l"]


def test_a_run_of_another_user_counts_as_alive(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(pid: int, sig: int) -> None:
        raise PermissionError

    monkeypatch.setattr(os, "kill", refuse)
    assert not RunInfo(run_dir="/r", graph={}, pid=1).owner_gone()


def test_without_rich_a_terminal_gets_plain_lines(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "rich.live", None)  # as in a PlanExe venv given us with --no-deps
    assert ProgressReporter(state_dir, stream=io.StringIO(), live=True).live is False


def test_a_forked_worker_hands_its_console_line_to_the_parent(tmp_path: Path) -> None:
    handler = ConsoleHandler(logging.WARNING, tmp_path / CONSOLE_FILE)
    handler._owner = -1  # as seen from a forked child
    handler.emit(logging.LogRecord("w", logging.WARNING, __file__, 1, "from %s", ("a worker",), None))
    assert (tmp_path / CONSOLE_FILE).read_text() == "WARNING w: from a worker\n"


def test_task_events_record_a_failure_with_its_error(tmp_path: Path) -> None:
    import luigi

    from planexe_concurrency.timing import read_task_spans, record_task_events

    class Breaks(luigi.Task):
        def run(self) -> None:
            raise ValueError("the reason")

    path = tmp_path / "tasks.jsonl"
    stop = record_task_events(path)
    assert record_task_events(path) is stop  # once per file
    try:
        assert not luigi.build([Breaks()], local_scheduler=True, log_level="CRITICAL")
    finally:
        stop()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["event"], r.get("error")) for r in lines] == [("start", None), ("failure", "ValueError: the reason")]
    assert [s.ok for s in read_task_spans(path)] == [False]


def test_a_host_lists_the_tasks_it_runs_and_counts_the_whole_run(state_dir: Path) -> None:
    t0 = time.time()
    RunInfo(run_dir=str(state_dir), graph=GRAPH, started=t0).write(state_dir)
    _task(state_dir, "B", "start", t0 + 1, host="here")
    _task(state_dir, "C", "start", t0 + 1, host="there")
    _task(state_dir, "A", "success", t0 + 0.5, host="there")
    here = RunProgress(state_dir, host="here").poll()
    assert [r.task for r in here.running] == ["B"] and here.tasks_done == 1
    assert sorted(r.task for r in RunProgress(state_dir).poll().running) == ["B", "C"]


def test_calls_given_up_in_a_task_that_went_on_are_named_in_the_summary(state_dir: Path) -> None:
    t0 = time.time()
    RunInfo(run_dir=str(state_dir), graph={"Lenses": []}, started=t0, state=DONE, ended=t0 + 2).write(state_dir)
    _task(state_dir, "Lenses", "start", t0)
    _call(state_dir, "Lenses", 0, ItemState.COMPLETED, t0 + 0.5, duration=0.5)
    _call(state_dir, "Lenses", 1, ItemState.FAILED, t0 + 0.6, error="RateLimitError: 429")
    _task(state_dir, "Lenses", "success", t0 + 1)
    summary = summarise(state_dir, 2.0, DONE)
    assert summary.carried_on == ("Lenses item 2/2 (call 2)",)
    lines = summary_lines(summary, run_dir=Path("/r"), report=None, log_file=Path("/l"), timeline=None, resume="x")
    assert any(line.startswith("  1 call(s) given up in tasks that went on without them") and line.endswith("Lenses item 2/2 (call 2)") for line in lines)
