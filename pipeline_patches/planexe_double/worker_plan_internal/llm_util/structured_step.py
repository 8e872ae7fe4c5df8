"""The one-LLM-call step most of the double's tasks are made of, and small shared helpers.

Determinism: nothing written to a run directory depends on ``uuid4``, and only one thing on the
clock: as PlanExe does, each raw file records its call's duration in whole seconds, rounded up
(:func:`llm_metadata`), so the same answers replayed instantly would show up as shorter calls. Where
PlanExe draws random ids (levers, documents, team members, experts, WBS tasks) the double
derives them with :func:`stable_uuid` (``uuid5`` of the item's content and position), so two
sequential runs of the double write byte-identical files, and so does a concurrent run that
makes the same calls in another order.

Prompts: plain tasks send a *digest* of each input file (:func:`digest_query`), not its text,
so prompts stay small while every answer still depends on every input. The loop tasks build
full-text queries (:func:`file_blocks`), as PlanExe's loops do.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.llms.llm import LLM
from pydantic import BaseModel, Field, create_model

__all__ = [
    "StructuredStep",
    "digest_query",
    "exact_list_model",
    "file_blocks",
    "llm_metadata",
    "plain_chat",
    "render_markdown",
    "sha256_hex",
    "stable_uuid",
    "structured_chat",
    "structured_complete",
]

# Fixed namespace for the double's uuid5 ids (any constant works; it must never change).
DOUBLE_UUID_NAMESPACE = uuid.UUID("5d0b7f0e-3c1a-4e8e-9b1f-6a2c4d8e0f17")


def stable_uuid(*parts: object) -> str:
    """A UUID that depends only on ``parts`` (stands in for PlanExe's ``uuid4``)."""
    return str(uuid.uuid5(DOUBLE_UUID_NAMESPACE, "\x1f".join(str(p) for p in parts)))


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_DURATION = re.compile(r'"duration": \d+')


def without_durations(text: str) -> str:
    """``text`` with every call duration set to 0: PlanExe's prompts leave out its raw files'
    metadata, so a later prompt must not depend on how long an earlier call took."""
    return _DURATION.sub('"duration": 0', text)


def digest_query(files: Sequence[tuple[str, str]]) -> str:
    """A short user prompt naming each input file with the sha256 of its content (durations left out)."""
    lines = []
    for name, text in files:
        plain = without_durations(text)
        lines.append(f"Input '{name}' sha256={sha256_hex(plain)} chars={len(plain)}")
    return "\n".join(lines)


def file_blocks(files: Sequence[tuple[str, str]]) -> str:
    """A full-text user prompt: each input file under its name, in the given order."""
    return "\n\n".join(f"File '{name}':\n{without_durations(text)}" for name, text in files)


_timing = threading.local()


def _timed(ask: Any) -> Any:
    started = time.perf_counter()
    try:
        return ask()
    finally:
        _timing.duration = time.perf_counter() - started


def llm_metadata(llm: LLM) -> dict[str, Any]:
    """What a raw file records about the model and the call: as PlanExe, the duration in whole seconds, rounded up."""
    return {
        "llm_classname": llm.class_name(),
        "model_name": getattr(llm.metadata, "model_name", None),
        "duration": int(math.ceil(getattr(_timing, "duration", 0.0))),
    }


def structured_chat(llm: LLM, response_model: type[BaseModel], messages: list[ChatMessage]) -> Any:
    """``llm.as_structured_llm(M).chat(messages)``, PlanExe's way of asking for a pydantic answer (timed)."""
    return _timed(lambda: llm.as_structured_llm(response_model).chat(messages))


def plain_chat(llm: LLM, messages: list[ChatMessage]) -> Any:
    """``llm.chat(messages)`` (timed)."""
    return _timed(lambda: llm.chat(messages))


def structured_complete(llm: LLM, response_model: type[BaseModel], prompt: str) -> Any:
    """``llm.as_structured_llm(M).complete(prompt)`` (timed)."""
    return _timed(lambda: llm.as_structured_llm(response_model).complete(prompt))


def system_user(system_prompt: str, user_prompt: str) -> list[ChatMessage]:
    return [
        ChatMessage(role=MessageRole.SYSTEM, content=system_prompt),
        ChatMessage(role=MessageRole.USER, content=user_prompt),
    ]


def exact_list_model(name: str, field_name: str, item_type: type, count: int, description: str) -> type[BaseModel]:
    """A response model whose one list field must hold exactly ``count`` items (one per input item)."""
    count = max(1, count)
    return create_model(  # type: ignore[call-overload]
        name,
        **{field_name: (list[item_type], Field(min_length=count, max_length=count, description=description))},
    )


def _title(key: str) -> str:
    return key.replace("_", " ").strip().capitalize()


def render_markdown(data: Any, level: int = 2) -> str:
    """A plain markdown rendering of a JSON-like answer (headings for keys, bullets for lists)."""
    rows: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            rows.append(f"{'#' * level} {_title(key)}\n")
            rows.append(render_markdown(value, level + 1))
    elif isinstance(data, list):
        for index, item in enumerate(data, start=1):
            if isinstance(item, dict):
                rows.append(f"{'#' * level} Item {index}\n")
                rows.extend(f"- **{_title(k)}**: {_inline(v)}" for k, v in item.items())
                rows.append("")
            else:
                rows.append(f"- {_inline(item)}")
        rows.append("")
    else:
        rows.append(f"{data}\n")
    return "\n".join(rows).rstrip() + "\n"


def _inline(value: Any) -> str:
    if isinstance(value, list):
        return "; ".join(_inline(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_inline(v)}" for k, v in value.items())
    return str(value)


def write_json(path: str, data: Any) -> None:
    """PlanExe's raw-file format: ``json.dump(data, f, indent=2)``."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


def write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


class PromptedResponse:
    """The raw-file shape of a one-answer class, as PlanExe's: the answer, then metadata and prompts.

    Subclasses (dataclasses) provide ``response``, ``metadata``, ``system_prompt`` and ``user_prompt``.
    """

    response: dict[str, Any]
    metadata: dict[str, Any]
    system_prompt: str
    user_prompt: str

    def to_dict(self, include_metadata: bool = True, include_system_prompt: bool = True, include_user_prompt: bool = True) -> dict[str, Any]:
        d = dict(self.response)
        if include_metadata:
            d["metadata"] = self.metadata
        if include_system_prompt:
            d["system_prompt"] = self.system_prompt
        if include_user_prompt:
            d["user_prompt"] = self.user_prompt
        return d

    def save_raw(self, file_path: str) -> None:
        write_json(str(file_path), self.to_dict())


@dataclass
class StructuredStep(PromptedResponse):
    """One structured LLM call. Subclasses set ``RESPONSE_MODEL`` and ``SYSTEM_PROMPT``.

    ``USE_COMPLETE`` mirrors PlanExe steps that call ``sllm.complete(prompt)`` instead of
    ``sllm.chat(messages)`` (the WBS, dependency and pitch steps).
    """

    system_prompt: str
    user_prompt: str
    response: dict[str, Any]
    metadata: dict[str, Any]

    RESPONSE_MODEL: ClassVar[type[BaseModel]]
    SYSTEM_PROMPT: ClassVar[str] = "You are a careful project planner. Answer with the requested JSON."
    TITLE: ClassVar[str] = ""
    USE_COMPLETE: ClassVar[bool] = False

    @classmethod
    def response_model(cls, **context: Any) -> type[BaseModel]:
        return cls.RESPONSE_MODEL

    @classmethod
    def system_prompt_for(cls, **context: Any) -> str:
        return cls.SYSTEM_PROMPT

    @classmethod
    def execute(cls, llm: LLM, user_prompt: str, **context: Any) -> "StructuredStep":
        if not isinstance(llm, LLM):
            raise ValueError("Invalid LLM instance.")
        if not isinstance(user_prompt, str):
            raise ValueError("Invalid user_prompt.")
        system_prompt = cls.system_prompt_for(**context)
        model = cls.response_model(**context)
        if cls.USE_COMPLETE:
            completion = structured_complete(llm, model, f"{system_prompt}\n\n{user_prompt}")
            response = json.loads(completion.text)
        else:
            chat_response = structured_chat(llm, model, system_user(system_prompt, user_prompt))
            response = chat_response.raw.model_dump(mode="json")
        step = cls(system_prompt=system_prompt, user_prompt=user_prompt, response=response, metadata=llm_metadata(llm))
        step.after_response(**context)
        return step

    def after_response(self, **context: Any) -> None:
        """Hook for steps that derive more from the answer (ids, merged lists)."""

    @property
    def markdown(self) -> str:
        body = render_markdown(self.response)
        return f"# {self.TITLE}\n\n{body}" if self.TITLE else body

    def save_markdown(self, file_path: str) -> None:
        write_text(str(file_path), self.markdown)
