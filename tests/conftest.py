"""Shared fixtures: a clean Luigi configuration per test, and the simulated provider's fixtures."""
from __future__ import annotations

from typing import Iterator

import luigi
import luigi.configuration
import pytest


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
