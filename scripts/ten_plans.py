#!/usr/bin/env python3
"""Ten plans at once on one key: one cap on calls in flight and one request budget, shared by every run.

    python scripts/ten_plans.py --plans 10 --slots 2 --rpm 600 --latency 0.3

Starts ``--plans`` whole plans of the built-in double at the same moment (``planexe-concurrency
run``, ``--workers`` each) against one simulated provider that serves ``--slots`` K requests
at a time and queues the rest (as Ollama does). Every run names the same ``in_flight_file``
(``max_in_flight = K``) and the same ``rate_limit_file`` (``requests_per_minute``), as ten
users of one key would. Then it does it again with ``critical_path_first = false``. It
prints, measured in this one invocation: whether every plan completed with the reference
files (a sequential run of the same plan, compared leniently: a queued call's recorded
duration is longer), the most requests the server held at once (never above K), the most
requests it saw in any 60 s (never above the budget), the makespan against the bound
(total server time of all calls / K), from the launch and from the first task's start (after
the processes' start-up, which a long-running worker pays once), and each plan's latency
(p50, p95).

    python scripts/ten_plans.py --via database-worker --worker-processes 10

does the same through the double's multi-user worker (``worker_plan_database``, the flag on,
on a throwaway PostgreSQL): ``--worker-processes`` long-running workers start and connect
first, then ``--plans`` requests go into the table at once. The makespan runs from that
insert to the last request's completion, so the processes' start-up is paid at boot, as a
deployed worker pays it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from planexe_concurrency.simllm import SimServer, SimServerConfig  # noqa: E402
from planexe_concurrency.simllm.server import max_requests_in_window, most_at_once  # noqa: E402
from pipeline_patches.bench import PLAN, SIM_MODEL, START_TIME  # noqa: E402
from pipeline_patches.compare import WORKER_EXTRAS, differing_files  # noqa: E402
from pipeline_patches.rundir import state_dir_for  # noqa: E402
from planexe_concurrency.timing import read_task_spans  # noqa: E402
from pipeline_patches.planexe_double import DOUBLE_ROOT  # noqa: E402

TERMINAL = ("completed", "failed", "stopped")


def _start(out: Path, name: str, server: SimServer, cfg: Path, speed: str, workers: int, sequential: bool = False) -> tuple[subprocess.Popen[bytes], Path]:
    run_dir = out / name
    run_dir.mkdir(parents=True)
    (run_dir / "001-1-start_time.json").write_text(START_TIME, encoding="utf-8")
    (run_dir / "001-2-plan.txt").write_text(PLAN, encoding="utf-8")
    env = {**os.environ, "PLANEXE_SIMLLM_URL": server.url, "LUIGI_CONFIG_PATH": str(cfg), "PLANEXE_CONCURRENCY_TARGET": "double"}
    cmd = [sys.executable, "-m", "pipeline_patches.cli", "--log-level", "WARNING", "run", "--run-dir", str(run_dir),
           "--llm", SIM_MODEL, "--speed", speed, "--workers", str(workers)]
    if sequential:
        cmd.append("--sequential")
    log = (out / f"{name}.log").open("wb")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), run_dir


def _round(label: str, out: Path, server: SimServer, settings: dict[str, Any], args: argparse.Namespace, reference: Path) -> str:
    cfg = out / f"{label}.cfg"
    cfg.write_text("[planexe_concurrency]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()), encoding="utf-8")
    first = len(server.log)
    t0 = time.time()
    started = [(_start(out, f"{label}-{i + 1}", server, cfg, args.speed, args.workers), time.time()) for i in range(args.plans)]
    latencies, failed, differing = [], 0, 0
    for (proc, run_dir), at in started:
        code = proc.wait()
        latencies.append(time.time() - at)
        failed += code != 0
        differing += code == 0 and bool(differing_files(reference, run_dir, lenient=True))
    return _row(label, args, server, first, t0, time.time(), latencies, failed, differing, [run_dir for (_, run_dir), _at in started])


def _row(label: str, args: argparse.Namespace, server: SimServer, first: int, t0: float, t1: float,
         latencies: list[float], failed: int, differing: int, run_dirs: list[Path]) -> str:
    makespan = t1 - t0
    # Start-up: from the launch to the first task of any plan (each `run` process imports llama-index
    # and PlanExe and builds its clients, ~5 CPU-seconds; ten at once on a small machine take a while).
    # A long-running worker (worker_plan_database) pays it once when it starts, not per plan.
    task_starts = [s.start for run_dir in run_dirs for s in read_task_spans(state_dir_for(run_dir) / "tasks.jsonl")]
    first_task = min(task_starts, default=t0)
    working = t1 - first_task
    records = [r for r in server.log[first:] if r.status == 200]
    busy = sum(r.end - r.start for r in records)  # what the server spent serving (queue waits excluded)
    bound = busy / args.slots
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    return (
        f"| {label} | {args.plans - failed}/{args.plans} | {args.plans - failed - differing}/{args.plans} | "
        f"{most_at_once((r.arrival, r.end) for r in server.log[first:])} | {max_requests_in_window(server.log[first:], 60.0)} | {len(records)} | "
        f"{makespan:.1f} | {first_task - t0:.1f} | {working:.1f} | {bound:.1f} | {makespan / bound:.2f}x | {working / bound:.2f}x | "
        f"{statistics.median(latencies):.1f} | {p95:.1f} |"
    )


class DatabaseWorkers:
    """The double's ``worker_plan_database`` processes on one PostgreSQL database, and its table."""

    def __init__(self, out: Path, url: str, server: SimServer) -> None:
        import sqlalchemy

        self.out, self.url, self.server = out, url, server
        env = self._env()
        # The schema first, in one process: ten workers creating it at once would race in PostgreSQL.
        subprocess.run([sys.executable, "-c", "from worker_plan_database.app import create_schema; create_schema()"],
                       env=env, check=True, capture_output=True, timeout=120)
        self.engine = sqlalchemy.create_engine(url)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANEXE_", "LUIGI_"))}
        env.update(PYTHONPATH=str(DOUBLE_ROOT), PLANEXE_DOUBLE_DATABASE_URL=self.url, PLANEXE_DOUBLE_START_TIME_JSON=START_TIME,
                   PLANEXE_SIMLLM_URL=self.server.url, LLM_MODEL=SIM_MODEL)
        return env

    def start(self, label: str, count: int, cfg: Path, workers: int | None) -> list[subprocess.Popen[bytes]]:
        """``count`` workers (the flag on with ``workers`` Luigi workers, or off), once each has connected."""
        procs = []
        for i in range(count):
            env = {**self._env(), "LUIGI_CONFIG_PATH": str(cfg),
                   "PLANEXE_RUN_DIR": str(self.out / label), "PLANEXE_WORKER_ID": f"{label}-{i + 1}"}
            if workers is not None:
                env.update(PLANEXE_CONCURRENCY="1", PLANEXE_WORKERS=str(workers))
            log = (self.out / f"{label}-worker-{i + 1}.log").open("wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "worker_plan_database.app"], env=env, stdout=log, stderr=subprocess.STDOUT))
        # A worker connects once it has imported everything and is polling for requests.
        deadline = time.time() + 600
        while self._connected() < count:
            if any(p.poll() is not None for p in procs) or time.time() > deadline:
                self.stop(procs)
                raise RuntimeError(f"ten_plans: a {label} worker did not start; see {self.out}/{label}-worker-*.log")
            time.sleep(0.2)
        return procs

    def _connected(self) -> int:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                     " AND pid <> pg_backend_pid()")).scalar_one()

    def add(self, count: int, label: str) -> list[str]:
        from sqlalchemy import text

        ids = [f"{label}-{i + 1}" for i in range(count)]
        with self.engine.begin() as conn:
            for request_id in ids:
                conn.execute(text("INSERT INTO plan_request (id, prompt, fast) VALUES (:i, :p, :f)"),
                             {"i": request_id, "p": PLAN, "f": True})
        return ids

    def wait(self, ids: list[str], timeout: float = 3600) -> dict[str, tuple[str, float]]:
        """Each request's end state and when it was seen (polled every 0.1 s).

        Meanwhile it keeps each request's ``last_seen`` fresh, as the user's open browser does
        (the worker stops a plan whose browser has not been seen for 80 s)."""
        from sqlalchemy import text

        ended: dict[str, tuple[str, float]] = {}
        deadline = time.time() + timeout
        seen = 0.0
        while len(ended) < len(ids) and time.time() < deadline:
            if time.time() - seen > 5:
                with self.engine.begin() as conn:
                    conn.execute(text("UPDATE plan_request SET last_seen = now() WHERE id = ANY(:ids)"), {"ids": ids})
                seen = time.time()
            with self.engine.connect() as conn:
                for row in conn.execute(text("SELECT id, state FROM plan_request WHERE id = ANY(:ids)"), {"ids": ids}):
                    if row.state in TERMINAL and row.id not in ended:
                        ended[row.id] = (row.state, time.time())
            time.sleep(0.1)
        return ended

    @staticmethod
    def stop(procs: list[subprocess.Popen[bytes]]) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            proc.wait(60)


