"""``PLANEXE_CONCURRENCY=1`` for PlanExe's own entry point, patched or not.

PlanExe's ``python -m worker_plan_internal.plan.run_plan_pipeline`` ends in
``ExecutePipeline.run()``, which calls ``luigi.build([...], local_scheduler=True,
workers=1)``. Both ways in replace that one call with :func:`concurrent_build`:

* the patch (``planexe-concurrency patch PATH``) adds a few lines just before the module's
  ``if __name__ == '__main__':`` that, when the flag is on, give the module a ``luigi``
  whose ``build`` is :func:`concurrent_build`;
* the drop-in entry point (``python -m pipeline_patches.run_plan_pipeline``) does the same
  to ``luigi.build`` and then runs PlanExe's module as ``__main__``.

:func:`concurrent_build` binds the concurrent task classes into the module the tasks come
from (even when it runs as ``__main__``), checks the settings, warms the parent process up
so that forked workers do not each pay for lazy imports and client set-up, and calls Luigi
with ``PLANEXE_WORKERS`` workers. With the flag off, nothing of this package is imported.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import sys
import gc
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

import luigi
import luigi.interface

from planexe_concurrency.config import ConfigError, read_config, widest_fan_out

logger = logging.getLogger("planexe_concurrency")

FLAG_ENV = "PLANEXE_CONCURRENCY"
WORKERS_ENV = "PLANEXE_WORKERS"
PROGRESS_INTERVAL_ENV = "PLANEXE_CONCURRENCY_PROGRESS_INTERVAL"  # seconds between plain progress lines
DEFAULT_WORKERS = 4
MAX_WORKERS = 64

# Luigi's own build, whatever ``luigi.build`` has been replaced with (see startup.py).
_real_build: Callable[..., Any] = luigi.interface.build


def flag_on(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    return environ.get(FLAG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def workers_from_env(environ: dict[str, str] | os._Environ[str] = os.environ) -> int:
    raw = environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return DEFAULT_WORKERS
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"{WORKERS_ENV}={raw!r} is not allowed: expected an integer in 1..{MAX_WORKERS}")
    return value


def _pipeline_module_of(tasks: Sequence[luigi.Task]) -> ModuleType:
    """The module the root task's class lives in, registered under its import name.

    Run with ``python -m``, PlanExe's pipeline is ``__main__``; our patches import it by
    name, which would load a second copy with a second set of task classes. Registering
    ``__main__`` under its real name first makes both the same module.
    """
    module = sys.modules[type(tasks[0]).__module__]
    spec = getattr(module, "__spec__", None)
    if spec is not None and spec.name and spec.name != module.__name__:
        sys.modules.setdefault(spec.name, module)
    return module


def _is_planexe_pipeline(tasks: Sequence[luigi.Task]) -> bool:
    """The root task comes from a PlanExe pipeline module (any layout; ``__main__`` under ``python -m``)."""
    from .planexe import LAYOUTS

    module = sys.modules.get(type(tasks[0]).__module__)
    spec = getattr(module, "__spec__", None)
    names = {type(tasks[0]).__module__, getattr(spec, "name", None)}
    return any(layout["pipeline"] in names for layout in LAYOUTS.values())


# Imported lazily on the first LLM call, i.e. once per forked worker unless the parent has
# them. Measured on PlanExe with OpenAILike: ``openai.resources`` alone is ~0.45 s of the
# ~0.5 s a forked task paid for its first call.
# Each is paired with the package whose use makes it worth importing.
LAZY_IMPORTS = (
    ("openai.resources", "openai"),
    ("jiter", "openai"),
    ("llama_index.core.program", "llama_index.core"),
    ("llama_index.core.output_parsers", "llama_index.core"),
)


def warm_up(llm_models: Sequence[str], widest: int | None = None) -> float:
    """Pay lazy imports and client set-up once in the parent, before Luigi forks its workers.

    No request is sent (that would cost a user tokens): LLMs with their HTTP clients are
    built without being handed out (``REUSED_LLMS.prime``), so that every forked task
    inherits them instead of building its own (~55 ms each for an OpenAI-style client, most
    of it loading CA certificates): one per model, and of the first model as many as one
    task may have calls in flight (``widest``, from the settings unless given). The
    spares are built on threads (certificate loading leaves the GIL) while this thread
    imports what a first call would import; all of them are done before this returns, so
    no warm-up thread is alive at a fork.
    """
    started = time.perf_counter()
    from .pipeline import REUSED_LLMS

    if widest is None:  # a sequential run passes 1
        try:
            widest = widest_fan_out(read_config())
        except ConfigError:  # the run itself reports a bad setting, before anything runs
            widest = 1
    usable = []
    for name in llm_models:
        try:
            REUSED_LLMS.prime([name], prepare=build_http_client)  # here first: whatever building one imports
            usable.append(name)
        except Exception as exc:  # the run itself will report a broken model properly
            logger.warning("warm-up: could not create %r: %s", name, exc)
    spares = threading.Thread(
        target=_prime_spares, args=(REUSED_LLMS, usable[:1], widest), name="planexe-concurrency-warm-up", daemon=True
    )
    spares.start()
    try:
        import_lazy_modules()
        from . import relaxed  # noqa: F401 - every task's run imports it: ~30 ms a task, and a new walk of sys.modules
        from .planexe import load_planexe
        from .speculative import uuid_bound_modules

        uuid_bound_modules(load_planexe().pipeline.__name__.split(".")[0])
    finally:
        spares.join()
    # Everything the parent holds now is what every forked task inherits. Left to the cyclic
    # garbage collector, each child's first full collection walks (and so copies, page by
    # page) that whole heap: measured ~0.3 s per task under --workers 4. Frozen, it is skipped.
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


def _prime_spares(reused: Any, names: Sequence[str], count: int) -> None:
    try:
        reused.prime(names, prepare=build_http_client, count=count, threads=3)
    except Exception as exc:  # spares only save time: a task builds what it lacks
        logger.warning("warm-up: could not build spare LLMs for %s: %s", list(names), exc)


def build_http_client(llm: Any) -> None:
    """Build the client llama-index's OpenAI-style LLMs create on their first call (~0.1 s with
    its TLS context); other LLM classes are left as they are."""
    getter = getattr(llm, "_get_client", None)
    if callable(getter):
        getter()


def import_lazy_modules() -> None:
    """Import what an LLM client's first call would import lazily (see LAZY_IMPORTS), for the
    client libraries this process already uses: openai imported for LLMs that never call it
    (a local provider, the double's simulated one) was ~2 s of every start."""
    for name, user in LAZY_IMPORTS:
        if user not in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    if "openai" in sys.modules:
        build_deferred_models()


def nested_responses_serialise() -> bool:
    """Whether a chat completion, nested in an event as llama-index nests it, serialises on this pydantic/openai.

    The openai client makes responses without validation (``construct``), so their deferred
    models are first built when something serialises them. Newer pydantic builds them there;
    older versions fail there every time. Tried on a sample, the way PlanExe's event log would.
    """
    try:
        from openai.types.chat import ChatCompletion
        from pydantic import BaseModel
    except ImportError:
        return False

    class Nested(BaseModel):
        raw: Any = None

    sample = ChatCompletion.model_construct(id="probe", choices=[], created=0, model="probe", object="chat.completion")
    try:
        Nested(raw=sample).model_dump()
    except Exception:
        return False
    return True


# The models of a chat completion (the response, its messages, tool calls and usage).
DEFERRED_MODEL_MODULES = ("openai.types.chat", "openai.types.completion_usage", "openai.types.shared")


def build_deferred_models(prefixes: Sequence[str] = DEFERRED_MODEL_MODULES) -> int:
    """Build the pydantic models the openai client defers (``defer_build``) until their first use.

    Built lazily, two threads of one process serialising their first responses at once race:
    one gets pydantic's placeholder serializer (``'MockValSer' object cannot be converted to
    'SchemaSerializer'``), and PlanExe's activity log silently loses that event (seen on real
    PlanExe with three calls of a task sent together). Built here, in the parent, every forked
    task inherits them whole. Returns how many were built.

    Only where PlanExe's own run would have them built: with older pins (pydantic 2.10, openai
    1.59, PlanExe of 2025-11) a response nested in an event never builds, PlanExe's activity log
    loses every such event, and building them here would make that file differ from PlanExe's
    (76 more lines in a FAST plan, seen on c322189 and b566db6). So nothing is built there.
    """
    if not nested_responses_serialise():
        return 0
    built = 0
    for name, module in list(sys.modules.items()):
        if module is None or not any(name == p or name.startswith(p + ".") for p in prefixes):
            continue
        for value in list(vars(module).values()):
            complete = getattr(value, "__pydantic_complete__", None)
            if isinstance(value, type) and complete is False and value.__module__ == name:
                try:
                    value.model_rebuild(force=True)  # type: ignore[attr-defined]
                    built += 1
                except Exception:  # a model that needs names defined later: left to pydantic
                    continue
    return built


def prefer_fork() -> None:
    """Luigi forks a child per task; its callable parameters survive a fork but not a pickle."""
    if "fork" in multiprocessing.get_all_start_methods():
        multiprocessing.set_start_method("fork", force=True)


def concurrent_build(tasks: Sequence[luigi.Task], *args: Any, workers: int = 1, **kwargs: Any) -> Any:
    """``luigi.build`` with the concurrent tasks bound in and ``PLANEXE_WORKERS`` workers."""
    tasks = list(tasks)
    if not tasks or not _is_planexe_pipeline(tasks):
        return _real_build(tasks, *args, workers=workers, **kwargs)  # not PlanExe's build: untouched
    n_workers = workers_from_env()
    module = _pipeline_module_of(tasks)
    from .base import check_settings, tidy_finished_run
    from .callback import remember
    from .pipeline import enable

    enable(module)
    check_settings()
    remember(*tasks)  # PlanExe's callback is called here, in this process, for every worker
    if n_workers > 1:
        prefer_fork()
        seconds = warm_up(getattr(tasks[0], "llm_models", ()) or ())
        logger.info("planexe-concurrency: warmed up the parent in %.2fs", seconds)
    logger.info("planexe-concurrency: luigi.build with %d workers (PlanExe asked for %d)", n_workers, workers)
    with _watched(tasks[0], n_workers):
        result = _real_build(tasks, *args, workers=n_workers, **kwargs)
    for task in tasks:
        tidy_finished_run(task)
    return result


@contextlib.contextmanager
def _watched(root: luigi.Task, n_workers: int) -> Iterator[None]:
    """The run's event files, progress and summary, as ``planexe-concurrency run`` shows them.

    PlanExe's own logging stays where PlanExe put it, with two changes: Luigi does not add
    its own console handler beside PlanExe's (each of its lines once), and on a terminal
    PlanExe's console handlers show warnings only while the live display draws (its log file
    still gets every line). Elsewhere (a service, CI) one plain progress line per interval.
    """
    from planexe_concurrency.progress import CONSOLE_FILE

    from .watch import start_watch

    if logging.getLogger().handlers:
        luigi.configuration.get_config().set("core", "no_configure_logging", "true")
    live = sys.stderr.isatty()
    quieted = _quiet_console_handlers() if live else []
    plain = None if live else (lambda line: logger.info("%s", line))
    watch = start_watch(root, workers=n_workers, command=getattr(sys, "orig_argv", sys.argv), live=live,
                        interval=progress_interval(), plain_printer=plain)
    if quieted:
        _relay_forked_console(watch.state_dir / CONSOLE_FILE, [handler for handler, _ in quieted])
    started = time.perf_counter()
    ok = False
    try:
        yield
        ok = bool(root.complete())
    finally:
        _relay_forked_console(None, [])
        _, lines = watch.finish(ok, time.perf_counter() - started, stopped=_stop_flag_raised(root))
        for handler, level in quieted:
            handler.setLevel(level)
        for line in lines:
            if live:
                print(line, file=sys.stderr, flush=True)
            else:
                logger.info("%s", line)


class _LineRelay:
    """A stream for a forked worker's console handler: whole lines to the parent's ``console.log``,
    which the parent prints above its display (a worker writing to the terminal would tear it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        if lines:
            from planexe_concurrency.events import append_text

            append_text(self.path, "\n".join(lines) + "\n")
        return len(text)

    def flush(self) -> None:
        pass


_relay: dict[str, Any] = {"file": None, "handlers": []}
_relay_lock = threading.Lock()


def _relay_forked_console(console_file: Path | None, handlers: list[logging.Handler]) -> None:
    """While a live display draws: PlanExe's console handlers, in every forked worker, write to
    ``console_file`` instead of the terminal."""
    with _relay_lock:
        if not _relay.get("registered"):
            os.register_at_fork(after_in_child=_relay_in_child)
            _relay["registered"] = True
        _relay["file"], _relay["handlers"] = console_file, list(handlers)


def _relay_in_child() -> None:
    target = _relay["file"]
    if target is None:
        return
    for handler in _relay["handlers"]:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(_LineRelay(target))  # type: ignore[arg-type]


def progress_interval(environ: dict[str, str] | os._Environ[str] = os.environ) -> float:
    raw = environ.get(PROGRESS_INTERVAL_ENV, "").strip()
    try:
        return float(raw) if raw else 10.0
    except ValueError:
        raise ValueError(f"{PROGRESS_INTERVAL_ENV}={raw!r} is not allowed: expected seconds (a number)") from None


def _quiet_console_handlers() -> list[tuple[logging.Handler, int]]:
    """Root handlers that print to this terminal: at WARNING while the display draws."""
    changed = []
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        if isinstance(handler, logging.FileHandler) or stream not in (sys.stdout, sys.stderr):
            continue
        if handler.level < logging.WARNING:
            changed.append((handler, handler.level))
            handler.setLevel(logging.WARNING)
    return changed


def _stop_flag_raised(root: luigi.Task) -> bool:
    from .planexe import load_planexe

    flag = load_planexe().ExtraFilenameEnum.PIPELINE_STOP_REQUESTED_FLAG.value
    return (Path(root.run_id_dir) / flag).exists()


class _LuigiWithConcurrentBuild:
    """Stands in for the ``luigi`` module inside PlanExe's pipeline module: only ``build`` differs."""

    def __getattr__(self, name: str) -> Any:
        return getattr(luigi, name)

    build = staticmethod(concurrent_build)


def install(namespace: dict[str, Any]) -> None:
    """Called by the patched PlanExe module with its ``globals()``; does nothing when the flag is off."""
    if not flag_on():
        return
    workers_from_env()  # a bad PLANEXE_WORKERS fails here, before anything runs
    progress_interval()
    namespace["luigi"] = _LuigiWithConcurrentBuild()
    plan_task = namespace.get("PlanTask")
    if isinstance(plan_task, type):  # before PlanExe builds its tasks: no "not of type string" warnings
        from .base import declare_parameter_types

        declare_parameter_types(plan_task)
