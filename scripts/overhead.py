#!/usr/bin/env python3
"""Where a task's time goes besides its LLM calls, under 1 and N Luigi workers.

    python scripts/overhead.py --latency 0.1 --speed fast --workers 4 --repeat 2
    python scripts/overhead.py --planexe /work/planexe_src --python /work/venv_planexe/bin/python

Runs the pipeline (the built-in double unless --planexe) against the simulated server: once
PlanExe's way (sequential), then the concurrent tasks with --max-parallel 1 (loops in order,
so the only difference is the worker count) under 1 and under N workers. Per run it prints:

* wall: the run's wall time;
* LLM busy: time with at least one call in flight at the server;
* in-task/task: mean time inside a task's span (Luigi's START to SUCCESS, in the process
  running it) outside its calls: LLM client set-up, parsing, file writes;
* gap/task: mean time from a task's last dependency finishing to its START: Luigi's
  scheduling, forking the task's process, the child's dependency check;
* outside/run: wall minus the union of task spans: Luigi's graph build and complete()
  checks before the first task, and the wind-down after the last.

``--luigi-config FILE`` runs with that file as LUIGI_CONFIG_PATH (e.g. to try ``[worker]``
settings); see docs/overhead.md for what was measured.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline_patches.bench import _environment, _records_between, run_pipeline  # noqa: E402
from pipeline_patches.rundir import state_dir_for  # noqa: E402
from planexe_concurrency.simllm import SimServer, SimServerConfig  # noqa: E402
from planexe_concurrency.timing import read_task_spans  # noqa: E402


def _union(intervals: list[tuple[float, float]]) -> float:
    total, cursor = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        lo = max(lo, cursor)
        if hi > lo:
            total += hi - lo
            cursor = hi
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", default="0.1")
    p.add_argument("--speed", choices=("all_details", "fast"), default="fast")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("overhead-out"))
    p.add_argument("--planexe", type=Path)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--luigi-config", type=Path, help="LUIGI_CONFIG_PATH for every run")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [
        "| run | workers | wall (s) | LLM busy (s) | tasks | in-task/task (s) | gap/task (s) | outside/run (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with SimServer(SimServerConfig(latency=args.latency)) as server:
        env = _environment(args, server)
        if args.luigi_config:
            env["LUIGI_CONFIG_PATH"] = str(args.luigi_config.resolve())
        common = dict(speed=args.speed, server=server, python=args.python, env=env, max_parallel=1)
        for rep in range(args.repeat):
            for label, sequential, workers in (("sequential", True, 1), ("concurrent", False, 1), ("concurrent", False, args.workers)):
                name = f"{label}-w{workers}-{rep + 1}"
                print(f"overhead: {name} ...", file=sys.stderr, flush=True)
                r = run_pipeline(name, args.out / name, sequential=sequential, workers=workers, **common)
                spans = read_task_spans(state_dir_for(r.run_dir) / "tasks.jsonl")
                t0, t1 = min(s.start for s in spans), max(s.end for s in spans)
                busy = _union([(x.start, x.end) for x in _records_between(server.log, t0 - 1, t1 + 1)])
                outside = r.wall - _union([(s.start, s.end) for s in spans])
                rows.append(
                    f"| {name} | {workers} | {r.wall:.2f} | {busy:.2f} | {len(spans)} | {r.overhead_per_task:.3f} | "
                    f"{r.gap_per_task:.3f} | {outside:.2f} |"
                )
    command = "python scripts/overhead.py " + " ".join(sys.argv[1:])
    report = f"Measured with `{command}` (latency {args.latency} s per call, {args.speed}).\n\n" + "\n".join(rows) + "\n"
    print(report)
    (args.out / "overhead.md").write_text(report, encoding="utf-8")
    (args.out / "overhead.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
