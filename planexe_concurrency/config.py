"""Settings for the fan-out engine, declared once as a ``luigi.Config`` section.

Because the section is a ``luigi.Config``, every setting is reachable three ways,
as users of Luigi expect::

    # luigi.cfg
    [planexe_concurrency]
    max_parallel = 8
    task_overrides = {"CreateWBSLevel3Task": {"max_parallel": 16}}

    # command line
    luigi --module pipeline_patches.pipeline ConcurrentFullPlanPipeline \\
          --planexe-concurrency-max-parallel 8 ...

    # code
    settings = load_settings(task="CreateWBSLevel3Task")

Luigi parses each value lazily when the section is instantiated; :func:`load_settings`
instantiates it once, checks every range and turns any failure into one
:class:`ConfigError` that names the setting, the value and what is allowed, so a bad
value stops the run before any LLM call is made.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Literal, Mapping

import luigi
from luigi.cmdline_parser import CmdlineParser

FailureMode = Literal["fail_fast", "continue_on_error"]
FAILURE_MODES: tuple[str, ...] = ("fail_fast", "continue_on_error")
FIDELITY_MODES: tuple[str, ...] = ("exact", "relaxed")
RECONCILE_MODES: tuple[str, ...] = ("none", "questions")

SECTION = "planexe_concurrency"


class ConfigError(ValueError):
    """A setting has a value that is out of range or of the wrong type."""


@dataclass(frozen=True)
class RetryPolicy:
    """How transient errors (timeouts, connection errors, 429, 5xx) are retried.

    ``attempts`` counts the first try: 1 means no retry. The wait before retry *n*
    is ``min(backoff_max, backoff_base * 2**(n-1)) + uniform(0, jitter)``, and never
    less than a ``Retry-After`` the provider sent. No retry starts once ``total_seconds``
    have passed since the first try (0: no time budget), so a dead provider is not retried
    for long.

    Why 6 attempts: a provider failing a fraction p of requests at random fails one call
    p**attempts of the time. A whole ALL_DETAILS plan makes ~120 calls; it fails if any one
    of them does: 1 - (1 - p**a)**120. At p = 0.15 that is 33% for a = 3 (measured: 1 run in
    6 failed), 0.9% for a = 5 and 0.14% for a = 6 (README, "Retries").
    """

    attempts: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    jitter: float = 1.0
    total_seconds: float = 600.0


@dataclass(frozen=True)
class FanOutSettings:
    """The resolved settings one fan-out runs with (global values, then per-task overrides)."""

    max_parallel: int = 4
    failure_mode: FailureMode = "fail_fast"
    requests_per_minute: float = 0.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


# name -> (checker, description of what is allowed). Used for the section and for overrides.
def _int_range(lo: int, hi: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi), f"an integer in {lo}..{hi}"


def _float_range(lo: float, hi: float) -> tuple[Callable[[Any], bool], str]:
    def check(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi

    return check, f"a number in {lo:g}..{hi:g}"


def _choice(options: Iterable[str]) -> tuple[Callable[[Any], bool], str]:
    opts = tuple(options)
    return (lambda v: v in opts), "one of " + " | ".join(opts)


RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_parallel": _int_range(1, 32),
    "failure_mode": _choice(FAILURE_MODES),
    "requests_per_minute": _float_range(0, 1_000_000),
    "retry_attempts": _int_range(1, 20),
    "retry_backoff_base": _float_range(0, 600),
    "retry_backoff_max": _float_range(0, 3600),
    "retry_jitter": _float_range(0, 600),
    "retry_total_seconds": _float_range(0, 86400),
    "fidelity": _choice(FIDELITY_MODES),
    "relaxed_reconcile": _choice(RECONCILE_MODES),
    "speculate": ((lambda v: isinstance(v, bool)), "true | false"),
}
OVERRIDABLE: frozenset[str] = frozenset(RULES)


class planexe_concurrency(luigi.Config):  # noqa: N801 - the class name is the luigi.cfg section name
    """The ``[planexe_concurrency]`` section. See the module docstring and README for each setting."""

    max_parallel = luigi.IntParameter(default=4, description="LLM calls in flight at once inside one task (1..32)")
    failure_mode = luigi.Parameter(
        default="fail_fast", description="fail_fast: first failed item cancels the rest; continue_on_error: run all, report all"
    )
    requests_per_minute = luigi.FloatParameter(default=0.0, description="request budget per minute; 0 = no limit")
    retry_attempts = luigi.IntParameter(default=6, description="tries per model for transient errors (1 = no retry)")
    retry_backoff_base = luigi.FloatParameter(default=1.0, description="first backoff in seconds, doubled each retry")
    retry_backoff_max = luigi.FloatParameter(default=30.0, description="largest backoff in seconds")
    retry_jitter = luigi.FloatParameter(default=1.0, description="random seconds added to each backoff")
    retry_total_seconds = luigi.FloatParameter(
        default=600.0, description="no retry of a call starts after this many seconds since its first try (0 = no budget)"
    )
    fidelity = luigi.Parameter(default="exact", description="exact: outputs byte-identical to PlanExe; relaxed: opt-in")
    relaxed_reconcile = luigi.Parameter(
        default="none", description="relaxed mode: none (each question alone) | questions (earlier questions, not answers)"
    )
    speculate = luigi.BoolParameter(
        default=True,
        description="record PlanExe's task code with stand-in answers and send its independent calls at once (false: one at a time)",
    )
    critical_path_first = luigi.BoolParameter(
        default=True,
        description="give each task Luigi's priority = the longest chain of tasks still ahead of it, so free workers take the critical chain first and its LLM requests go first when they wait for a max_in_flight slot or a request-budget slot",
    )
    governance_parallel = luigi.BoolParameter(
        default=False, description="run governance phases 4-6 side by side after phase 3 (changes their prompts)"
    )
    max_in_flight = luigi.Parameter(
        default="0",
        description="LLM calls in flight at once for the whole run, every process and host together "
        "(0 = no cap; auto = find the provider's limit: start at 2, add while calls succeed, halve on 429/503/timeouts)",
    )
    in_flight_file = luigi.Parameter(
        default="", description="file shared by all processes (and hosts) that holds the max_in_flight slots"
    )
    rate_limit_file = luigi.Parameter(
        default="", description="file shared by all processes (and hosts on shared storage) that splits the request budget"
    )
    events_file = luigi.Parameter(default="", description="append one JSON line per item state change to this file")
    task_events_file = luigi.Parameter(
        default="", description="append one JSON line per Luigi task start/success/failure to this file (any process)"
    )
    task_overrides = luigi.DictParameter(
        default={}, description='per-task values that win over the global ones, e.g. {"CreateWBSLevel3Task": {"max_parallel": 16}}'
    )


ConcurrencyConfig = planexe_concurrency


def set_config_values(values: Mapping[str, Any]) -> None:
    """Write settings into Luigi's global config, as luigi.cfg would (None leaves a setting alone)."""
    cfg = luigi.configuration.get_config()
    if not cfg.has_section(SECTION):
        cfg.add_section(SECTION)
    for key, value in values.items():
        if value is not None:
            cfg.set(SECTION, key, str(value).lower() if isinstance(value, bool) else str(value))


