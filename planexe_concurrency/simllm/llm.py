"""In-process simulated LLM: a llama-index CustomLLM answering from the shared generator.

PlanExe calls ``llm.as_structured_llm(Model).chat(messages)``; with ``is_function_calling_model``
False llama-index embeds the model's JSON schema in the prompt, and the generator answers
with a JSON object valid for it. No network, no shared mutable state except a locked counter.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from llama_index.core.base.llms.types import (
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from .generator import LatencyModel, SimResponse, respond

logger = logging.getLogger(__name__)

__all__ = ["SimulatedLLM", "SimulatedProviderError"]


class SimulatedProviderError(RuntimeError):
    """Raised by a SimulatedLLM built with ``fail=True``, so fallback paths can be exercised."""


class SimulatedLLM(CustomLLM):
    """Deterministic fake LLM: the same prompt always gives the same bytes (and the same latency)."""

    latency: float | str = Field(default=0.0, description="Seconds, or a LatencyModel spec such as 'uniform:0.1:0.5'.")
    fail: bool = Field(default=False, description="Always raise SimulatedProviderError.")
    model_name: str = Field(default="simulated", description="Part of every request key.")
    context_window: int = Field(default=1_000_000)
    num_output: int = Field(default=16_384)

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _calls: int = PrivateAttr(default=0)

    @field_validator("latency")
    @classmethod
    def _check_latency(cls, value: float | str) -> float | str:
        LatencyModel.parse(value)  # fail at construction, not on the first call
        return value

    @classmethod
    def class_name(cls) -> str:
        return "simulated_llm"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.num_output,
            is_chat_model=False,
            is_function_calling_model=False,
            model_name=self.model_name,
        )

    @property
    def call_count(self) -> int:
        """Calls made on this instance (informational only; answers never depend on it)."""
        with self._lock:
            return self._calls

    def _latency_model(self) -> LatencyModel:
        return LatencyModel.parse(self.latency)

    def _answer(self, prompt: str) -> tuple[SimResponse, float]:
        with self._lock:
            self._calls += 1
        if self.fail:
            raise SimulatedProviderError(f"simulated provider failure (model {self.model_name!r})")
        response = respond([{"role": "user", "content": prompt}], model=self.model_name)
        return response, self._latency_model().sample(response.key)

    @staticmethod
    def _to_completion(response: SimResponse) -> CompletionResponse:
        return CompletionResponse(
            text=response.text or "",
            raw={
                "key": response.key,
                "kind": response.kind,
                "usage": {
                    "prompt_tokens": response.prompt_tokens,
                    "completion_tokens": response.completion_tokens,
                    "total_tokens": response.total_tokens,
                },
            },
        )

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        response, delay = self._answer(prompt)
        if delay > 0:
            time.sleep(delay)
        return self._to_completion(response)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        response, delay = self._answer(prompt)

        def gen() -> CompletionResponseGen:
            if delay > 0:
                time.sleep(delay)
            text = response.text or ""
            pieces = _split_keep(text, 4)
            so_far = ""
            for piece in pieces:
                so_far += piece
                yield CompletionResponse(text=so_far, delta=piece)

        return gen()

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        # Sleep without blocking the event loop so async callers see real overlap.
        response, delay = self._answer(prompt)
        if delay > 0:
            await asyncio.sleep(delay)
        return self._to_completion(response)


def _split_keep(text: str, parts: int) -> list[str]:
    """Split text into up to ``parts`` consecutive chunks whose concatenation is the text."""
    if not text:
        return [""]
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]
