"""Build LLMs by name: the double knows only simulated providers.

* ``simulated``: ``SimulatedLLM``, latency from ``PLANEXE_SIMLLM_LATENCY`` (seconds or a spec such
  as ``uniform:0.1:0.5``; default 0);
* ``simulated-fail``: a ``SimulatedLLM`` that always raises (exercises the fallback);
* ``simulated-http``: llama-index ``OpenAILike`` talking to the simulated HTTP server at
  ``PLANEXE_SIMLLM_URL`` (imported lazily, so the optional dependency is only needed when used);
* ``simulated-http-broken``: the same, asking for model ``broken`` (start the server with
  ``fail_models=("broken",)`` for a provider model that always fails).

PlanExe reads its models from ``llm_config.json``; the double has no config file.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from llama_index.core.llms.llm import LLM

__all__ = ["SPECIAL_AUTO_ID", "get_llm", "get_llm_names_by_priority", "is_valid_llm_name"]

SPECIAL_AUTO_ID = "auto"

LATENCY_ENV = "PLANEXE_SIMLLM_LATENCY"
URL_ENV = "PLANEXE_SIMLLM_URL"
TIMEOUT_ENV = "PLANEXE_SIMLLM_TIMEOUT"  # the client's timeout in seconds (default 60)

_NAMES = ("simulated", "simulated-fail", "simulated-http", "simulated-http-broken")


def get_llm_names_by_priority() -> list[str]:
    """The models to try, best first (PlanExe derives this from llm_config.json priorities)."""
    return ["simulated"]


def is_valid_llm_name(llm_name: str) -> bool:
    return llm_name in _NAMES


def _latency_from_env() -> float | str:
    raw = os.environ.get(LATENCY_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        return float(raw)
    except ValueError:
        return raw  # a LatencyModel spec; SimulatedLLM validates it


def get_llm(llm_name: Optional[str] = None, **kwargs: Any) -> LLM:
    """A fresh LLM instance for ``llm_name`` (default: the first name by priority)."""
    name = llm_name or get_llm_names_by_priority()[0]
    if name in ("simulated", "simulated-fail"):
        from planexe_concurrency.simllm import SimulatedLLM

        return SimulatedLLM(latency=_latency_from_env(), fail=(name == "simulated-fail"), **kwargs)
    if name in ("simulated-http", "simulated-http-broken"):
        from llama_index.llms.openai_like import OpenAILike

        url = os.environ.get(URL_ENV)
        if not url:
            raise ValueError(f"LLM {name!r} needs {URL_ENV} (the simulated server's base URL)")
        return OpenAILike(
            model="broken" if name.endswith("-broken") else "simulated",
            api_base=url.rstrip("/") + "/v1",
            api_key="sim",
            is_chat_model=True,
            is_function_calling_model=False,
            timeout=float(os.environ.get(TIMEOUT_ENV, "60")),
            max_retries=0,
            **kwargs,
        )
    raise ValueError(f"Unknown LLM name {name!r}; the PlanExe double knows {', '.join(_NAMES)}")
