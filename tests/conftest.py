"""Shared fixtures: a clean Luigi configuration per test, run directories, pipeline runs on the double."""
from __future__ import annotations

import collections
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import luigi
import luigi.configuration
import pytest

from planexe_concurrency.config import set_config_values
from planexe_concurrency.simllm import SimServer, SimServerConfig
from pipeline_patches.compare import differing_files, plan_files  # noqa: F401 - re-exported for the tests

# The tests always run against our PlanExe double, even where a real PlanExe is importable.
os.environ.setdefault("PLANEXE_CONCURRENCY_TARGET", "double")

pytest_plugins = ["planexe_concurrency.simllm.fixtures", "postgres", "hang_stacks"]


def _no_tracing_in_forked_children() -> None:
    """Coverage measures the pytest process only: a process Luigi forks per task never saves what
    the tracer it inherits records (it ends in ``os._exit``), so that tracer only slows it ~2x."""
    sys.settrace(None)
    threading.settrace(None)  # type: ignore[arg-type]  # None removes it, as for sys.settrace


os.register_at_fork(after_in_child=_no_tracing_in_forked_children)

FIXED_START_TIME = """{
  "server_iso_utc": "2026-01-05T09:30:00Z",
  "server_iso_local": "2026-01-05T10:30:00+01:00",
  "server_timezone_name": "CET"
}"""
PLAN_PROMPT = "Plan:\nOpen a community tool library in a small town within six months.\n\nProject start ASAP"


@pytest.fixture(autouse=True)
def fresh_llm_instances() -> Iterator[None]:
    """No LLM instance outlives its test: a test that sets a model's latency (an env var the double
    reads when an instance is built) must not get one an earlier test built."""
    yield
    from pipeline_patches.pipeline import REUSED_LLMS

    REUSED_LLMS.clear()


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """What ``configure_logging`` changes (a run set up in-process, as ``main(["run", ...])`` does),
    put back after the test: the root's handlers and level, the loggers it turns up to DEBUG and
    the capture of warnings. Left so, every later test's simulated server would log each request
    in the process that forks the workers."""
    import logging

    from planexe_concurrency.console import DETAILED_LOGGERS

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in DETAILED_LOGGERS}
    warnings_captured = getattr(logging, "_warnings_showwarning", None) is not None
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    for name, was in levels.items():
        logging.getLogger(name).setLevel(was)
    logging.captureWarnings(warnings_captured)


@pytest.fixture
def luigi_config() -> Iterator[luigi.configuration.LuigiConfigParser]:
    """Luigi's global config parser, restored after the test so settings never leak between tests."""
    cfg = luigi.configuration.get_config()
    saved = {s: dict(cfg.items(s)) for s in cfg.sections()}
    try:
        yield cfg
    finally:
        for section in cfg.sections():
            cfg.remove_section(section)
        for section, items in saved.items():
            cfg.add_section(section)
            for key, value in items.items():
                cfg.set(section, key, value)


def set_concurrency(cfg: luigi.configuration.LuigiConfigParser, **values: Any) -> None:
    """Settings for one test (``cfg`` is the luigi_config fixture, which restores them afterwards)."""
    set_config_values(values)


def true_in_a_forked_child(check: Callable[[], bool]) -> bool:
    """``check()`` evaluated in a child forked from this process: what a task Luigi forks would see."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            ok = bool(check())
        except BaseException:  # the child must end here, never run on into pytest
            ok = False
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    return answer == b"1"


def write_start_files(run_dir: Path) -> Path:
    """Make ``run_dir`` with the two files PlanExe's front ends write first (start time, plan)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "001-1-start_time.json").write_text(FIXED_START_TIME)
    (run_dir / "001-2-plan.txt").write_text(PLAN_PROMPT)
    return run_dir


@pytest.fixture
def new_run_dir(tmp_path: Path) -> Callable[[str], Path]:
    """A factory of run directories that all share one start time and plan (so prompts match)."""
    def make(name: str) -> Path:
        return write_start_files(tmp_path / name)

    return make


@dataclass
class PipelineRunner:
    """Runs the double's FullPlanPipeline sequentially (PlanExe's tasks) or with the concurrent tasks."""

    cfg: luigi.configuration.LuigiConfigParser

    def __call__(
        self,
        run_dir: Path,
        *,
        concurrent: bool,
        workers: int = 1,
        fast: bool = False,
        llm_models: tuple[str, ...] = ("simulated",),
        callback: Any = None,
        **settings: Any,
    ) -> bool:
        from pipeline_patches import pipeline as patches
        from pipeline_patches.planexe import load_planexe

        pe = load_planexe()
        set_concurrency(self.cfg, **settings)
        if concurrent:
            patches.enable()
            root_class = patches.ConcurrentFullPlanPipeline
        else:
            patches.disable()
            root_class = pe.pipeline.FullPlanPipeline
        speed = pe.SpeedVsDetailEnum.FAST_BUT_SKIP_DETAILS if fast else pe.SpeedVsDetailEnum.ALL_DETAILS_BUT_SLOW
        kwargs: dict[str, Any] = {}
        if callback is not None:
            kwargs["_pipeline_executor_callback"] = callback
        root = root_class(run_id_dir=run_dir, speedvsdetail=speed, llm_models=list(llm_models), **kwargs)
        try:
            ok = luigi.build([root], local_scheduler=True, workers=workers, log_level="WARNING")
        finally:
            patches.enable()
        return bool(ok) and root.complete()


@pytest.fixture
def run_pipeline(luigi_config: luigi.configuration.LuigiConfigParser) -> PipelineRunner:
    return PipelineRunner(luigi_config)


HTTP_REFERENCE_CALLS = "http-reference-calls.txt"


def http_reference_calls(reference: Path) -> int:
    """How many LLM calls the reference run made (each a different question)."""
    return int((reference.parent / HTTP_REFERENCE_CALLS).read_text())


@pytest.fixture(scope="session")
def http_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PlanExe's own sequential run (FAST) against a fault-free server: what every run must write."""
    server = SimServer(SimServerConfig()).start()
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("PLANEXE_SIMLLM_URL", server.url)
        run_dir = write_start_files(tmp_path_factory.mktemp("http-reference"))
        assert PipelineRunner(luigi.configuration.get_config())(
            run_dir, concurrent=False, fast=True, llm_models=("simulated-http",)
        )
        per_key = collections.Counter(r.key for r in server.log)
        assert max(per_key.values()) == 1  # every call asks something different: counts per key mean tries
        (run_dir.parent / HTTP_REFERENCE_CALLS).write_text(str(len(per_key)))
        return run_dir
    finally:
        mp.undo()
        server.stop()


@pytest.fixture(scope="session")
def startup_hook() -> Iterator[Path]:
    """The start-up hook in this environment's site-packages, as a user's install has it.

    A wheel install ships it; an editable one (as here) gets it from ``planexe-concurrency hook
    install``. Removed again at the end if this fixture installed it.
    """
    from pipeline_patches.startup import install_hook, remove_hook

    path, installed = install_hook()
    try:
        yield path
    finally:
        if installed:
            remove_hook()


def speculation_reports(run_dir: Path) -> dict[str, dict[str, Any]]:
    """What each task's speculative run did (``speculation/<task>.json`` in our folder beside the run)."""
    import json

    from pipeline_patches.rundir import state_dir_for

    folder = state_dir_for(run_dir) / "speculation"
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))}
