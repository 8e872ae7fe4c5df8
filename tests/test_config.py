"""Settings: luigi.cfg, command line and code; ranges and types refused with a clear message."""
from __future__ import annotations

import pytest

from conftest import set_concurrency
from luigi.cmdline_parser import CmdlineParser

from planexe_concurrency.config import (
    ConfigError,
    FanOutSettings,
    RetryPolicy,
    load_settings,
    read_config,
    task_value,
    with_overrides,
)


def test_defaults(luigi_config) -> None:
    s = load_settings()
    assert s == FanOutSettings(max_parallel=4, failure_mode="fail_fast", requests_per_minute=0.0, retry=RetryPolicy())
    cfg = read_config()
    assert cfg.fidelity == "exact" and cfg.governance_parallel is False


def test_values_from_luigi_cfg(luigi_config) -> None:
    _set(luigi_config, "max_parallel", "8")
    _set(luigi_config, "failure_mode", "continue_on_error")
    _set(luigi_config, "retry_attempts", "5")
    s = load_settings()
    assert (s.max_parallel, s.failure_mode, s.retry.attempts) == (8, "continue_on_error", 5)


def test_values_from_command_line(luigi_config) -> None:
    with CmdlineParser.global_instance(["--planexe-concurrency-max-parallel", "16", "--planexe-concurrency-requests-per-minute", "120", "RangeDailyBase"]):
        s = load_settings()
    assert s.max_parallel == 16 and s.requests_per_minute == 120.0


def test_the_section_is_parsed_again_only_when_its_sources_change(luigi_config, monkeypatch) -> None:
    """A task asks for the settings several times; parsing every parameter each time was ~8 ms of its start."""
    import planexe_concurrency.config as config

    parsed = []
    section = config.planexe_concurrency
    monkeypatch.setattr(config, "planexe_concurrency", lambda: parsed.append(1) or section())
    monkeypatch.setattr(config, "_read", None)
    read_config()
    read_config()
    assert len(parsed) == 1
    _set(luigi_config, "max_parallel", "8")  # luigi.cfg changed
    assert read_config().max_parallel == 8 and len(parsed) == 2
    with CmdlineParser.global_instance(["--planexe-concurrency-max-parallel", "16", "RangeDailyBase"]):
        assert read_config().max_parallel == 16  # a command line
    assert read_config().max_parallel == 8


def _set(cfg, key: str, value: str) -> None:
    set_concurrency(cfg, **{key: value})


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("max_parallel", "0", "max_parallel = 0 is not allowed: expected an integer in 1..32"),
        ("max_parallel", "33", "max_parallel = 33 is not allowed: expected an integer in 1..32"),
        ("failure_mode", "sometimes", "failure_mode = 'sometimes' is not allowed: expected one of fail_fast | continue_on_error"),
        ("requests_per_minute", "-1", "requests_per_minute = -1.0 is not allowed"),
        ("retry_attempts", "0", "retry_attempts = 0 is not allowed: expected an integer in 1..20"),
        ("fidelity", "loose", "fidelity = 'loose' is not allowed: expected one of exact | relaxed"),
    ],
)
def test_out_of_range_is_refused_naming_setting_value_and_range(luigi_config, key: str, value: str, expected: str) -> None:
    _set(luigi_config, key, value)
    with pytest.raises(ConfigError, match="") as info:
        load_settings()
    assert expected in str(info.value)
    assert str(info.value).startswith("[planexe_concurrency]")


def test_wrong_type_is_refused_naming_setting(luigi_config) -> None:
    _set(luigi_config, "max_parallel", "four")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "max_parallel = 'four' cannot be parsed as IntParameter" in str(info.value)


def test_backoff_max_below_base_is_refused(luigi_config) -> None:
    _set(luigi_config, "retry_backoff_base", "10")
    _set(luigi_config, "retry_backoff_max", "2")
    with pytest.raises(ConfigError, match="retry_backoff_max = 2.0 is not allowed: expected a number >= retry_backoff_base"):
        load_settings()


def test_per_task_override_wins_over_global(luigi_config) -> None:
    _set(luigi_config, "max_parallel", "4")
    _set(luigi_config, "task_overrides", '{"CreateWBSLevel3Task": {"max_parallel": 16, "retry_attempts": 1, "fidelity": "relaxed"}}')
    assert load_settings(task="CreateWBSLevel3Task").max_parallel == 16
    assert load_settings(task="CreateWBSLevel3Task").retry.attempts == 1
    assert load_settings(task="ExpertReviewTask").max_parallel == 4
    cfg = read_config()
    assert task_value(cfg, "fidelity", "CreateWBSLevel3Task") == "relaxed"
    assert task_value(cfg, "fidelity", "ExpertReviewTask") == "exact"


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ('{"NoSuchTask": {"max_parallel": 2}}', "task_overrides names an unknown task 'NoSuchTask'"),
        ('{"KnownTask": {"speed": 2}}', "task_overrides['KnownTask'] has unknown setting 'speed'"),
        ('{"KnownTask": {"max_parallel": 99}}', "task_overrides['KnownTask'].max_parallel = 99 is not allowed"),
        ('{"KnownTask": 3}', "task_overrides['KnownTask'] must be a mapping"),
    ],
)
def test_bad_overrides_are_refused(luigi_config, overrides: str, expected: str) -> None:
    _set(luigi_config, "task_overrides", overrides)
    with pytest.raises(ConfigError) as info:
        load_settings(known_tasks=["KnownTask"])
    assert expected in str(info.value)


def test_with_overrides_changes_top_level_and_retry_fields() -> None:
    s = with_overrides(FanOutSettings(), max_parallel=9, attempts=1, jitter=0.0)
    assert s.max_parallel == 9 and s.retry.attempts == 1 and s.retry.jitter == 0.0


def test_overrides_must_be_a_mapping(luigi_config) -> None:
    _set(luigi_config, "task_overrides", "[1, 2]")
    with pytest.raises(ConfigError, match="task_overrides must be a mapping of task name to settings"):
        load_settings()


def test_command_line_type_error_names_the_setting(luigi_config) -> None:
    with CmdlineParser.global_instance(["--planexe-concurrency-retry-jitter", "lots", "RangeDailyBase"]):
        with pytest.raises(ConfigError, match="retry_jitter = '<command line>' cannot be parsed as FloatParameter"):
            load_settings()
