"""Before/after benchmark: PlanExe's way against the concurrent pipeline, in one invocation.

    planexe-concurrency bench --latency 0.3 --workers 4 --max-parallel 32
    planexe-concurrency bench --sweep-workers 1,2,4 --sweep-max-parallel 1,4,16,32
    planexe-concurrency bench --planexe /path/to/PlanExe --python /path/to/planexe/venv/bin/python

Every run talks to one simulated OpenAI-compatible server on 127.0.0.1 (its request log
gives the call count and the peak of requests in flight, measured from the server's side),
runs in a fresh process (``planexe-concurrency run``), and starts from the same start-time
and plan files, so every run asks the same questions. Runs alternate (sequential,
concurrent, concurrent, sequential, ...) so that a noisy neighbour hurts both alike.

The table reports each run against the critical-path bounds computed from the first
sequential run: the graph bound (unlimited workers, loops still sequential) and the full
bound (unlimited workers and every fan-out loop fully overlapped). Per-task overhead is
the mean time a task spends inside its own span (Luigi's START to SUCCESS event, in the
process that runs it) but outside its LLM calls as the server logged them; the scheduling
gap is the mean time from a task's last dependency finishing to the task starting (Luigi
picking it, forking its process, the child checking dependencies). See docs/overhead.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from planexe_concurrency.events import read_events
from planexe_concurrency.plots import gantt_html, gantt_png, item_spans, sweep_png
from planexe_concurrency.simllm import SimServer, SimServerConfig
from planexe_concurrency.simllm.server import RequestRecord, most_at_once
from planexe_concurrency.timing import TaskCalls, bounds, calls_per_task, critical_path_at_width, read_task_spans, scheduling_gaps

from .cli import SPEED_NAMES
from .compare import differing_files
from .rundir import state_dir_for

REPO_ROOT = Path(__file__).resolve().parent.parent

# Fan-out tasks and how many of their calls come first, in order, before the loop.
FANOUT_SEQUENTIAL_PREFIX = {
    "ConsolidateAssumptionsMarkdownTask": 0,
    "DraftDocumentsToFindTask": 0,
    "DraftDocumentsToCreateTask": 0,
    "ExpertReviewTask": 2,
    "EstimateTaskDurationsTask": 0,
    "CreateWBSLevel3Task": 0,
    "PremiseAttackTask": 0,
}
# Tasks whose calls fidelity = relaxed asks side by side (pipeline_patches/relaxed.py).
RELAXED_TASKS = ("ReviewPlanTask", "SelfAuditTask", "PremortemTask", "QuestionsAndAnswersTask")

START_TIME = '{\n  "server_iso_utc": "2026-01-05T09:30:00Z",\n  "server_iso_local": "2026-01-05T10:30:00+01:00",\n  "server_timezone_name": "CET"\n}'
PLAN = (
    "Plan:\nOpen a community tool library in a small town within six months, run by volunteers "
    "and financed by a municipal grant.\n\nToday's date:\n2026-Jan-05\n\nProject start ASAP"
)
SIM_MODEL = "simulated-http"


@dataclass
class RunResult:
    label: str
    sequential: bool
    workers: int
    max_parallel: int
    ok: bool
    wall: float
    calls: int
    peak_in_flight: int
    overhead_per_task: float
    run_dir: str
    gap_per_task: float = 0.0
    graph: dict[str, list[str]] = field(default_factory=dict, repr=False)
    fidelity: str = "exact"
    warm_up: float = 0.0
    entry: str = "run"  # or "luigi --module"


def _records_between(records: Sequence[RequestRecord], t0: float, t1: float) -> list[RequestRecord]:
    return [r for r in records if t0 <= r.arrival <= t1 and r.status == 200]


def _overhead_per_task(run_dir: Path, records: Sequence[RequestRecord]) -> float:
    """Mean seconds per task outside LLM calls (the union of call intervals inside the task's span)."""
    spans = read_task_spans(state_dir_for(run_dir) / "tasks.jsonl")
    if not spans:
        return 0.0
    total = 0.0
    for s in spans:
        busy, cursor = 0.0, s.start
        for r in sorted((r for r in records if s.start <= r.start and r.end <= s.end), key=lambda r: r.start):
            lo = max(cursor, r.start)
            if r.end > lo:
                busy += r.end - lo
                cursor = r.end
        total += s.duration - busy
    return total / len(spans)


def _gap_per_task(run_dir: Path, graph: dict[str, list[str]]) -> float:
    """Mean seconds from a task's last dependency finishing to the task starting."""
    gaps = scheduling_gaps(read_task_spans(state_dir_for(run_dir) / "tasks.jsonl"), graph)
    return sum(gaps.values()) / len(gaps) if gaps else 0.0


def fresh_run_dir(run_dir: Path) -> None:
    """An empty run directory with the bench's start time and plan (every run gets the same)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "001-1-start_time.json").write_text(START_TIME, encoding="utf-8")
    (run_dir / "001-2-plan.txt").write_text(PLAN, encoding="utf-8")


def run_pipeline(
    label: str,
    run_dir: Path,
    *,
    sequential: bool,
    workers: int,
    max_parallel: int,
    speed: str,
    server: SimServer,
    python: str,
    env: dict[str, str],
    extra: Sequence[str] = (),
    fidelity: str = "exact",
    settings: dict[str, Any] | None = None,
) -> RunResult:
    if settings:
        # [planexe_concurrency] values for this run only, through Luigi's own config file
        cfg = run_dir.parent / f"{run_dir.name}.cfg"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text("[planexe_concurrency]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()), encoding="utf-8")
        env = {**env, "LUIGI_CONFIG_PATH": str(cfg)}
    fresh_run_dir(run_dir)
    summary_path = run_dir.parent / f"{run_dir.name}.summary.json"
    cmd = [
        python, "-m", "pipeline_patches.cli", "--log-level", "WARNING", "run",
        "--run-dir", str(run_dir), "--llm", SIM_MODEL, "--speed", speed,
        "--workers", str(workers), "--max-parallel", str(max_parallel), "--summary-json", str(summary_path),
        *extra,
    ]
    if fidelity != "exact":
        cmd += ["--fidelity", fidelity]
    if sequential:
        cmd.append("--sequential")
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    t1 = time.time()
    if proc.returncode != 0 or not summary_path.exists():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"{label}: the run failed (exit {proc.returncode}); output above")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    records = _records_between(server.log, t0, t1)
    return RunResult(
        label=label,
        sequential=sequential,
        workers=workers,
        max_parallel=max_parallel,
        ok=bool(summary["ok"]),
        wall=float(summary["wall"]),
        calls=len(records),
        peak_in_flight=most_at_once((r.arrival, r.end) for r in records),  # queued or refused ones too: what the client sent
        overhead_per_task=_overhead_per_task(run_dir, records),
        run_dir=str(run_dir),
        graph=summary["graph"],
        fidelity=fidelity,
        gap_per_task=_gap_per_task(run_dir, summary["graph"]),
        warm_up=float(summary.get("warm_up", 0.0)),
    )


def run_luigi_module(
    label: str, run_dir: Path, *, workers: int, max_parallel: int, speed: str, server: SimServer, python: str,
    env: dict[str, str], graph: dict[str, list[str]],
) -> RunResult:
    """One concurrent run through Luigi's own command line (``luigi --module pipeline_patches.pipeline``).

    It writes no summary: its wall is its task span (first task start to last task end), and so
    is the span :func:`entry_point_table` compares it with.
    """
    fresh_run_dir(run_dir)
    state = state_dir_for(run_dir)
    cmd = [
        python, "-m", "luigi", "--module", "pipeline_patches.pipeline", "ConcurrentFullPlanPipeline",
        "--run-id-dir", str(run_dir.resolve()), "--llm-models", json.dumps([SIM_MODEL]),
        "--speedvsdetail", SPEED_NAMES[speed],
        "--workers", str(workers), "--local-scheduler", "--log-level", "WARNING",
        "--planexe-concurrency-max-parallel", str(max_parallel),
        "--planexe-concurrency-task-events-file", str(state / "tasks.jsonl"),
        "--planexe-concurrency-events-file", str(state / "events.jsonl"),
    ]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    t1 = time.time()
    start, end = _span_of_dir(run_dir)
    if proc.returncode != 0 or end == float("inf"):
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"{label}: the run failed (exit {proc.returncode}); output above")
    records = _records_between(server.log, t0, t1)
    return RunResult(
        label=label, sequential=False, workers=workers, max_parallel=max_parallel, ok=True, wall=end - start,
        calls=len(records), peak_in_flight=most_at_once((r.arrival, r.end) for r in records),
        overhead_per_task=_overhead_per_task(run_dir, records), run_dir=str(run_dir), graph=graph,
        gap_per_task=_gap_per_task(run_dir, graph), warm_up=0.0, entry="luigi --module",
    )


def entry_point_table(results: Sequence[RunResult], reference: RunResult, identical: dict[str, bool]) -> str:
    """``run`` against ``luigi --module``, each by its task span (the one measure both have)."""
    seq_span = _task_span(reference)
    run_rows = [r for r in results if not r.sequential and r.fidelity == "exact" and r.entry == "run"]
    luigi_rows = [r for r in results if r.entry != "run"]
    best_run = max((seq_span / _task_span(r) for r in run_rows), default=0.0)
    rows = [
        "| run | entry point | task span (s) | speed-up | vs the run path's best | same files |",
        "|---|---|---:|---:|---:|---|",
        f"| {reference.label} | run --sequential | {seq_span:.1f} | 1.00x | | reference |",
    ]
    for r in [*run_rows, *luigi_rows]:
        speedup = seq_span / _task_span(r)
        rows.append(
            f"| {r.label} | {r.entry} | {_task_span(r):.1f} | {speedup:.2f}x | {best_run / speedup:.2f}x | "
            f"{'yes' if identical.get(r.label) else 'NO'} |"
        )
    rows.append("")
    rows.append(
        "Task span: the first task's start to the last task's end, from each run's tasks.jsonl (`luigi --module` "
        "prints no summary). Vs the run path's best: the best `run` speed-up over this row's (1.00x = as fast)."
    )
    return "\n".join(rows)


def _task_span(run: RunResult) -> float:
    start, end = _span_of(run)
    return end - start


def task_calls(sequential: RunResult, server_log: Sequence[RequestRecord], relaxed: RunResult | None = None) -> dict[str, TaskCalls]:
    """Each task's time in the sequential run and the latencies of its calls that could overlap."""
    run_dir = Path(sequential.run_dir)
    spans = read_task_spans(state_dir_for(run_dir) / "tasks.jsonl")
    t0, t1 = min(s.start for s in spans), max(s.end for s in spans)
    calls = calls_per_task(spans, [(r.start, r.end) for r in _records_between(server_log, t0 - 1, t1 + 1)])
    overlapping = dict(FANOUT_SEQUENTIAL_PREFIX)
    if relaxed is not None:
        overlapping.update({task: 0 for task in RELAXED_TASKS})
    tasks: dict[str, TaskCalls] = {}
    for s in spans:
        latencies = calls.get(s.task, [])
        prefix = overlapping.get(s.task)
        tasks[s.task] = TaskCalls(s.duration, latencies[prefix:] if prefix is not None else [])
    return tasks


def compute_bounds(sequential: RunResult, server_log: Sequence[RequestRecord], relaxed: RunResult | None = None) -> Any:
    """Bounds from the sequential run's task and call times; with ``relaxed``, its graph and its loops too."""
    return bounds(task_calls(sequential, server_log, relaxed), (relaxed or sequential).graph)


def format_table(
    results: Sequence[RunResult], reference: RunResult, b: Any, identical: dict[str, bool], relaxed_bounds: Any = None
) -> str:
    rows = [
        "| run | workers | max_parallel | wall (s) | warm-up (s) | speed-up | LLM calls | peak in flight | overhead/task (s) | sched. gap/task (s) | vs its full bound | same files |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        own = relaxed_bounds if r.fidelity == "relaxed" and relaxed_bounds is not None else b
        same = "reference" if r is reference else ("n/a (relaxed)" if r.fidelity == "relaxed" else ("yes" if identical.get(r.label) else "NO"))
        rows.append(
            f"| {r.label} | {r.workers} | {'-' if r.sequential else r.max_parallel} | {r.wall:.1f} | {r.warm_up:.1f} | "
            f"{reference.wall / r.wall:.2f}x | {r.calls} | {r.peak_in_flight} | {r.overhead_per_task:.2f} | "
            f"{r.gap_per_task:.3f} | {r.wall / own.full:.2f}x | {same} |"
        )
    rows.append("")
    rows.append(
        f"Critical-path bounds (from the first sequential run): graph only {b.graph:.1f} s "
        f"(best speed-up {reference.wall / b.graph:.2f}x), graph + fully parallel loops {b.full:.1f} s "
        f"(best speed-up {reference.wall / b.full:.2f}x)."
    )
    if relaxed_bounds is not None:
        rows.append(
            f"Relaxed rows are measured against their own bound: the relaxed graph (governance 4-6 side by side) "
            f"with the relaxed loops fully parallel too, {relaxed_bounds.full:.1f} s "
            f"(best speed-up {reference.wall / relaxed_bounds.full:.2f}x)."
        )
    rows.append(
        "Wall: Luigi's build (scheduling and every task). Warm-up: before it, in the "
        "same process (imports, and the LLM clients every forked task inherits: one per call a task may have "
        "in flight). Overhead/task: the mean time a task spends outside its LLM calls (Luigi scheduling, "
        "process start, reading and writing files)."
    )
    return "\n".join(rows)


def speculation_table(run_dir: Path) -> str:
    """Per task, what the speculative fan-out did in one run (from ``speculation/<task>.json``)."""
    folder = state_dir_for(run_dir) / "speculation"
    reports = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    rows = [
        "| task | LLM calls | rounds | calls overlapped | wasted | asked in order (chain) | fell back to PlanExe's path |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    totals = dict.fromkeys(("calls", "rounds", "overlapped", "wasted", "chained"), 0)
    shown = [r for r in reports if r.get("calls") or r.get("fell_back")]
    for r in sorted(shown, key=lambda r: (-r.get("overlapped", 0), -r.get("calls", 0), r["task"])):
        for key in totals:
            totals[key] += int(r.get(key, 0))
        if r.get("calls", 0) > 1 or r.get("fell_back") or r.get("wasted"):
            rows.append(
                f"| {r['task']} | {r.get('calls', 0)} | {r.get('rounds', 0)} | {r.get('overlapped', 0)} | "
                f"{r.get('wasted', 0)} | {r.get('chained', 0)} | {r.get('fell_back') or '-'} |"
            )
    single = sum(1 for r in shown if r.get("calls", 0) <= 1 and not r.get("fell_back") and not r.get("wasted"))
    rows.append(f"| {single} tasks with one call each | {single} | | | | | |")
    rows.append(
        f"| **all {len(shown)} tasks** | {totals['calls']} | {totals['rounds']} | {totals['overlapped']} | "
        f"{totals['wasted']} | {totals['chained']} | {sum(1 for r in shown if r.get('fell_back'))} |"
    )
    return "\n".join(rows)


def _csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="planexe-concurrency bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", default="0.3", help="per-call latency: SECONDS, uniform:MEAN:SPREAD or lognormal:MEAN:SIGMA")
    p.add_argument("--tokens-per-second", type=float, default=0.0,
                   help="answer length costs time: --latency is then the time to first token, plus the answer's words at this rate (0 = off)")
    p.add_argument("--speed", choices=("all_details", "fast"), default="all_details")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--max-parallel", type=int, default=32)
    p.add_argument("--repeat", type=int, default=1, help="pairs of runs (alternating order)")
    p.add_argument("--sweep-workers", type=_csv_ints, help="e.g. 1,2,4: with --sweep-max-parallel, a grid of concurrent runs")
    p.add_argument("--sweep-max-parallel", type=_csv_ints, help="e.g. 1,4,16,32")
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    p.add_argument("--planexe", type=Path, help="a real PlanExe checkout (default: the built-in double)")
    p.add_argument("--python", default=sys.executable, help="the Python to run the pipeline with (PlanExe's venv for --planexe)")
    p.add_argument("--extra", default="", help="extra arguments for 'planexe-concurrency run' of the concurrent runs")
    p.add_argument("--relaxed", action="store_true", help="also run the concurrent configuration with fidelity = relaxed")
    p.add_argument("--luigi-module", action="store_true",
                   help="also run the concurrent configuration through Luigi's own command line (luigi --module), --repeat times")
    p.add_argument(
        "--provider-slots", type=_csv_ints,
        help="e.g. 1,2,4,8: instead of the before/after table, one table of a provider that serves K requests at a time",
    )
    p.add_argument("--provider-rows", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                   default=["nocap", "cap", "fifo", "auto"], help="which rows: nocap,cap,fifo,auto (after the sequential one)")
    p.add_argument("--provider-mode", choices=("queue", "refuse"), default="queue",
                   help="beyond K: queue (Ollama, llama.cpp) or refuse with 429 (a hosted key's concurrency limit)")
    return p


def _environment(args: argparse.Namespace, server: SimServer) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO_ROOT)]
    if args.planexe:
        checkout = args.planexe.resolve()
        paths += [str(checkout / "worker_plan"), str(checkout)]
        config_dir = (args.out / "planexe-config").resolve()
        config_dir.mkdir(parents=True, exist_ok=True)
        llm_config = {
            SIM_MODEL: {
                "priority": 1,
                "class": "OpenAILike",
                "arguments": {
                    "model": "simulated", "api_base": server.url + "/v1", "api_key": "sim",
                    "is_chat_model": True, "is_function_calling_model": False, "timeout": 60.0, "max_retries": 0,
                },
            }
        }
        (config_dir / "llm_config.json").write_text(json.dumps(llm_config, indent=2), encoding="utf-8")
        # PlanExe of late 2025 (the planexe/ layout) also requires a .env beside it; the simulated server needs no key
        (config_dir / ".env").touch()
        env["PLANEXE_CONFIG_PATH"] = str(config_dir)
        env["PLANEXE_CONCURRENCY_TARGET"] = "planexe"
    else:
        env["PLANEXE_CONCURRENCY_TARGET"] = "double"
    env["PLANEXE_SIMLLM_URL"] = server.url
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1 or args.max_parallel < 1 or args.repeat < 1:
        print("planexe-concurrency bench: error: --workers, --max-parallel and --repeat must be >= 1", file=sys.stderr)
        return 2
    if args.tokens_per_second < 0:
        print("planexe-concurrency bench: error: --tokens-per-second must be >= 0", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    extra = args.extra.split()
    if args.provider_slots:
        unknown = [name for name in args.provider_rows if name not in PROVIDER_ROWS]
        if unknown:
            print(f"planexe-concurrency bench: error: --provider-rows: unknown {unknown}; choose from {sorted(PROVIDER_ROWS)}", file=sys.stderr)
            return 2
        return provider_limits(args, argv)
    with SimServer(SimServerConfig(latency=args.latency, tokens_per_second=args.tokens_per_second, log_path=str(args.out / "requests.jsonl"))) as server:
        env = _environment(args, server)
        common = dict(speed=args.speed, server=server, python=args.python, env=env)
        results: list[RunResult] = []
        for rep in range(args.repeat):
            order = [True, False] if rep % 2 == 0 else [False, True]
            for sequential in order:
                label = f"{'sequential' if sequential else 'concurrent'} #{rep + 1}"
                print(f"bench: {label} ...", flush=True)
                results.append(
                    run_pipeline(
                        label, args.out / label.replace(" #", "-"), sequential=sequential,
                        workers=1 if sequential else args.workers, max_parallel=args.max_parallel,
                        extra=() if sequential else extra, **common,
                    )
                )
        if args.relaxed:
            for rep in range(args.repeat):
                label = f"relaxed #{rep + 1}"
                print(f"bench: {label} ...", flush=True)
                results.append(
                    run_pipeline(
                        label, args.out / label.replace(" #", "-"), sequential=False, workers=args.workers,
                        max_parallel=args.max_parallel, extra=extra, fidelity="relaxed", **common,
                    )
                )
        if args.luigi_module:
            graph = next(r.graph for r in results if not r.sequential)
            for rep in range(args.repeat):
                label = f"luigi --module #{rep + 1}"
                print(f"bench: {label} ...", flush=True)
                results.append(
                    run_luigi_module(
                        label, args.out / f"luigi-module-{rep + 1}", workers=args.workers, max_parallel=args.max_parallel,
                        graph=graph, **common,
                    )
                )
        sweep: list[RunResult] = []
        for w in args.sweep_workers or []:
            for m in args.sweep_max_parallel or [args.max_parallel]:
                label = f"sweep w{w} m{m}"
                print(f"bench: {label} ...", flush=True)
                sweep.append(run_pipeline(label, args.out / label.replace(" ", "-"), sequential=False, workers=w, max_parallel=m, extra=extra, **common))
        log = server.log

    reference = next(r for r in results if r.sequential)
    b = compute_bounds(reference, log)
    relaxed_run = next((r for r in results if r.fidelity == "relaxed"), None)
    rb = compute_bounds(reference, log, relaxed=relaxed_run) if relaxed_run is not None else None
    everything = results + sweep
    # A real PlanExe is compared leniently (its own uuid4 ids, durations and report time differ run to run).
    lenient = args.planexe is not None
    identical = {
        r.label: not differing_files(Path(reference.run_dir), Path(r.run_dir), lenient=lenient)
        for r in everything
        if r is not reference and r.fidelity == "exact"
    }
    table = format_table([r for r in everything if r.entry == "run"], reference, b, identical, rb)
    command = "planexe-concurrency bench " + " ".join(argv if argv is not None else sys.argv[1:])
    report = f"Measured with `{command}` ({_latency_words(args)}, {args.speed}).\n\n{table}\n"
    if args.luigi_module:
        report += f"\nThe two entry points, by task span:\n\n{entry_point_table(results, reference, identical)}\n"
    first_exact = next((r for r in results if not r.sequential and r.fidelity == "exact"), None)
    if first_exact is not None:
        report += f"\nPer task, in {first_exact.label} (speculative fan-out: record passes beside the real pass):\n\n{speculation_table(Path(first_exact.run_dir))}\n"
    print("\n" + report)
    (args.out / "results.md").write_text(report, encoding="utf-8")
    (args.out / "results.json").write_text(
        json.dumps({"runs": [asdict(r) for r in everything], "bounds": asdict(b), "relaxed_bounds": asdict(rb) if rb else None}, indent=2), encoding="utf-8"
    )
    _timelines(args.out, [r for r in results if r.label.endswith("#1")])
    if sweep:
        rows = [{"workers": r.workers, "max_parallel": r.max_parallel, "wall": r.wall, "speedup": reference.wall / r.wall} for r in sweep]
        with (args.out / "sweep.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        _try_png(lambda: sweep_png(args.out / "sweep.png", rows))
    return 0 if all(r.ok for r in everything) and all(identical.values()) else 1


# Rows of the provider-limits table: name -> (label, [planexe_concurrency] settings; K is filled in).
PROVIDER_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "nocap": ("exact, no cap", {}),
    "cap": ("exact, max_in_flight = K", {"max_in_flight": "K"}),
    "fifo": ("exact, max_in_flight = K, FIFO", {"max_in_flight": "K", "critical_path_first": "false"}),
    "auto": ("exact, max_in_flight = auto", {"max_in_flight": "auto"}),
}


def provider_limits(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """One table: a provider serving K requests at a time, for each K, against its bound.

    Two bounds per row, both max(a critical path, the total call time of the sequential run / K):
    K slots cannot finish the calls sooner than that. "bound": the critical path with every
    loop fully parallel (as the issue words it; below what K slots allow when K is small);
    "bound at K": the critical path with each task's overlappable calls at most K at a time.
    """
    lines = [
        "| K | provider | run | wall (s) | speed-up | peak sent at once (server) | refused (429) | bound (s) | vs bound "
        "| bound at K (s) | vs bound at K | same files |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    ok = True
    for k in args.provider_slots:
        limits = {"slots": k} if args.provider_mode == "queue" else {"max_concurrent": k}
        log_path = args.out / f"requests-k{k}.jsonl"
        with SimServer(SimServerConfig(latency=args.latency, tokens_per_second=args.tokens_per_second, log_path=str(log_path), **limits)) as server:
            env = _environment(args, server)
            common = dict(speed=args.speed, server=server, python=args.python, env=env)
            print(f"bench: K={k} sequential ...", flush=True)
            reference = run_pipeline(f"K{k} sequential", args.out / f"k{k}-sequential", sequential=True, workers=1,
                                     max_parallel=args.max_parallel, **common)
            runs = []
            for label, settings in (PROVIDER_ROWS[name] for name in args.provider_rows):
                values = {key: (k if value == "K" else value) for key, value in settings.items()}
                print(f"bench: K={k} {label} ...", flush=True)
                slug = label.replace(",", "").replace(" = ", "-").replace(" ", "-")
                runs.append(run_pipeline(f"K{k} {label}", args.out / f"k{k}-{slug}", sequential=False, workers=args.workers,
                                         max_parallel=args.max_parallel, settings=values, **common))
            log = server.log
        tasks = task_calls(reference, log)
        start, end = _span_of(reference)
        call_time = sum(r.end - r.start for r in _records_between(log, start - 1, end + 1))
        bound = max(bounds(tasks, reference.graph).full, call_time / k)
        bound_at_k = max(critical_path_at_width(tasks, reference.graph, k), call_time / k)
        for r in [reference, *runs]:
            start, end = _span_of(r)
            refused = sum(1 for rec in log if rec.status == 429 and start - 1 <= rec.arrival <= end + 1)
            same = "reference" if r is reference else _same_files(Path(reference.run_dir), Path(r.run_dir), args.planexe is not None)
            ok &= r.ok and same != "NO"
            lines.append(
                f"| {k} | {args.provider_mode} | {r.label.split(' ', 1)[1]} | {r.wall:.1f} | {reference.wall / r.wall:.2f}x | "
                f"{r.peak_in_flight} | {refused} | {bound:.1f} | {r.wall / bound:.2f}x | {bound_at_k:.1f} | "
                f"{r.wall / bound_at_k:.2f}x | {same} |"
            )
    command = "planexe-concurrency bench " + " ".join(argv if argv is not None else sys.argv[1:])
    report = (
        f"Measured with `{command}` ({_latency_words(args)}, {args.speed}, {args.workers} workers, "
        f"max_parallel {args.max_parallel}).\n\n" + "\n".join(lines) + "\n\nBound: max(the full critical-path bound of the "
        "sequential run, the sequential run's total call time / K); bound at K: the same with each task's overlappable "
        "calls at most K at a time in the critical path (K slots cannot run a task's loop wider). FIFO: critical_path_first = false (Luigi's order "
        "between tasks, first come first served for a slot). Same files \"lenient\": equal once the call durations "
        "PlanExe records are blanked (a queueing server's wait is part of a call) and uuid4 ids renamed.\n"
    )
    print("\n" + report)
    (args.out / "provider-limits.md").write_text(report, encoding="utf-8")
    return 0 if ok else 1


def _latency_words(args: argparse.Namespace) -> str:
    if args.tokens_per_second > 0:
        return f"{args.latency} s to the first token plus the answer at {args.tokens_per_second:g} tokens/s"
    return f"latency {args.latency} s per call"


def _same_files(reference: Path, run: Path, lenient: bool) -> str:
    """"yes"; "lenient": equal once call durations are blanked and uuid4 ids renamed (a queueing
    provider's wait is part of a call's duration, as PlanExe measures it); or "NO"."""
    if not differing_files(reference, run, lenient=lenient):
        return "yes"
    return "NO" if lenient or differing_files(reference, run, lenient=True) else "lenient"


def _span_of(run: RunResult) -> tuple[float, float]:
    """When a run's first task started and its last one ended (its requests lie in between)."""
    return _span_of_dir(Path(run.run_dir))


def _span_of_dir(run_dir: Path) -> tuple[float, float]:
    path = state_dir_for(run_dir) / "tasks.jsonl"
    spans = read_task_spans(path) if path.exists() else []
    return (min(s.start for s in spans), max(s.end for s in spans)) if spans else (0.0, float("inf"))


def _timelines(out: Path, runs: Sequence[RunResult]) -> None:
    panels = []
    for r in runs:
        state = state_dir_for(r.run_dir)
        spans = read_task_spans(state / "tasks.jsonl")
        items = item_spans(read_events(state / "events.jsonl")) if (state / "events.jsonl").exists() else []
        title = f"{r.label} ({r.workers} worker(s){'' if r.sequential else f', max_parallel {r.max_parallel}'})"
        (out / f"timeline-{r.label.split()[0]}.html").write_text(gantt_html(title, spans, items), encoding="utf-8")
        panels.append((title, spans, items))
    _try_png(lambda: gantt_png(out / "timeline.png", panels))


def _try_png(draw: Any) -> None:
    try:
        draw()
    except ImportError:
        print("bench: matplotlib is not installed (pip install 'planexe-concurrency[plot]'); PNGs skipped", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
