"""Simulated LLM provider: deterministic answers, in process or over OpenAI-compatible HTTP.

Tests and benchmarks use it in place of a real model: the same request always gets the
same answer and the same latency, whatever the concurrency.

``SimulatedLLM`` is imported lazily: the HTTP server and its CLI need no llama-index, and
skipping that import makes a benchmark's server process start in a fraction of a second.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .generator import LatencyModel, SimResponse, SimToolCall, json_for_schema, normalize_for_hash, request_key, respond
from .server import RequestRecord, SimServer, SimServerConfig, load_log

__all__ = [
    "LatencyModel",
    "RequestRecord",
    "SimResponse",
    "SimServer",
    "SimServerConfig",
    "SimToolCall",
    "SimulatedLLM",
    "SimulatedProviderError",
    "json_for_schema",
    "load_log",
    "normalize_for_hash",
    "request_key",
    "respond",
]

if TYPE_CHECKING:  # pragma: no cover
    from .llm import SimulatedLLM, SimulatedProviderError


def __getattr__(name: str) -> Any:
    if name in ("SimulatedLLM", "SimulatedProviderError"):
        from . import llm

        return getattr(llm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