def _check(name: str, value: Any, where: str) -> None:
    ok, allowed = RULES[name]
    if not ok(value):
        raise ConfigError(f"{where}{name} = {value!r} is not allowed: expected {allowed}")


_read: tuple[tuple[Any, ...], planexe_concurrency] | None = None


def _sources() -> tuple[Any, ...]:
    """Everything Luigi reads the section from: the config parser, its values, the command line."""
    cfg = luigi.configuration.get_config()
    values = tuple(cfg.items(SECTION, raw=True)) if cfg.has_section(SECTION) else ()
    return (cfg, values, CmdlineParser.get_instance())


def read_config() -> planexe_concurrency:
    """Instantiate the section, naming the offending setting if Luigi cannot parse one.

    Read again only when its sources changed: a task asks several times, and parsing every
    parameter each time was ~8 ms of every forked task's start.
    """
    global _read
    sources = _sources()
    cached = _read
    if cached is not None and cached[0] == sources:
        return cached[1]
    try:
        cfg = planexe_concurrency()
    except Exception as exc:  # luigi raises ValueError/TypeError etc. without naming the parameter
        for name, param in planexe_concurrency.get_params():
            try:
                param.task_value(SECTION, name)
            except Exception as inner:
                raw = _raw_value(name)
                raise ConfigError(
                    f"[{SECTION}] {name} = {raw!r} cannot be parsed as {type(param).__name__}: {inner}"
                ) from inner
        raise ConfigError(f"[{SECTION}] could not be read: {exc}") from exc  # pragma: no cover - a parse error names one
    _read = (sources, cfg)
    return cfg


def _raw_value(name: str) -> Any:
    cfg = luigi.configuration.get_config()
    for key in (name, name.replace("_", "-")):
        if cfg.has_option(SECTION, key):
            return cfg.get(SECTION, key)
    return "<command line>"


