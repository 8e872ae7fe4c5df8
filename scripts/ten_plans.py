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
from pipeline_patches.compare import differing_files  # noqa: E402
from pipeline_patches.rundir import state_dir_for  # noqa: E402
from planexe_concurrency.timing import read_task_spans  # noqa: E402


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
    t1 = time.time()
    makespan = t1 - t0
    # Start-up: from the launch to the first task of any plan (each process imports llama-index and
    # PlanExe and builds its clients, ~5 CPU-seconds; ten at once on a small machine take a while).
    # A long-running worker (worker_plan_database) pays it once when it starts, not per plan.
    task_starts = [s.start for (_, run_dir), _at in started for s in read_task_spans(state_dir_for(run_dir) / "tasks.jsonl")]
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plans", type=int, default=10)
    p.add_argument("--slots", type=int, default=2, help="K: the provider serves K at once and queues the rest; max_in_flight = K")
    p.add_argument("--rpm", type=float, default=600.0, help="the key's request budget (requests_per_minute, shared)")
    p.add_argument("--latency", type=float, default=0.3)
    p.add_argument("--workers", type=int, default=2, help="Luigi workers per plan")
    p.add_argument("--speed", choices=("all_details", "fast"), default="fast")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if min(args.plans, args.slots, args.workers) < 1 or args.rpm <= 0:
        p.error("--plans, --slots and --workers must be >= 1 and --rpm > 0")
    out = args.out or Path(tempfile.mkdtemp(prefix="ten-plans-"))
    out.mkdir(parents=True, exist_ok=True)
    shared = {"max_in_flight": args.slots, "in_flight_file": out / "key.in_flight", "requests_per_minute": args.rpm,
              "rate_limit_file": out / "key.rate_limit", "max_parallel": 4}
    rows = []
    with SimServer(SimServerConfig(latency=args.latency, slots=args.slots)) as server:
        print("ten_plans: the reference (one sequential plan) ...", flush=True)
        (out / "reference.cfg").write_text("[planexe_concurrency]\n", encoding="utf-8")
        proc, reference = _start(out, "reference", server, out / "reference.cfg", args.speed, 1, sequential=True)
        if proc.wait() != 0:
            print(f"ten_plans: the reference run failed; see {out / 'reference.log'}", file=sys.stderr)
            return 1
        for label, extra in (("critical path first", {}), ("FIFO", {"critical_path_first": "false"})):
            print(f"ten_plans: {args.plans} plans, {label} ...", flush=True)
            rows.append(_round(label.replace(" ", "-"), out, server, {**shared, **extra}, args, reference))
    command = "python scripts/ten_plans.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(
        f"\nMeasured with `{command}` ({args.plans} plans at once, {args.speed}, {args.workers} workers each, "
        f"provider: {args.slots} at a time, the rest queued, {args.latency} s a call; max_in_flight = {args.slots} and "
        f"requests_per_minute = {args.rpm:g} shared by every run).\n\n"
        "| round | completed | reference files | held at once (server) | most in 60 s (server) | calls | makespan (s) | "
        "start-up (s) | after start-up (s) | bound (s) | makespan vs bound | after start-up vs bound | plan latency p50 (s) | p95 (s) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        + "\n".join(rows)
        + "\n\nBound: the time the server spent serving the round's calls / K (what K slots cannot beat). "
        "Start-up: from launching the plans to the first task of any of them (imports and clients, paid once by a "
        "long-running worker); after start-up: from then to the last plan's end. Latency: from each plan's launch. "
        "Reference files: equal to one sequential run's, leniently (a queued call records a longer duration)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