def _database_reference(db: DatabaseWorkers, out: Path) -> Path:
    cfg = out / "reference.cfg"
    cfg.write_text("[planexe_concurrency]\n", encoding="utf-8")
    procs = db.start("reference", 1, cfg, workers=None)
    try:
        (request_id,) = db.add(1, "reference")
        state, _at = db.wait([request_id])[request_id]
    finally:
        db.stop(procs)
    if state != "completed":
        raise RuntimeError(f"ten_plans: the reference request ended {state}; see {out}/reference-worker-1.log")
    return out / "reference" / request_id


def _database_round(label: str, out: Path, db: DatabaseWorkers, settings: dict[str, Any], args: argparse.Namespace, reference: Path) -> str:
    cfg = out / f"{label}.cfg"
    cfg.write_text("[planexe_concurrency]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()), encoding="utf-8")
    procs = db.start(label, args.worker_processes, cfg, workers=args.workers)
    try:
        first = len(db.server.log)
        t0 = time.time()
        ids = db.add(args.plans, label)
        ended = db.wait(ids)
        t1 = max((at for _state, at in ended.values()), default=time.time())
    finally:
        db.stop(procs)
    run_dirs = [out / label / request_id for request_id in ids]
    failed = sum(ended.get(i, ("lost", 0.0))[0] != "completed" for i in ids)
    differing = sum(
        ended.get(i, ("lost", 0.0))[0] == "completed"
        and bool(set(differing_files(reference, run_dir, lenient=True)) - WORKER_EXTRAS)
        for i, run_dir in zip(ids, run_dirs)
    )
    latencies = [ended[i][1] - t0 for i in ids if i in ended]
    return _row(label, args, db.server, first, t0, t1, latencies, failed, differing, run_dirs)


def _through_database_workers(out: Path, server: SimServer, shared: dict[str, Any],
                              rounds: tuple[tuple[str, dict[str, str]], ...], args: argparse.Namespace) -> list[str]:
    from pipeline_patches.postgres import running_postgres
    from pipeline_patches.startup import install_hook, remove_hook

    _path, installed = install_hook()  # the flag engages through the start-up hook, as in a user's install
    try:
        with running_postgres() as pg:
            db = DatabaseWorkers(out, pg.create_database(), server)
            print("ten_plans: the reference (one request, the flag off) ...", flush=True)
            reference = _database_reference(db, out)
            rows = []
            for label, extra in rounds:
                print(f"ten_plans: {args.plans} requests to {args.worker_processes} workers, {label} ...", flush=True)
                rows.append(_database_round(label.replace(" ", "-"), out, db, {**shared, **extra}, args, reference))
            db.engine.dispose()
            return rows
    finally:
        if installed:
            remove_hook()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plans", type=int, default=10)
    p.add_argument("--slots", type=int, default=2, help="K: the provider serves K at once and queues the rest; max_in_flight = K")
    p.add_argument("--rpm", type=float, default=600.0, help="the key's request budget (requests_per_minute, shared)")
    p.add_argument("--latency", type=float, default=0.3)
    p.add_argument("--workers", type=int, default=2, help="Luigi workers per plan")
    p.add_argument("--speed", choices=("all_details", "fast"), default="fast")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--via", choices=("run", "database-worker"), default="run",
                   help="ten `planexe-concurrency run`s, or requests to the double's worker_plan_database on a throwaway PostgreSQL")
    p.add_argument("--worker-processes", type=int, default=None, help="database-worker: how many workers (default: --plans)")
    args = p.parse_args(argv)
    if args.worker_processes is None:
        args.worker_processes = args.plans
    if args.via == "database-worker" and args.speed != "fast":
        p.error("--via database-worker runs the worker's fast plans only (--speed fast)")
    if min(args.plans, args.slots, args.workers, args.worker_processes) < 1 or args.rpm <= 0:
        p.error("--plans, --slots, --workers and --worker-processes must be >= 1 and --rpm > 0")
    out = args.out or Path(tempfile.mkdtemp(prefix="ten-plans-"))
    out.mkdir(parents=True, exist_ok=True)
    shared = {"max_in_flight": args.slots, "in_flight_file": out / "key.in_flight", "requests_per_minute": args.rpm,
              "rate_limit_file": out / "key.rate_limit", "max_parallel": 4}
    rounds = (("critical path first", {}), ("FIFO", {"critical_path_first": "false"}))
    rows = []
    with SimServer(SimServerConfig(latency=args.latency, slots=args.slots)) as server:
        if args.via == "database-worker":
            rows = _through_database_workers(out, server, shared, rounds, args)
        else:
            print("ten_plans: the reference (one sequential plan) ...", flush=True)
            (out / "reference.cfg").write_text("[planexe_concurrency]\n", encoding="utf-8")
            proc, reference = _start(out, "reference", server, out / "reference.cfg", args.speed, 1, sequential=True)
            if proc.wait() != 0:
                print(f"ten_plans: the reference run failed; see {out / 'reference.log'}", file=sys.stderr)
                return 1
            for label, extra in rounds:
                print(f"ten_plans: {args.plans} plans, {label} ...", flush=True)
                rows.append(_round(label.replace(" ", "-"), out, server, {**shared, **extra}, args, reference))
    command = "python scripts/ten_plans.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.via == "database-worker":
        how = (f"{args.plans} requests at once to {args.worker_processes} database workers (the flag on, {args.workers} "
               f"Luigi workers each; started and connected before the requests went in)")
        launch = "the requests' insert"
        reference = "one request to one worker with the flag off, apart from the worker's own extras"
    else:
        how = f"{args.plans} plans at once, {args.workers} workers each"
        launch = "launching the plans"
        reference = "one sequential run's"
    print(
        f"\nMeasured with `{command}` ({how}, {args.speed}, "
        f"provider: {args.slots} at a time, the rest queued, {args.latency} s a call; max_in_flight = {args.slots} and "
        f"requests_per_minute = {args.rpm:g} shared by every run).\n\n"
        "| round | completed | reference files | held at once (server) | most in 60 s (server) | calls | makespan (s) | "
        "start-up (s) | after start-up (s) | bound (s) | makespan vs bound | after start-up vs bound | plan latency p50 (s) | p95 (s) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        + "\n".join(rows)
        + "\n\nBound: the time the server spent serving the round's calls / K (what K slots cannot beat). "
        f"Makespan: from {launch} to the last plan's end. Start-up: from then to the first task of any plan (imports and "
        "clients, paid once by a long-running worker); after start-up: from then to the last plan's end. Latency: from "
        f"{launch}. Reference files: equal to {reference}, leniently (a queued call records a longer duration)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
