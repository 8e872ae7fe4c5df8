"""The ``planexe-concurrency`` command.

    planexe-concurrency run                      # the whole plan, concurrently (built-in defaults)
    planexe-concurrency run --sequential         # PlanExe's way, for comparison
    planexe-concurrency check-config             # validate [planexe_concurrency] and show what each task gets
    planexe-concurrency patch PATH [--revert]    # add/remove the PLANEXE_CONCURRENCY hook in a checkout
    planexe-concurrency hook [install|remove]    # the start-up hook for every entry point (see startup.py)
    planexe-concurrency simllm serve [...]       # the simulated OpenAI-compatible provider
    planexe-concurrency bench [...]              # before/after timing table (see pipeline_patches/bench.py)
    planexe-concurrency status RUN_DIR           # follow a run started anywhere (live display, exit = its state)
    planexe-concurrency timeline RUN_DIR         # the Gantt picture of a run (HTML; PNG with matplotlib)

Every input is checked before anything runs; a bad one ends the command with one line
on stderr and exit status 2, and nothing written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

# Exit status of ``status``: the run's state.
STATUS_EXIT = {"done": 0, "failed": 1, "running": 3, "stopped": 4, "interrupted": 4}

# --speed: PlanExe's SpeedVsDetailEnum member for each choice
SPEED_NAMES = {"all_details": "ALL_DETAILS_BUT_SLOW", "fast": "FAST_BUT_SKIP_DETAILS"}


class UsageError(Exception):
    """A bad argument or setting; reported as one line, exit status 2."""


def _positive(kind: str, lo: int, hi: int):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lo - 1
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{kind} must be an integer in {lo}..{hi}, got {text!r}")
        return value

    return parse


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="planexe-concurrency", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--log-level", default=os.environ.get("PLANEXE_LOG_LEVEL"),
        help="console log level (default WARNING; run and status: -v INFO, -vv DEBUG); the log file gets everything",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate a plan with PlanExe's pipeline, concurrently")
    run.add_argument("--run-dir", type=Path, help="run directory (new, or an existing one to resume); default runs/<timestamp>")
    run.add_argument("--prompt", help="the plan idea (one paragraph); default: a built-in example")
    run.add_argument("--prompt-file", type=Path, help="read the plan idea from this file")
    run.add_argument("--speed", choices=("all_details", "fast"), default="all_details", help="PlanExe's SpeedVsDetail")
    run.add_argument("--workers", type=_positive("--workers", 1, 64), default=4, help="Luigi workers (processes)")
    run.add_argument("--max-parallel", type=_positive("--max-parallel", 1, 32), help="LLM calls in flight per task")
    run.add_argument("--failure-mode", choices=("fail_fast", "continue_on_error"))
    run.add_argument("--requests-per-minute", type=_nonnegative_float, help="request budget (0 = none)")
    run.add_argument("--governance-parallel", action="store_true", help="governance phases 4-6 side by side (changes their prompts)")
    run.add_argument("--fidelity", choices=("exact", "relaxed"), help="relaxed: chained loops side by side (changes answers; docs/relaxed.md)")
    run.add_argument("--relaxed-reconcile", choices=("none", "questions"), help="relaxed: let each question see the earlier questions")
    run.add_argument("--llm", action="append", help="LLM name from PlanExe's llm_config (repeat for fallback order)")
    run.add_argument("--latency", type=_nonnegative_float, default=0.05, help="seconds per call of the built-in simulated LLM")
    run.add_argument("--sequential", action="store_true", help="PlanExe's own tasks and one worker (the 'before')")
    run.add_argument("--target", choices=("auto", "planexe", "double"), help="which PlanExe to use (default: auto)")
    run.add_argument("--scheduler-host", help="use a luigid central scheduler on this host instead of the local one")
    run.add_argument("--scheduler-port", type=int, default=8082)
    run.add_argument("--summary-json", type=Path, help="write wall time, outcome and the task graph here (benchmarks)")
    _display_options(run)

    status = sub.add_parser("status", help="follow a run started elsewhere; exits with its state (0 done, 1 failed, 3 running, 4 stopped)")
    status.add_argument("run_dir", type=Path, help="the run directory")
    status.add_argument("--once", action="store_true", help="print one line now and exit")
    _display_options(status)

    timeline = sub.add_parser("timeline", help="write the Gantt picture of a run (timeline.html, and .png with matplotlib)")
    timeline.add_argument("run_dir", type=Path, help="the run directory")
    timeline.add_argument("--out", type=Path, help="folder for the files (default: the run's state folder)")

    sub.add_parser("check-config", help="validate [planexe_concurrency] and show each task's settings")

    patch = sub.add_parser("patch", help="add the PLANEXE_CONCURRENCY hook to a PlanExe checkout")
    patch.add_argument("path", type=Path, help="the PlanExe checkout (or its run_plan_pipeline.py)")
    patch.add_argument("--revert", action="store_true", help="remove the hook again")

    hook = sub.add_parser("hook", help="the PLANEXE_CONCURRENCY start-up hook of this Python environment")
    hook.add_argument("action", choices=("status", "install", "remove"), nargs="?", default="status",
                      help="install: write it into site-packages (editable installs; a wheel ships it); remove: take it out")

    sub.add_parser("bench", help="before/after benchmark against the simulated provider (see: bench --help)", add_help=False)

    simllm = sub.add_parser("simllm", help="the simulated LLM provider")
    simllm.add_argument("action", choices=("serve",))
    return parser


def _display_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v: INFO on the console, -vv: DEBUG")
    parser.add_argument(
        "--progress-interval", type=_nonnegative_float, default=10.0,
        help="seconds between plain progress lines when the output is not a terminal",
    )


def _resume_command(argv: Sequence[str], run_dir: Path) -> list[str]:
    """The command that resumes this run: the same one, with its run directory named."""
    words = ["planexe-concurrency", *argv]
    if not any(w == "--run-dir" or w.startswith("--run-dir=") for w in argv):
        words += ["--run-dir", str(run_dir)]
    return words


def _prompt(args: argparse.Namespace) -> str | None:
    if args.prompt is not None and args.prompt_file is not None:
        raise UsageError("give --prompt or --prompt-file, not both")
    if args.prompt_file is not None:
        try:
            return args.prompt_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"--prompt-file {args.prompt_file}: {exc.strerror or exc}") from exc
    return args.prompt


def cmd_run(args: argparse.Namespace) -> int:
    import luigi

    from planexe_concurrency.config import ConfigError, set_config_values
    from planexe_concurrency.console import configure_logging
    from planexe_concurrency.progress import CONSOLE_FILE, LOG_FILE
    from planexe_concurrency.resume import atomic_write_text

    if args.target:
        os.environ["PLANEXE_CONCURRENCY_TARGET"] = args.target
    prompt = _prompt(args)
    run_dir = args.run_dir or Path("runs") / time.strftime("PlanExe_%Y%m%d_%H%M%S")
    set_config_values(
        {
            "max_parallel": args.max_parallel,
            "failure_mode": args.failure_mode,
            "requests_per_minute": args.requests_per_minute,
            "governance_parallel": True if args.governance_parallel else None,
            "fidelity": args.fidelity,
            "relaxed_reconcile": args.relaxed_reconcile,
        }
    )
    from . import pipeline as patches
    from .base import check_settings
    from .flag_toggle import prefer_fork, warm_up
    from .planexe import load_planexe
    from .rundir import RunDirError, prepare_run_dir, state_dir_for
    from .watch import start_watch

    planexe = load_planexe()
    try:
        check_settings()
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    if planexe.layout == "double":
        os.environ["PLANEXE_SIMLLM_LATENCY"] = str(args.latency)
    llm_models = args.llm or planexe.pipeline.get_llm_names_by_priority() or ["simulated"]
    speed = SPEED_NAMES[args.speed]
    try:
        prepare_run_dir(run_dir, prompt)
    except RunDirError as exc:
        raise UsageError(str(exc)) from exc
    state_dir = state_dir_for(run_dir)
    console = configure_logging(args.verbose, state_dir / LOG_FILE, state_dir / CONSOLE_FILE, level=args.log_level)
    # Luigi's own logging set-up would give its logger a second console handler (every line twice).
    luigi.configuration.get_config().set("core", "no_configure_logging", "true")
    set_config_values({"events_file": str(state_dir / "events.jsonl")})
    stop_flag = run_dir / planexe.ExtraFilenameEnum.PIPELINE_STOP_REQUESTED_FLAG.value
    stop_flag.unlink(missing_ok=True)

    workers = 1 if args.sequential else args.workers
    if args.sequential:
        patches.disable()
        root_class = planexe.pipeline.FullPlanPipeline
    else:
        root_class = patches.ConcurrentFullPlanPipeline
    root = root_class(
        run_id_dir=run_dir.resolve(),
        speedvsdetail=getattr(planexe.SpeedVsDetailEnum, speed),
        llm_models=llm_models,
    )
    if workers > 1:
        prefer_fork()
    # Sequential runs too: a first call's recorded duration (whole seconds) must not differ
    # between two runs only because one imported its client library before it, the other during it.
    warm_seconds = warm_up(llm_models, widest=1 if args.sequential else None)
    print(
        f"planexe-concurrency: {'sequential' if args.sequential else 'concurrent'} run of {planexe.layout!r} PlanExe, "
        f"{workers} worker(s), models {llm_models}, run dir {run_dir}",
        flush=True,
    )
    watch = start_watch(
        root, workers=workers, command=_resume_command(args.argv, run_dir), interval=args.progress_interval,
        console_printer=console,
    )
    started = time.perf_counter()
    build_kwargs: dict[str, Any] = {"workers": workers, "detailed_summary": True}
    if args.scheduler_host:
        build_kwargs.update(scheduler_host=args.scheduler_host, scheduler_port=args.scheduler_port)
    else:
        build_kwargs["local_scheduler"] = True
    result: Any = False
    interrupted = False
    try:
        result = luigi.build([root], **build_kwargs)
    except KeyboardInterrupt:  # Ctrl-C: say where the run got to and how to go on
        interrupted = True
    finally:
        elapsed = time.perf_counter() - started
        ok = bool(getattr(result, "scheduling_succeeded", result)) and root.complete()
        _, lines = watch.finish(ok, elapsed, stopped=stop_flag.exists() or interrupted)
        console.printer = None
    if args.summary_json:
        summary = {
            "ok": ok,
            "wall": elapsed,
            "warm_up": warm_seconds,
            "workers": workers,
            "sequential": args.sequential,
            "layout": planexe.layout,
            "graph": watch.info.graph,
        }
        atomic_write_text(args.summary_json, json.dumps(summary, indent=2))
    print("\n".join(lines), flush=True)
    if interrupted:
        return 130
    if stop_flag.exists():
        print("planexe-concurrency: the pipeline was stopped on request; run the same command again to resume", flush=True)
    return 0 if ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    from planexe_concurrency.console import ProgressReporter, configure_console, plain_line
    from planexe_concurrency.progress import RUNNING, RunInfo, RunProgress, RunSummary

    from .rundir import state_dir_for
    from .watch import lines_of_summary

    configure_console(args.verbose, level=args.log_level)
    state_dir = state_dir_for(args.run_dir)
    info = RunInfo.read(state_dir)
    if info is None:
        raise UsageError(f"{args.run_dir}: no run of planexe-concurrency found (no {state_dir / 'run.json'})")
    if not args.once and info.state == RUNNING and not info.owner_gone():
        reporter = ProgressReporter(state_dir, interval=args.progress_interval, title=f"PlanExe: {info.run_dir}")
        with reporter:
            while True:
                time.sleep(0.5)
                info = RunInfo.read(state_dir) or info
                if info.state != RUNNING or info.owner_gone():
                    break
    snap = RunProgress(state_dir).poll()
    print(plain_line(snap), flush=True)
    if info.summary and info.state != RUNNING:
        data = dict(info.summary)
        data["longest"] = tuple(tuple(pair) for pair in data.get("longest", ()))
        data["carried_on"] = tuple(data.get("carried_on", ()))
        timeline = state_dir / "timeline.html"
        lines = lines_of_summary(
            RunSummary(**data), state_dir, Path(info.run_dir), timeline if timeline.exists() else None, " ".join(info.command)
        )
        print("\n".join(lines), flush=True)
    return STATUS_EXIT.get(snap.state, 1)


def cmd_timeline(args: argparse.Namespace) -> int:
    from planexe_concurrency.plots import write_timeline
    from planexe_concurrency.progress import RunInfo

    from .rundir import state_dir_for

    state_dir = state_dir_for(args.run_dir)
    info = RunInfo.read(state_dir)
    if info is None and not (state_dir / "tasks.jsonl").exists():
        raise UsageError(f"{args.run_dir}: no run of planexe-concurrency found (no event files in {state_dir})")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    title = f"{args.run_dir.name} ({info.state if info else 'unknown'})"
    for path in write_timeline(state_dir, title, args.out):
        print(path)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from planexe_concurrency.config import ConfigError, read_config, settings_from_config

    from planexe_concurrency.config import task_value

    from .base import check_settings

    try:
        check_settings()
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    cfg = read_config()
    print(
        f"[planexe_concurrency] fidelity={cfg.fidelity} speculate={str(cfg.speculate).lower()} "
        f"governance_parallel={str(cfg.governance_parallel).lower()}"
    )
    for name in [None, *sorted(dict(cfg.task_overrides))]:
        s = settings_from_config(cfg, name)
        print(
            f"{name or 'every task'}: max_parallel={s.max_parallel} failure_mode={s.failure_mode} "
            f"requests_per_minute={s.requests_per_minute:g} retry_attempts={s.retry.attempts} "
            f"speculate={str(task_value(cfg, 'speculate', name)).lower()} fidelity={task_value(cfg, 'fidelity', name)}"
        )
    return 0


def cmd_patch(args: argparse.Namespace) -> int:
    from .patch_planexe import PatchError, apply, revert

    try:
        target, changed = (revert if args.revert else apply)(args.path)
    except PatchError as exc:
        raise UsageError(str(exc)) from exc
    verb = "reverted" if args.revert else "patched"
    print(f"{target}: {verb}" if changed else f"{target}: already {verb}, nothing to do")
    return 0


def cmd_hook(args: argparse.Namespace) -> int:
    from .startup import hook_installed, hook_path, install_hook, remove_hook

    if args.action == "install":
        path, changed = install_hook()
        print(f"{path}: {'installed' if changed else 'already installed, nothing to do'}")
    elif args.action == "remove":
        path, changed = remove_hook()
        print(f"{path}: {'removed' if changed else 'not installed, nothing to do'}")
    else:
        print(f"{hook_path()}: {'installed' if hook_installed() else 'not installed'}")
    return 0


def cmd_simllm(args: argparse.Namespace) -> int:
    from planexe_concurrency.simllm.cli import serve_main

    return serve_main(list(args.rest))


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(list(args.rest))


COMMANDS = {
    "run": cmd_run, "check-config": cmd_check_config, "patch": cmd_patch, "hook": cmd_hook, "simllm": cmd_simllm, "bench": cmd_bench,
    "status": cmd_status, "timeline": cmd_timeline,
}


PASS_THROUGH = {"bench": 1, "simllm": 2}  # commands that parse their own options: words they keep


def _split_pass_through(argv: list[str]) -> tuple[list[str], list[str]]:
    """Cut ``argv`` after a pass-through command (and its action word); the rest is theirs."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 1 if "=" in argv[i] or argv[i] in ("-h", "--help") else 2  # --log-level VALUE
    if i < len(argv) and argv[i] in PASS_THROUGH:
        cut = min(len(argv), i + PASS_THROUGH[argv[i]])
        return argv[:cut], argv[cut:]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    head, rest = _split_pass_through(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(head)
    args.argv = head
    if args.command in PASS_THROUGH:
        args.rest = rest
    from planexe_concurrency.console import configure_console

    # Until a run knows its log file (run), or for good (the other commands): the console only.
    try:
        configure_console(
            getattr(args, "verbose", 0), level=args.log_level, default="WARNING" if args.command in ("run", "status") else "INFO"
        )
    except ValueError as exc:
        print(f"planexe-concurrency: error: --log-level: {exc}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"planexe-concurrency: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
