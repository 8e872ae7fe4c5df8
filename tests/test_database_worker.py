"""PlanExe's multi-user database worker with the flag on, on a real PostgreSQL.

The double's stand-in for ``worker_plan_database`` opens its connection at import, in the
process that calls ``luigi.build``, and its callback writes progress and a heartbeat to the
database after every LLM attempt. Under ``--workers N`` the callback must run in that
process, one call at a time: a forked task that used the parent's connection would cross
replies with the parent on one socket (hangs, "there is already a transaction in progress").
Everything here is observed from the database's side (and the server's own log).
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from pipeline_patches.rundir import state_dir_for

from conftest import FIXED_START_TIME
from pipeline_patches.compare import WORKER_EXTRAS
from pipeline_patches.planexe_double import DOUBLE_ROOT
from pipeline_patches.rundir import STATE_DIR_NAME

sqlalchemy = pytest.importorskip("sqlalchemy")
from sqlalchemy import text  # noqa: E402

pytestmark = pytest.mark.slow

PROGRESS_TRIGGER = """
CREATE TABLE progress_log (seq BIGSERIAL PRIMARY KEY, request_id TEXT, progress DOUBLE PRECISION, backend_pid INTEGER);
CREATE FUNCTION log_progress() RETURNS trigger AS $$
BEGIN
    IF NEW.progress_percentage IS DISTINCT FROM OLD.progress_percentage THEN
        INSERT INTO progress_log (request_id, progress, backend_pid) VALUES (NEW.id, NEW.progress_percentage, pg_backend_pid());
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER progress_logged AFTER UPDATE ON plan_request FOR EACH ROW EXECUTE FUNCTION log_progress();
"""


@dataclass
class Worker:
    proc: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text()


def worker_database(url: str) -> Any:
    """The worker's schema in the database at ``url``, created as the worker creates it; an engine on it."""
    env = {**os.environ, "PLANEXE_DOUBLE_DATABASE_URL": url, "PYTHONPATH": str(DOUBLE_ROOT)}
    subprocess.run(
        [sys.executable, "-c", "from worker_plan_database.app import create_schema; create_schema()"],
        env=env, check=True, capture_output=True, timeout=60,
    )
    return sqlalchemy.create_engine(url)


@pytest.fixture
def database(postgres_database: str) -> Iterator[Any]:
    """The worker's schema plus a trigger that logs every progress update."""
    engine = worker_database(postgres_database)
    with engine.begin() as conn:
        conn.execute(text(PROGRESS_TRIGGER))
    yield engine
    engine.dispose()


def add_requests(engine: Any, count: int) -> list[str]:
    ids = [f"req-{i}-{uuid.uuid4().hex[:6]}" for i in range(count)]
    with engine.begin() as conn:
        for request_id in ids:
            conn.execute(
                text("INSERT INTO plan_request (id, prompt) VALUES (:id, :p)"),
                {"id": request_id, "p": "Open a community tool library in a small town within six months."},
            )
    return ids


def start_worker(engine: Any, tmp_path: Path, name: str, *, flag: bool, workers: int = 4, **settings: Any) -> Worker:
    cfg = tmp_path / f"{name}.cfg"
    lines = ["[planexe_concurrency]", *(f"{k} = {v}" for k, v in settings.items())]
    cfg.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANEXE_", "LUIGI_"))}
    env.update(
        PYTHONPATH=str(DOUBLE_ROOT),
        LUIGI_CONFIG_PATH=str(cfg),
        PLANEXE_DOUBLE_DATABASE_URL=engine.url.render_as_string(hide_password=False),
        PLANEXE_RUN_DIR=str(tmp_path / "runs"),
        PLANEXE_DOUBLE_START_TIME_JSON=FIXED_START_TIME,
        PLANEXE_DOUBLE_WORKER_EXIT_WHEN_IDLE="1.5",
        PLANEXE_WORKER_ID=name,
        PLANEXE_SIMLLM_LATENCY="0.02",
        LLM_MODEL="simulated",
    )
    if flag:
        env.update(PLANEXE_CONCURRENCY="1", PLANEXE_WORKERS=str(workers))
    log = tmp_path / f"{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "worker_plan_database.app"], env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    return Worker(proc, log)


