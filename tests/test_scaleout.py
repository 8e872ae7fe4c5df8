"""Real processes on 127.0.0.1: luigid with three worker processes, kill -9 and resume, logs.

Each test drives ``python -m luigi --module pipeline_patches.pipeline ...`` as a user
would, against the simulated HTTP provider, whose request log says what was asked.
"""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import speculation_reports, differing_files, http_reference_calls
from planexe_concurrency.events import ItemState, read_events
from planexe_concurrency.simllm import SimServer
from pipeline_patches.compare import plan_files
from pipeline_patches.rundir import state_dir_for

pytest.importorskip("llama_index.llms.openai_like")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
FAST = "FAST_BUT_SKIP_DETAILS"


def _env(server: SimServer | None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PLANEXE_CONCURRENCY_TARGET"] = "double"
    if server is not None:
        env["PLANEXE_SIMLLM_URL"] = server.url
    env.update(extra)
    return env


def _luigi_cmd(run_dir: Path, *extra: str, speed: str = FAST, task: str = "ConcurrentFullPlanPipeline") -> list[str]:
    return [
        sys.executable, "-m", "luigi", "--module", "pipeline_patches.pipeline", task,
        "--run-id-dir", str(run_dir), "--llm-models", '["simulated-http"]', "--speedvsdetail", speed,
        "--planexe-concurrency-events-file", str(state_dir_for(run_dir) / "events.jsonl"),
        "--planexe-concurrency-task-events-file", str(state_dir_for(run_dir) / "tasks.jsonl"),
        *extra,
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def luigid(tmp_path: Path) -> Iterator[int]:
    """A central scheduler on loopback; yields its port."""
    port = _free_port()
    exe = shutil.which("luigid") or str(Path(sys.executable).with_name("luigid"))
    proc = subprocess.Popen(
        [exe, "--address", "127.0.0.1", "--port", str(port), "--state-path", str(tmp_path / "state.pickle"),
         "--logdir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 20
        while True:
            assert proc.poll() is None, "luigid exited at start-up"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.time() < deadline, "luigid did not listen within 20 s"
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _task_lines(run_dir: Path) -> list[dict[str, Any]]:
    path = state_dir_for(run_dir) / "tasks.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_three_worker_processes_on_luigid_run_every_task_once_within_one_cap_on_calls_in_flight(
    http_reference: Path,
    sim_server_factory: Callable[..., SimServer],
    new_run_dir: Callable[[str], Path],
    luigid: int,
    tmp_path: Path,
) -> None:
    server = sim_server_factory(latency=0.05)
    run_dir = new_run_dir("luigid3")
    cmd = _luigi_cmd(
        run_dir, "--workers", "2", "--no-lock", "--worker-keep-alive", "--worker-wait-interval", "0.1", "--worker-wait-jitter", "0.1",
        "--scheduler-host", "127.0.0.1", "--scheduler-port", str(luigid), "--planexe-concurrency-max-in-flight", "2",
    )
    # Files, not pipes: a worker blocked on a full pipe would hold its tasks, and keep the others alive.
    logs = [tmp_path / f"worker-{i}.log" for i in range(3)]
    workers = [
        subprocess.Popen(cmd, env=_env(server), stdout=subprocess.DEVNULL, stderr=log.open("w"))
        for log in logs
    ]
    try:
        for worker, log in zip(workers, logs):
            assert worker.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()

    assert differing_files(http_reference, run_dir) == []
    lines = _task_lines(run_dir)
    starts = collections.Counter(x["task_id"] for x in lines if x["event"] == "start")
    successes = collections.Counter(x["task_id"] for x in lines if x["event"] == "success")
    assert not [x for x in lines if x["event"] == "failure"]
    # every task that had work to do ran exactly once, in one of the three worker processes
    assert set(starts.values()) == {1} and starts == successes
    assert len(starts) == 61  # 63 tasks; the start-time and plan files were there already
    runners = {x["ppid"] for x in lines}
    assert runners <= {w.pid for w in workers} and len(runners) >= 2
    # three processes of two workers each, one cap: never more than 2 calls at the server, and 2 reached
    assert server.peak_in_flight() == 2
    # and the provider saw every call exactly once (no task, no item asked twice)
    per_call = collections.Counter(r.key for r in server.log)
    assert set(per_call.values()) == {1}
    assert len(per_call) == http_reference_calls(http_reference)


def _whole_or_absent(run_dir: Path, reference: Path) -> list[str]:
    """Files of an interrupted run that are not exactly the finished run's file (the double is deterministic)."""
    ours, full = plan_files(run_dir), plan_files(reference)
    return [name for name, data in ours.items() if full.get(name) != data]


def test_kill_9_in_the_middle_of_wbs_level3_then_rerun(
    http_reference: Path, sim_server_factory: Callable[..., SimServer], new_run_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    server = sim_server_factory(latency=0.2)
    run_dir = new_run_dir("crash")
    answers = state_dir_for(run_dir) / "answers" / "CreateWBSLevel3Task"
    merged = run_dir / "023-2-wbs_level3.json"
    first_raw = "023-1-1-wbs_level3_raw.json"
    # One WBS level-3 call at a time, so the kill lands between the first answer and the second:
    # once the first item's raw file is whole (PlanExe writes it with a plain open(), which is not
    # atomic: a kill inside that write is the start marks' case, test_a_planexe_task_killed_while_
    # writing_its_last_file_runs_again), while the second call is out (0.2 s).
    cmd = _luigi_cmd(
        run_dir, "--workers", "2", "--local-scheduler",
        "--planexe-concurrency-task-overrides", '{"CreateWBSLevel3Task": {"max_parallel": 1}}',
    )
    log = tmp_path / "first.log"
    proc = subprocess.Popen(cmd, env=_env(server), stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)
    try:
        deadline = time.time() + 180
        whole = (http_reference / first_raw).read_bytes()
        while not ((run_dir / first_raw).is_file() and (run_dir / first_raw).read_bytes() == whole):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "CreateWBSLevel3Task never wrote its first item"
            time.sleep(0.01)
        assert answers.is_dir() and any(answers.glob("*.json"))  # and its answer was saved
        os.killpg(proc.pid, signal.SIGKILL)  # the worker and every process it forked
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert not merged.exists(), "the kill came too late to land inside the fan-out"
    time.sleep(0.5)  # let the server finish (and log) what was in flight
    asked_before = {r.key for r in server.log if r.status == 200}
    n_before = len(server.log)
    assert _whole_or_absent(run_dir, http_reference) == []  # nothing half-written

    events = state_dir_for(run_dir) / "events.jsonl"
    events.rename(state_dir_for(run_dir) / "events-first.jsonl")
    rerun = subprocess.run(cmd, env=_env(server), capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert differing_files(http_reference, run_dir) == []

    # The answer saved before the kill was not asked again; the other calls were.
    wbs3 = [e for e in read_events(events) if e.task == "CreateWBSLevel3Task"]
    leaves = len(list(http_reference.glob("023-1-*")))
    assert len([e for e in wbs3 if e.state is ItemState.RUNNING]) == leaves - 1
    report = speculation_reports(run_dir)["CreateWBSLevel3Task"]
    assert report["replayed_from_store"] == 1 and report["used"] + report["asked_live"] == leaves - 1
    # Only what was in flight at the kill (the second item, and at most one call of the
    # other worker) was asked again; every call of the plan was asked at least once.
    asked_after = [r.key for r in server.log[n_before:]]
    assert len(set(asked_after) & asked_before) <= 2
    assert len(asked_before | set(asked_after)) == http_reference_calls(http_reference)


# Runs Luigi in this one process (--workers 1 does not fork) and kills it with SIGKILL
# halfway through writing the file named by argv[1], as a crash would.
DIE_WHILE_WRITING = """
import os, signal, sys
from pathlib import Path
import luigi
import pipeline_patches.pipeline
import worker_plan_internal.llm_util.structured_step as step

target, write_text = sys.argv[1], step.write_text

def write_half_then_die(path, text):
    # in the run directory itself: a record pass writes the same names into a scratch folder beside it
    if Path(path).name == target and ".planexe_concurrency" not in Path(path).parts:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text[: len(text) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    write_text(path, text)

step.write_text = write_half_then_die
luigi.run(sys.argv[2:])
"""


def test_a_planexe_task_killed_while_writing_its_last_file_runs_again(
    http_reference: Path, sim_server_factory: Callable[..., SimServer], new_run_dir: Callable[[str], Path]
) -> None:
    server = sim_server_factory()
    run_dir = new_run_dir("killed-writing")
    last_file = "002-6-identify_purpose.md"  # IdentifyPurposeTask writes its raw file, then this
    cmd = _luigi_cmd(run_dir, "--workers", "1", "--local-scheduler")
    killed = subprocess.run(
        [sys.executable, "-c", DIE_WHILE_WRITING, last_file, *cmd[3:]],
        env=_env(server), capture_output=True, text=True, timeout=180,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # Every output of the task is there, the last one truncated: Luigi alone would call it done.
    assert (run_dir / "002-5-identify_purpose_raw.json").read_bytes() == (http_reference / "002-5-identify_purpose_raw.json").read_bytes()
    truncated = (run_dir / last_file).read_bytes()
    assert truncated and truncated != (http_reference / last_file).read_bytes()

    rerun = subprocess.run(cmd, env=_env(server), capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert differing_files(http_reference, run_dir) == []
    told = [line for line in rerun.stderr.splitlines() if "task=IdentifyPurposeTask started" in line]
    assert len(told) == 1 and re.search(r"WARNING\b.* started in an earlier run \(process \d+ on .+, now gone\)", told[0]), told
    started_again = [line["task"] for line in _task_lines(run_dir) if line["event"] == "start"]
    assert started_again.count("IdentifyPurposeTask") == 2  # killed once, then redone
    assert list((state_dir_for(run_dir) / "started").iterdir()) == []  # every mark removed on success


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


BAD_INPUTS = {
    "settings": (["--planexe-concurrency-max-parallel", "99"], "max_parallel = 99 is not allowed: expected an integer in 1..32"),
    "overrides": (["--planexe-concurrency-task-overrides", '{"NoSuchTask": {"max_parallel": 2}}'],
                  "task_overrides names an unknown task 'NoSuchTask'"),
    "missing": ([], "does not exist"),
    "malformed": ([], "001-1-start_time.json is not JSON"),
}


def test_bad_input_on_the_luigi_command_line_is_one_line_and_changes_nothing(
    new_run_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """Invalid settings, an unknown task in the overrides, a missing or malformed run directory."""
    runs = {}
    for case, (extra, _) in BAD_INPUTS.items():
        run_dir = new_run_dir(case) if case != "missing" else tmp_path / "no-such-run"
        if case == "malformed":
            (run_dir / "001-1-start_time.json").write_text("{")
        runs[case] = [*_luigi_cmd(run_dir, "--local-scheduler"), *extra]
    before = _snapshot(tmp_path)
    procs = {  # side by side: each one is a fresh interpreter importing Luigi and the double
        case: subprocess.Popen(cmd, env=_env(None, PYTHONWARNINGS="ignore"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        for case, cmd in runs.items()
    }
    for case, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (case, err[-3000:])
        lines = err.strip().splitlines()
        assert len(lines) == 1, (case, err)
        assert lines[0].startswith("planexe-concurrency: error: ") and BAD_INPUTS[case][1] in lines[0], case
    assert _snapshot(tmp_path) == before


def test_a_corrupt_per_item_raw_file_is_redone_not_trusted(
    http_reference: Path,
    sim_server_factory: Callable[..., SimServer],
    tmp_path: Path,
    luigi_config: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A raw file cut short with no record (e.g. left by PlanExe's own run) is asked again;
    one cut short next to a good record is rewritten from the record, without a request."""
    import luigi

    from conftest import set_concurrency
    from pipeline_patches import pipeline as patches

    server = sim_server_factory()
    monkeypatch.setenv("PLANEXE_SIMLLM_URL", server.url)
    run_dir = tmp_path / "corrupt"
    shutil.copytree(http_reference, run_dir)
    events = state_dir_for(run_dir) / "events.jsonl"
    set_concurrency(luigi_config, events_file=str(events))
    task = patches.P.CreateWBSLevel3Task(
        run_id_dir=run_dir, llm_models=["simulated-http"], speedvsdetail=patches.pe.SpeedVsDetailEnum.FAST_BUT_SKIP_DETAILS
    )
    first, second = run_dir / "023-1-1-wbs_level3_raw.json", run_dir / "023-1-2-wbs_level3_raw.json"
    whole = {first: first.read_text(), second: second.read_text()}
    # PlanExe's raw files alone are not trusted: the task asks both items and saves the answers
    task.output().remove()
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    assert len(server.log) == 2
    task.output().remove()
    saved = sorted((state_dir_for(run_dir) / "answers" / "CreateWBSLevel3Task").glob("*.json"))
    assert len(saved) == 2
    saved[0].unlink()
    for path in (first, second):
        path.write_text(whole[path][: len(whole[path]) // 2])
    server.clear_log()
    events.unlink()
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    assert len(server.log) == 1  # only the item without a saved answer was asked again
    wbs3 = read_events(events)
    assert len([e for e in wbs3 if e.state is ItemState.RUNNING]) == 1
    assert {path: path.read_text() for path in whole} == whole
    assert differing_files(http_reference, run_dir) == []


FAN_OUT_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR): task=(\w+) item=(\d+)(/\d+)? ")
TASK_SUMMARY_LINE = re.compile(r"^(INFO|WARNING): task=(\w+) speculation: ")  # one per task, after its calls


def test_every_fan_out_log_line_names_task_and_item_and_none_is_lost_or_torn(
    sim_server_factory: Callable[..., SimServer], new_run_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """Four forked workers log to one stderr (FAST mode); each record must arrive whole, on its own line."""
    server = sim_server_factory(latency=0.02, fault_rate=0.1, faults=("500",), seed=5)
    run_dir = new_run_dir("logs")
    log = tmp_path / "stderr.log"
    cmd = _luigi_cmd(
        run_dir, "--workers", "4", "--local-scheduler", "--planexe-concurrency-retry-backoff-base", "0.01",
        "--planexe-concurrency-retry-jitter", "0.01", "--planexe-concurrency-retry-attempts", "8",
    )
    proc = subprocess.run(cmd, env=_env(server), stdout=subprocess.DEVNULL, stderr=log.open("w"), timeout=300)
    text = log.read_text()
    assert proc.returncode == 0 and (run_dir / "999-pipeline_complete.txt").exists(), text[-3000:]

    ours = [line for line in text.splitlines() if "task=" in line]
    torn = [
        line for line in ours
        if not (FAN_OUT_LINE.match(line) or TASK_SUMMARY_LINE.match(line)) or line.count("task=") != 1
    ]
    assert torn == []
    events = read_events(state_dir_for(run_dir) / "events.jsonl")
    logged: collections.Counter[tuple[str, int, str]] = collections.Counter()
    for line in ours:
        match, state = FAN_OUT_LINE.match(line), re.search(r" state=(\w+)", line)
        if match and state:
            logged[(match.group(2), int(match.group(3)), state.group(1))] += 1
    expected = collections.Counter((e.task, e.item + 1, e.state.value) for e in events)  # Luigi logs at DEBUG
    assert logged == expected  # not one line lost, however many processes wrote at once
    assert sum(1 for line in ours if "transient error, retrying" in line) >= 3  # the retries are in the log too
    loops = {"ConsolidateAssumptionsMarkdownTask", "DraftDocumentsToFindTask", "DraftDocumentsToCreateTask",
             "ExpertReviewTask", "EstimateTaskDurationsTask", "CreateWBSLevel3Task", "PremiseAttackTask"}
    assert loops <= {e.task for e in events}  # every loop of this double run (exact mode), and the one-call tasks too
