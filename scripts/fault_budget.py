#!/usr/bin/env python3
"""Do the retry defaults survive a bad hour? Whole plans against a provider that fails a share of requests.

    python scripts/fault_budget.py --plans 10 --fault-rate 0.15

Runs ``--plans`` whole plans of the built-in double (``planexe-concurrency run``, 4 workers)
against the simulated provider with ``--fault-rate`` of its requests failing at random
(429 with Retry-After, 500, 504 after a stall, dropped connections, JSON cut in half),
with the default number of attempts (``retry_attempts``) and short backoffs (the count of
attempts, not the wait, decides whether a call is given up). It prints, measured in this one
invocation: how many plans completed with the reference files, how many attempts each call
needed, the failure rate per attempt the server saw, and what that rate predicts for a plan:
P(plan fails) = 1 - (1 - p**attempts)**calls.
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from planexe_concurrency.config import RetryPolicy  # noqa: E402
from planexe_concurrency.simllm import SimServer  # noqa: E402
from pipeline_patches.bench import PLAN, START_TIME  # noqa: E402
from pipeline_patches.compare import differing_files  # noqa: E402


def _plan(out: Path, name: str, server: SimServer, cfg: Path, speed: str) -> tuple[bool, float, Path]:
    run_dir = out / name
    run_dir.mkdir(parents=True)
    (run_dir / "001-1-start_time.json").write_text(START_TIME, encoding="utf-8")
    (run_dir / "001-2-plan.txt").write_text(PLAN, encoding="utf-8")
    env = {**os.environ, "PLANEXE_SIMLLM_URL": server.url, "LUIGI_CONFIG_PATH": str(cfg), "PLANEXE_CONCURRENCY_TARGET": "double"}
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline_patches.cli", "run", "--run-dir", str(run_dir), "--llm", "simulated-http",
         "--speed", speed, "--workers", "4"],
        env=env, capture_output=True, text=True,
    )
    return proc.returncode == 0, time.time() - started, run_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plans", type=int, default=10)
    p.add_argument("--fault-rate", type=float, default=0.15)
    p.add_argument("--attempts", type=int, default=RetryPolicy().attempts, help="retry_attempts (default: the package's)")
    p.add_argument("--speed", choices=("all_details", "fast"), default="all_details")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="fault-budget-"))
    cfg = out / "luigi.cfg"
    out.mkdir(parents=True, exist_ok=True)
    cfg.write_text(
        "[planexe_concurrency]\n"
        f"retry_attempts = {args.attempts}\nretry_backoff_base = 0.05\nretry_backoff_max = 0.5\nretry_jitter = 0.05\n"
    )
    with SimServer(latency=0.02, seed=1).start() as clean:
        ok, _, reference = _plan(out, "reference", clean, cfg, args.speed)
        if not ok:
            print("the reference run (no faults) failed", file=sys.stderr)
            return 1
    rows = []
    tries: collections.Counter[int] = collections.Counter()
    requests = failed_requests = calls = 0
    for i in range(args.plans):
        with SimServer(latency=0.02, fault_rate=args.fault_rate, timeout_seconds=0.3, fault_retry_after=1, seed=100 + i).start() as server:
            ok, wall, run_dir = _plan(out, f"plan-{i + 1}", server, cfg, args.speed)
            per_call = collections.Counter(r.key for r in server.log)
        same = ok and differing_files(reference, run_dir, lenient=True) == []
        log = server.log
        requests += len(log)
        failed_requests += sum(1 for r in log if r.fault or r.status != 200)
        calls += len(per_call)
        tries.update(per_call.values())
        rows.append((i + 1, ok, same, wall, len(per_call), sum(1 for r in log if r.fault or r.status != 200), max(per_call.values())))
    p_hat = failed_requests / requests if requests else 0.0
    per_plan_calls = calls / max(1, args.plans)
    predicted = 1 - (1 - p_hat ** args.attempts) ** per_plan_calls
    print(f"Measured with `python scripts/fault_budget.py --plans {args.plans} --fault-rate {args.fault_rate} "
          f"--attempts {args.attempts} --speed {args.speed}`.\n")
    print("| plan | completed | same files | wall (s) | calls | failed requests | most tries of one call |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for n, ok, same, wall, n_calls, failed, most in rows:
        print(f"| {n} | {'yes' if ok else 'NO'} | {'yes' if same else 'NO'} | {wall:.1f} | {n_calls} | {failed} | {most} |")
    completed = sum(1 for r in rows if r[1])
    print(f"\n{completed}/{args.plans} plans completed, {sum(1 for r in rows if r[2])} with the reference files.")
    print("tries per call: " + ", ".join(f"{k}: {v}" for k, v in sorted(tries.items())))
    print(f"failure rate per request the server saw: {p_hat:.3f}; {per_plan_calls:.0f} calls per plan; "
          f"predicted P(plan fails) with {args.attempts} attempts = 1 - (1 - {p_hat:.3f}^{args.attempts})^{per_plan_calls:.0f} "
          f"= {predicted:.4f} (1 in {1 / predicted:.0f})" if predicted > 0 else "predicted P(plan fails) = 0")
    return 0 if completed == args.plans else 1


if __name__ == "__main__":
    sys.exit(main())
