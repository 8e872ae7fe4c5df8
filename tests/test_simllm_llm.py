"""SimulatedLLM: PlanExe's call shape (as_structured_llm(...).chat) works, deterministically, from many threads."""
from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Literal, Optional

import pytest
from llama_index.core.llms import ChatMessage
from pydantic import BaseModel, Field

from planexe_concurrency.simllm import SimulatedLLM, SimulatedProviderError


class Level(str, Enum):
    A = "a"
    B = "b"


class Expert(BaseModel):
    name: str
    expertise: list[str] = Field(min_length=1, max_length=3)
    level: Level
    years: int = Field(ge=1, le=40)


class ExpertList(BaseModel):
    """Experts to consult {as in PlanExe}."""

    experts: list[Expert] = Field(min_length=4, max_length=8)
    rationale: Optional[str] = None
    mode: Literal["quick", "deep"]


class Assumption(BaseModel):
    text: str = Field(max_length=40)
    confidence: float = Field(ge=0, le=1)
    related: Optional[Expert] = None


class Assumptions(BaseModel):
    items: list[Assumption]
    question_ids: list[int] = Field(min_length=0, max_length=2)


MODELS = (Expert, ExpertList, Assumption, Assumptions)


def _messages(user: str) -> list[ChatMessage]:
    return [
        ChatMessage(role="system", content="You are a planning assistant. Reply with JSON {like this}."),
        ChatMessage(role="user", content=user),
    ]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_structured_chat_returns_valid_instance(simulated_llm: SimulatedLLM, model: type[BaseModel]) -> None:
    out = simulated_llm.as_structured_llm(model).chat(_messages("Plan a bakery."))
    assert isinstance(out.raw, model)
    assert model.model_validate_json(out.message.content or "") == out.raw
    # user-only conversation: llama-index puts the schema in the last message instead
    only_user = simulated_llm.as_structured_llm(model).chat([ChatMessage(role="user", content="Plan a bakery.")])
    assert isinstance(only_user.raw, model)


def test_metadata_is_plain_completion_model() -> None:
    md = SimulatedLLM(model_name="sim-x").metadata
    assert not md.is_chat_model and not md.is_function_calling_model
    assert md.context_window >= 100_000 and md.model_name == "sim-x"


def test_same_prompt_same_bytes_across_instances() -> None:
    a = SimulatedLLM().as_structured_llm(ExpertList).chat(_messages("Plan a bakery."))
    b = SimulatedLLM().as_structured_llm(ExpertList).chat(_messages("Plan a bakery."))
    c = SimulatedLLM().as_structured_llm(ExpertList).chat(_messages("Plan a brewery."))
    other_model = SimulatedLLM(model_name="other").as_structured_llm(ExpertList).chat(_messages("Plan a bakery."))
    assert a.message.content == b.message.content
    assert a.message.content != c.message.content
    assert a.message.content != other_model.message.content


def test_prompts_differing_only_in_uuids_get_the_same_answer(simulated_llm: SimulatedLLM) -> None:
    def ask(run_id: str) -> str:
        return simulated_llm.as_structured_llm(Expert).chat(_messages(f"Run {run_id}: plan.")).message.content or ""

    assert ask(str(uuid.uuid4())) == ask(str(uuid.uuid4()))


def test_concurrent_threads_match_sequential() -> None:
    llm = SimulatedLLM(latency="uniform:0.001:0.01")
    prompts = [f"Plan number {i % 5}" for i in range(16)]  # repeats and distinct prompts mixed
    models = [MODELS[i % len(MODELS)] for i in range(16)]

    def ask(i: int) -> str:
        return llm.as_structured_llm(models[i]).chat(_messages(prompts[i])).message.content or ""

    sequential = [ask(i) for i in range(16)]
    for _ in range(3):
        with ThreadPoolExecutor(16) as pool:
            assert list(pool.map(ask, range(16))) == sequential
    assert llm.call_count == 16 * 4


def test_plain_chat_and_complete(simulated_llm: SimulatedLLM) -> None:
    text = simulated_llm.complete("Describe the plan.").text
    assert text and text == simulated_llm.complete("Describe the plan.").text
    assert text != simulated_llm.complete("Describe another plan.").text
    chat = simulated_llm.chat([ChatMessage(role="user", content="Describe the plan.")])
    assert chat.message.content and chat.message.role == "assistant"
    streamed = list(simulated_llm.stream_complete("Describe the plan."))
    assert len(streamed) > 1 and "".join(r.delta or "" for r in streamed) == text == streamed[-1].text


def test_latency_sleeps_in_parallel_not_serially() -> None:
    llm = SimulatedLLM(latency=0.05)
    t0 = time.perf_counter()
    llm.complete("one")
    assert time.perf_counter() - t0 >= 0.05
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: llm.complete(f"p{i}"), range(8)))
    assert time.perf_counter() - t0 < 0.05 * 8 / 2, "calls must overlap, not queue behind a lock"


def test_async_calls_overlap() -> None:
    llm = SimulatedLLM(latency=0.05)

    async def main() -> list[str]:
        results = await asyncio.gather(*(llm.acomplete(f"p{i}") for i in range(8)))
        return [r.text for r in results]

    t0 = time.perf_counter()
    texts = asyncio.run(main())
    assert time.perf_counter() - t0 < 0.2
    assert texts == [llm.complete(f"p{i}").text for i in range(8)]
    out = asyncio.run(llm.as_structured_llm(Expert).achat(_messages("async plan")))
    assert isinstance(out.raw, Expert)


def test_bad_latency_spec_rejected_at_construction() -> None:
    with pytest.raises(ValueError):
        SimulatedLLM(latency="gamma:1:2")
    assert SimulatedLLM(latency="lognormal:0.01:0.5").complete("x").text


def test_fail_raises_provider_error() -> None:
    llm = SimulatedLLM(fail=True)
    with pytest.raises(SimulatedProviderError):
        llm.complete("x")
    with pytest.raises(SimulatedProviderError):
        llm.as_structured_llm(Expert).chat(_messages("x"))