def _overrides_dict(raw: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{SECTION}] task_overrides must be a mapping of task name to settings, got {raw!r}")
    out: dict[str, dict[str, Any]] = {}
    for task, values in raw.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{SECTION}] task_overrides[{task!r}] must be a mapping of setting to value, got {values!r}")
        out[str(task)] = dict(values)
    return out


def validate(cfg: planexe_concurrency, known_tasks: Iterable[str] | None = None) -> None:
    """Check every global value and every override; ``known_tasks`` lets callers reject unknown task names."""
    for name in RULES:
        _check(name, getattr(cfg, name), f"[{SECTION}] ")
    if cfg.retry_backoff_max < cfg.retry_backoff_base:
        raise ConfigError(
            f"[{SECTION}] retry_backoff_max = {cfg.retry_backoff_max!r} is not allowed: "
            f"expected a number >= retry_backoff_base ({cfg.retry_backoff_base!r})"
        )
    in_flight_limit(cfg)
    known = set(known_tasks) if known_tasks is not None else None
    for task, values in _overrides_dict(cfg.task_overrides).items():
        if known is not None and task not in known:
            raise ConfigError(
                f"[{SECTION}] task_overrides names an unknown task {task!r}; known tasks: {', '.join(sorted(known))}"
            )
        for name, value in values.items():
            if name not in OVERRIDABLE:
                raise ConfigError(
                    f"[{SECTION}] task_overrides[{task!r}] has unknown setting {name!r}; "
                    f"allowed: {', '.join(sorted(OVERRIDABLE))}"
                )
            _check(name, value, f"[{SECTION}] task_overrides[{task!r}].")


def in_flight_limit(cfg: planexe_concurrency) -> int | str:
    """``max_in_flight`` as 0 (no cap), a number of calls, or ``"auto"``; ConfigError otherwise."""
    raw = str(cfg.max_in_flight).strip().lower()
    if raw == "auto":
        return "auto"
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 4096:
        raise ConfigError(
            f"[{SECTION}] max_in_flight = {cfg.max_in_flight} is not allowed: expected an integer in 0..4096 (0 = no cap) or auto"
        )
    return value


def widest_fan_out(cfg: planexe_concurrency) -> int:
    """The most LLM calls one task may have in flight at once: max_parallel, or a task's override, within max_in_flight."""
    widest = max([int(cfg.max_parallel)] + [int(v["max_parallel"]) for v in _overrides_dict(cfg.task_overrides).values() if "max_parallel" in v])
    cap = in_flight_limit(cfg)
    return min(widest, cap) if isinstance(cap, int) and cap > 0 else widest


def settings_from_config(cfg: planexe_concurrency, task: str | None = None) -> FanOutSettings:
    """Resolve the settings for ``task``: a per-task override wins over the global value."""
    values: dict[str, Any] = {name: getattr(cfg, name) for name in RULES}
    if task is not None:
        values.update(_overrides_dict(cfg.task_overrides).get(task, {}))
    return FanOutSettings(
        max_parallel=int(values["max_parallel"]),
        failure_mode=values["failure_mode"],
        requests_per_minute=float(values["requests_per_minute"]),
        retry=RetryPolicy(
            attempts=int(values["retry_attempts"]),
            backoff_base=float(values["retry_backoff_base"]),
            backoff_max=float(values["retry_backoff_max"]),
            jitter=float(values["retry_jitter"]),
            total_seconds=float(values["retry_total_seconds"]),
        ),
    )


def task_value(cfg: planexe_concurrency, name: str, task: str | None = None) -> Any:
    """One setting for one task (override first), for settings that are not part of FanOutSettings."""
    if task is not None:
        override = _overrides_dict(cfg.task_overrides).get(task, {})
        if name in override:
            return override[name]
    return getattr(cfg, name)


def load_settings(task: str | None = None, known_tasks: Iterable[str] | None = None) -> FanOutSettings:
    """Read, validate and resolve the settings in one step; raises :class:`ConfigError`."""
    cfg = read_config()
    validate(cfg, known_tasks)
    return settings_from_config(cfg, task)


def with_overrides(settings: FanOutSettings, **changes: Any) -> FanOutSettings:
    """A copy of ``settings`` with some top-level or retry fields changed (tests, benches)."""
    retry_changes = {k: changes.pop(k) for k in list(changes) if k in {f.name for f in fields(RetryPolicy)}}
    retry = replace(settings.retry, **retry_changes) if retry_changes else settings.retry
    return replace(settings, retry=retry, **changes)
