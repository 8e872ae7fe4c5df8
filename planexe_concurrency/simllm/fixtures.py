"""pytest fixtures for the simulated provider (registered via ``pytest_plugins``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest

from .server import SimServer, SimServerConfig

if TYPE_CHECKING:  # pragma: no cover
    from .llm import SimulatedLLM


@pytest.fixture
def sim_server() -> Iterator[SimServer]:
    """A started simulated server with the default config (no latency, no limits, no faults)."""
    server = SimServer(SimServerConfig()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sim_server_factory() -> Iterator[Callable[..., SimServer]]:
    """``factory(**config)`` starts a server with that SimServerConfig; all are stopped at teardown."""
    started: list[SimServer] = []

    def factory(**config: Any) -> SimServer:
        server = SimServer(SimServerConfig(**config)).start()
        started.append(server)
        return server

    try:
        yield factory
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture
def simulated_llm() -> "SimulatedLLM":
    """A fresh in-process simulated LLM with no latency."""
    from .llm import SimulatedLLM  # llama-index is imported only by tests that use it

    return SimulatedLLM()