def finish(worker: Worker, timeout: float = 240) -> str:
    try:
        worker.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        worker.proc.kill()
        pytest.fail(f"the worker hung; its last output:\n{worker.output()[-3000:]}")
    assert worker.proc.returncode == 0, worker.output()[-3000:]
    return worker.output()


def rows(engine: Any, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params))


def database_errors(output: str) -> list[str]:
    words = ("DatabaseError", "OperationalError", "StaleDataError", "InterfaceError", "ProgrammingError", "ResourceClosedError")
    return [line for line in output.splitlines() if any(w in line for w in words)]


def raised(output: str) -> list[str]:
    """The exception line that ends each traceback in the worker's output."""
    lines = output.splitlines()
    ends = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            ends.append(next((x for x in lines[i + 1:] if x and not x.startswith(" ")), "?"))
    return ends


@pytest.fixture(scope="module")
def sequential_reference(tmp_path_factory: pytest.TempPathFactory, postgres_server: Any) -> dict[str, Any]:
    """PlanExe's own worker (flag off): the callback calls and the files every concurrent run must match."""
    tmp_path = tmp_path_factory.mktemp("db-reference")
    engine = worker_database(postgres_server.create_database())
    (request_id,) = add_requests(engine, 1)
    worker = start_worker(engine, tmp_path, "sequential", flag=False)
    output = finish(worker)
    (state,) = rows(engine, "SELECT state FROM plan_request WHERE id = :r", r=request_id)
    assert state.state == "completed", output[-3000:]
    calls = rows(engine, "SELECT task FROM callback_call WHERE request_id = :r ORDER BY seq", r=request_id)
    engine.dispose()
    return {"calls": sorted(c.task for c in calls), "run_dir": tmp_path / "runs" / request_id}


def _plan(run_dir: Path) -> dict[str, bytes]:
    from pipeline_patches.compare import plan_files

    return {k: v for k, v in plan_files(run_dir).items() if k not in WORKER_EXTRAS}


@pytest.mark.parametrize("workers", [4, 8])
def test_flag_on_the_plan_completes_and_every_callback_runs_in_the_worker_process(
    database: Any, tmp_path: Path, sequential_reference: dict[str, Any], postgres_server: Any, startup_hook: Path, workers: int
) -> None:
    (request_id,) = add_requests(database, 1)
    log_offset = postgres_server.log_size()
    worker = start_worker(database, tmp_path, f"w{workers}", flag=True, workers=workers)
    output = finish(worker)
    assert f"luigi.build with {workers} workers" in output  # the start-up hook made it concurrent, no file edited

    (row,) = rows(database, "SELECT state, report_html IS NOT NULL AS has_report, run_zip FROM plan_request WHERE id = :r", r=request_id)
    assert row.state == "completed" and row.has_report
    # nothing of ours in what PlanExe hands the user, nor in the run directory
    names = zipfile.ZipFile(io.BytesIO(bytes(row.run_zip))).namelist()
    assert names and not [n for n in names if STATE_DIR_NAME.strip(".") in n]
    run_dir = tmp_path / "runs" / request_id
    assert _plan(run_dir) == _plan(sequential_reference["run_dir"])

    calls = rows(database, "SELECT task, pid, outcome FROM callback_call WHERE request_id = :r ORDER BY seq", r=request_id)
    assert sorted(c.task for c in calls) == sequential_reference["calls"]  # as many calls as PlanExe's own run, task by task
    assert {c.pid for c in calls} == {worker.proc.pid}  # every call made by the worker process itself
    assert {c.outcome for c in calls} == {"continue"}
    assert raised(output) == []

    progress = [r.progress for r in rows(database, "SELECT progress FROM progress_log WHERE request_id = :r ORDER BY seq", r=request_id)]
    assert len(progress) > 10
    assert progress == sorted(progress)  # it only ever rises
    assert len({r.backend_pid for r in rows(database, "SELECT DISTINCT backend_pid FROM progress_log WHERE request_id = :r", r=request_id)}) == 1

    assert database_errors(output) == []
    assert postgres_server.problems_since(log_offset) == []


