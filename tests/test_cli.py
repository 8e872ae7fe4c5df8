"""The planexe-concurrency command: the main job, bad input refused first, check-config, bench."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import PLAN_PROMPT, set_concurrency, write_start_files
from pipeline_patches.cli import main
from pipeline_patches.rundir import state_dir_for


# `main` sets up logging on the (captured) stderr and `run` writes its settings into Luigi's
# global config, as a command should; both are undone after each test.
pytestmark = pytest.mark.usefixtures("luigi_config", "restored_logging")


def test_run_on_the_built_in_defaults_writes_a_whole_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    summary = tmp_path / "summary.json"
    assert main(["--log-level", "WARNING", "run", "--speed", "fast", "--workers", "2", "--latency", "0", "--summary-json", str(summary)]) == 0
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.name != ".planexe_concurrency"]
    assert (run_dir / "999-pipeline_complete.txt").exists()
    assert not [p for p in run_dir.rglob("*") if "planexe_concurrency" in p.name]  # nothing of ours in the run
    assert (state_dir_for(run_dir) / "events.jsonl").exists()
    data = json.loads(summary.read_text())
    assert data["ok"] and data["workers"] == 2 and data["layout"] == "double"
    assert "FullPlanPipeline" in " ".join(data["graph"])
    assert "done in" in capsys.readouterr().out
    # the same command again resumes: nothing left to do, still a success
    assert main(["--log-level", "WARNING", "run", "--run-dir", str(run_dir), "--speed", "fast", "--latency", "0"]) == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "--prompt", "a", "--prompt-file", "b"], "give --prompt or --prompt-file, not both"),
        (["run", "--prompt-file", "/nonexistent/idea.txt"], "--prompt-file /nonexistent/idea.txt: No such file or directory"),
        (["run", "--run-dir", "{busy}"], "is not empty and has no 001-1-start_time.json: not a PlanExe run"),
        (["run", "--run-dir", "{half}"], "is malformed: 001-1-start_time.json is missing"),
        (["run", "--run-dir", "{broken}"], "is malformed: 001-1-start_time.json is not JSON"),
        (["run", "--run-dir", "{done}", "--prompt", "new idea"], "already holds a plan; leave out the prompt to resume it"),
        (["run", "--run-dir", "{file}"], "exists and is not a directory"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    half = tmp_path / "half"
    half.mkdir()
    (half / "001-2-plan.txt").write_text(PLAN_PROMPT)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "001-1-start_time.json").write_text("{")
    (broken / "001-2-plan.txt").write_text(PLAN_PROMPT)
    done = write_start_files(tmp_path / "done")
    (tmp_path / "file").write_text("x")
    def snapshot() -> dict[str, bytes | None]:
        return {str(p): (p.read_bytes() if p.is_file() else None) for p in sorted(tmp_path.rglob("*"))}

    before = snapshot()
    args = [a.format(busy=busy, half=half, broken=broken, done=done, file=tmp_path / "file") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("planexe-concurrency: error: ") and message in err[0]
    assert snapshot() == before


def test_bad_setting_is_refused_before_anything_runs(tmp_path: Path, luigi_config, capsys: pytest.CaptureFixture[str]) -> None:
    set_concurrency(luigi_config, task_overrides='{"NoSuchTask": {"max_parallel": 2}}')
    run_dir = tmp_path / "new"
    assert main(["run", "--run-dir", str(run_dir)]) == 2
    assert "task_overrides names an unknown task 'NoSuchTask'" in capsys.readouterr().err
    assert not run_dir.exists()
    assert main(["check-config"]) == 2


def test_check_config_shows_the_global_settings_and_each_override(luigi_config, capsys: pytest.CaptureFixture[str]) -> None:
    set_concurrency(luigi_config, task_overrides='{"CreateWBSLevel3Task": {"max_parallel": 16, "speculate": false}}')
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "every task: max_parallel=4" in out and "speculate=true" in out
    assert "CreateWBSLevel3Task: max_parallel=16" in out and "speculate=false fidelity=exact" in out


def test_argument_ranges_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--workers", "0"])
    assert info.value.code == 2
    assert "--workers must be an integer in 1..64, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--latency", "-1"])
    with pytest.raises(SystemExit):
        main(["check-config", "--surprise"])


def test_patch_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "run_plan_pipeline.py"
    target.write_text("x = 1\n\nif __name__ == '__main__':\n    pass\n")
    assert main(["patch", str(target)]) == 0
    assert main(["patch", str(target)]) == 0
    assert main(["patch", str(target), "--revert"]) == 0
    out = capsys.readouterr().out
    assert "patched" in out and "already patched, nothing to do" in out and "reverted" in out
    assert main(["patch", str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_bench_prints_a_table_of_ratios_and_checks_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    code = main(["bench", "--latency", "0.02", "--speed", "fast", "--workers", "2", "--max-parallel", "4", "--luigi-module", "--out", str(out)])
    assert code == 0
    report = (out / "results.md").read_text()
    assert re.search(r"\| luigi --module #1 \| luigi --module \| [0-9.]+ \| [0-9.]+x \| [0-9.]+x \| yes \|", report), report
    assert "| sequential #1 | 1 | - |" in report and "| concurrent #1 | 2 | 4 |" in report
    assert "| yes |" in report and "| NO |" not in report and "Critical-path bounds" in report
    results = json.loads((out / "results.json").read_text())
    seq, conc, via_luigi = results["runs"]
    assert seq["calls"] == conc["calls"] == via_luigi["calls"] == 73  # FAST mode, every call seen by the server
    assert conc["peak_in_flight"] > 1 and seq["peak_in_flight"] == 1
    assert "sched. gap/task (s)" in report and seq["gap_per_task"] > 0 and conc["gap_per_task"] > 0
    assert 0 < results["bounds"]["full"] <= results["bounds"]["graph"] <= seq["wall"]
    assert (out / "timeline-concurrent.html").exists() and (out / "timeline.png").exists()
    assert main(["bench", "--workers", "0"]) == 2
    assert main(["bench", "--tokens-per-second", "-1"]) == 2


def test_the_provider_table_says_when_only_recorded_call_durations_differ(tmp_path: Path) -> None:
    from pipeline_patches.bench import _same_files

    runs = {name: tmp_path / name for name in ("reference", "same", "queued", "other")}
    for name, folder in runs.items():
        folder.mkdir()
        duration = 2 if name == "queued" else 1  # a queueing server's wait is part of the call
        answer = "another answer" if name == "other" else "an answer"
        (folder / "raw.json").write_text(f'{{"answer": "{answer}", "metadata": {{"duration": {duration}}}}}')
    assert _same_files(runs["reference"], runs["same"], lenient=False) == "yes"
    assert _same_files(runs["reference"], runs["queued"], lenient=False) == "lenient"
    assert _same_files(runs["reference"], runs["other"], lenient=False) == "NO"
    assert _same_files(runs["reference"], runs["queued"], lenient=True) == "yes"  # a real PlanExe is compared leniently anyway


def test_the_lenient_compare_forgives_recorded_call_times_and_nothing_else() -> None:
    from pipeline_patches.compare import normalize

    timed = '{"metadata": {"duration": %d, "duration_total": %d, "duration_average": %d, "duration_max": %d}}'
    assert normalize(timed % (1, 3, 1, 1)) == normalize(timed % (2, 7, 2, 5))  # a retried call took longer
    chained = '{"metadata": {"duration1": %d, "duration2": %d}}'  # QuestionsAndAnswers: two requests, ceil'd seconds
    assert normalize(chained % (1, 1)) == normalize(chained % (1, 2))  # the second one waited in a queue
    assert normalize('{"days_max": 3}') != normalize('{"days_max": 4}')  # content stays content