def test_a_stop_from_the_callback_ends_every_worker_within_one_call(
    database: Any, tmp_path: Path, postgres_server: Any, startup_hook: Path
) -> None:
    (request_id,) = add_requests(database, 1)
    log_offset = postgres_server.log_size()
    worker = start_worker(database, tmp_path, "stop", flag=True, workers=4, max_parallel=2)
    # the user closes the browser once the plan is a fifth done
    deadline = time.time() + 120
    while time.time() < deadline and worker.proc.poll() is None:
        (row,) = rows(database, "SELECT progress_percentage FROM plan_request WHERE id = :r", r=request_id)
        if row.progress_percentage > 20:
            with database.begin() as conn:
                conn.execute(text("UPDATE plan_request SET last_seen = now() - interval '1 hour' WHERE id = :r"), {"r": request_id})
            break
        time.sleep(0.05)
    output = finish(worker)
    (row,) = rows(database, "SELECT state FROM plan_request WHERE id = :r", r=request_id)
    assert row.state == "stopped", output[-3000:]
    run_dir = tmp_path / "runs" / request_id
    assert (run_dir / "pipeline_stop_requested.txt").exists()

    calls = rows(database, "SELECT seq, task, pid, outcome FROM callback_call WHERE request_id = :r ORDER BY seq", r=request_id)
    first_stop = next(i for i, c in enumerate(calls) if c.outcome == "stop")
    after = calls[first_stop:]
    assert {c.outcome for c in after} == {"stop"}  # once stopped, nobody is told to go on
    per_task: dict[str, int] = {}
    for c in after:
        per_task[c.task] = per_task.get(c.task, 0) + 1
    assert max(per_task.values()) <= 2  # at most the calls each task had in flight (max_parallel = 2)
    assert {c.pid for c in calls} == {worker.proc.pid}
    # the tasks that failed, failed with the stop and nothing else (Luigi logs each with its traceback)
    assert raised(output) and {line.split(":")[0].rsplit(".", 1)[-1] for line in raised(output)} == {"PipelineStopRequested"}
    assert database_errors(output) == []
    assert postgres_server.problems_since(log_offset) == []


def test_two_worker_processes_three_requests_each_processed_once(
    database: Any, tmp_path: Path, postgres_server: Any, startup_hook: Path
) -> None:
    ids = add_requests(database, 3)
    log_offset = postgres_server.log_size()
    workers = [start_worker(database, tmp_path, f"worker-{i}", flag=True, workers=2) for i in range(2)]
    outputs = [finish(w) for w in workers]
    result = rows(database, "SELECT id, state, claim_count, claimed_by FROM plan_request ORDER BY id")
    assert sorted(r.id for r in result) == sorted(ids)
    assert {r.state for r in result} == {"completed"}
    assert {r.claim_count for r in result} == {1}
    by_worker = {w.proc.pid: name for w, name in zip(workers, ("worker-0", "worker-1"))}
    for r in result:
        pids = {c.pid for c in rows(database, "SELECT DISTINCT pid FROM callback_call WHERE request_id = :r", r=r.id)}
        assert [by_worker[p] for p in pids] == [r.claimed_by]  # each plan's callbacks came from the worker that claimed it
    for output in outputs:
        assert database_errors(output) == [] and raised(output) == []
    assert postgres_server.problems_since(log_offset) == []
    # one worker ran two plans in one process: each plan's calls are in that plan's own files
    from planexe_concurrency.progress import RunInfo

    for r in result:
        info = RunInfo.read(state_dir_for(tmp_path / "runs" / r.id))
        assert info is not None and info.state == "done" and info.summary["calls_answered"] > 10, r.id
