"""The simulated provider's generator: schema-valid, deterministic, and blind to random UUIDs."""
from __future__ import annotations

import datetime as dt
import json
import statistics
import uuid
from enum import Enum
from typing import Any, Literal, Optional, Sequence

import pytest
from llama_index.core.base.llms.types import CompletionResponse, LLMMetadata
from llama_index.core.llms import ChatMessage
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.output_parsers.pydantic import PydanticOutputParser
from pydantic import BaseModel, Field, ValidationError

from planexe_concurrency.simllm import (
    LatencyModel,
    json_for_schema,
    normalize_for_hash,
    request_key,
    respond,
)
from planexe_concurrency.simllm.generator import find_schema_in_text


# --- a zoo of pydantic models shaped like PlanExe's ---------------------------------------


class Priority(str, Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class Risk(BaseModel):
    """A risk {with braces in the docstring}."""

    title: str = Field(description="Short name, e.g. {\"x\": 1}")
    likelihood: int = Field(ge=1, le=5)
    impact: float = Field(gt=0, lt=1)
    priority: Priority
    mitigation: Optional[str] = None


class RiskRegister(BaseModel):
    summary: str = Field(min_length=20, max_length=60)
    risks: list[Risk] = Field(min_length=2, max_length=4)
    status: Literal["draft", "final"]
    owner: Optional[Risk] = None
    tags: set[str] = Field(min_length=3, max_length=3)
    weights: dict[str, float]
    step: int = Field(default=10, multiple_of=5, ge=0, le=50)


class Milestone(BaseModel):
    name: str
    due: dt.date
    created: dt.datetime
    ident: uuid.UUID
    window: tuple[int, str]


class Plan(BaseModel):
    goal: str
    milestones: list[Milestone]
    notes: list[str] = Field(max_length=2)
    flags: list[bool] = Field(min_length=1)
    budget: float | None = None
    anything: Any = None


class Node(BaseModel):
    label: str
    children: list["Node"] = Field(default_factory=list)


class Tree(BaseModel):
    root: Node


MODELS: Sequence[type[BaseModel]] = (Risk, RiskRegister, Milestone, Plan, Tree)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("seed", ["a", "b", "c", "d", "e"])
def test_json_for_schema_validates(model: type[BaseModel], seed: str) -> None:
    value = json_for_schema(model.model_json_schema(), seed)
    model.model_validate(value)  # raises if invalid
    # and it survives a JSON round trip, as it does on the wire
    model.model_validate_json(json.dumps(value))


def test_json_for_schema_respects_bounds_across_seeds() -> None:
    schema = RiskRegister.model_json_schema()
    lengths = set()
    for i in range(30):
        v = json_for_schema(schema, f"s{i}")
        assert 2 <= len(v["risks"]) <= 4
        assert 20 <= len(v["summary"]) <= 60
        assert len(set(v["tags"])) == 3
        assert v["step"] % 5 == 0 and 0 <= v["step"] <= 50
        for r in v["risks"]:
            assert 1 <= r["likelihood"] <= 5 and 0 < r["impact"] < 1
            assert r["priority"] in {"low", "medium", "high"}
        lengths.add(len(v["risks"]))
    assert len(lengths) > 1, "list lengths within bounds should vary with the seed"


def test_json_for_schema_defaults_and_readable_strings() -> None:
    v = json_for_schema(Plan.model_json_schema(), "seed")
    assert len(v["milestones"]) == 3, "unbounded arrays have length 3"
    assert 1 <= len(v["notes"]) <= 2
    assert v["goal"].startswith("goal: ")
    assert all(w.isascii() for w in v["goal"].split())


def test_json_for_schema_deterministic_and_field_stable() -> None:
    schema = RiskRegister.model_json_schema()
    assert json_for_schema(schema, "x") == json_for_schema(schema, "x")
    assert json_for_schema(schema, "x") != json_for_schema(schema, "y")

    class A(BaseModel):
        title: str
        count: int

    class B(BaseModel):
        title: str
        extra: str
        count: int

    a = json_for_schema(A.model_json_schema(), "k")
    b = json_for_schema(B.model_json_schema(), "k")
    assert a["title"] == b["title"] and a["count"] == b["count"]


def test_json_for_schema_recursive_model_terminates() -> None:
    v = json_for_schema(Tree.model_json_schema(), "deep")
    Tree.model_validate(v)


def test_json_for_schema_plain_json_schema_features() -> None:
    schema = {
        "type": "object",
        "properties": {
            "c": {"const": 7},
            "e": {"enum": ["p", "q"]},
            "n": {"type": "null"},
            "multi": {"type": ["integer", "null"], "minimum": 3, "maximum": 3},
            "d": {"default": {"k": 1}},
            "one": {"oneOf": [{"type": "null"}, {"type": "string", "maxLength": 4}]},
            "all": {"allOf": [{"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
                              {"properties": {"y": {"type": "boolean"}}}]},
            "num": {"type": "number", "exclusiveMinimum": 1, "exclusiveMaximum": 1.01},
            "email": {"type": "string", "format": "email"},
            "url": {"type": "string", "format": "uri"},
        },
    }
    v = json_for_schema(schema, "s")
    assert v["c"] == 7 and v["e"] in ("p", "q") and v["n"] is None and v["multi"] == 3
    assert v["d"] == {"k": 1}
    assert isinstance(v["one"], str) and len(v["one"]) <= 4
    assert set(v["all"]) == {"x", "y"}
    assert 1 < v["num"] < 1.01
    assert "@" in v["email"] and v["url"].startswith("https://")


# --- normalisation and keys ----------------------------------------------------------------


def test_normalize_for_hash_renames_uuids_in_order() -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    text = f"first {a} then {b} again {a.upper()} and deadbeef-not-a-uuid"
    assert normalize_for_hash(text) == "first uuid-1 then uuid-2 again uuid-1 and deadbeef-not-a-uuid"
    # a hex run longer than a UUID is left alone
    long = "0" * 9 + "-0000-0000-0000-000000000000"
    assert normalize_for_hash(long) == long


def test_request_key_identity() -> None:
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}]
    k = request_key(msgs, None, "m")
    assert k == request_key([dict(m) for m in msgs], None, "m")
    assert len(k) == 64
    assert k != request_key(msgs, None, "other-model")
    assert k != request_key(msgs[:1], None, "m")
    assert k != request_key([{"role": "user", "content": "sys"}, msgs[1]], None, "m")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert k != request_key(msgs, tools, "m")
    # llama-index ChatMessage objects and OpenAI content parts are read the same way
    assert k == request_key([ChatMessage(role="system", content="sys"), ChatMessage(role="user", content="hello")], None, "m")
    assert k == request_key([msgs[0], {"role": "user", "content": [{"type": "text", "text": "hello"}]}], None, "m")


def test_request_key_ignores_which_uuid() -> None:
    def make(u: str) -> list[dict]:
        return [{"role": "user", "content": f"run {u}: make a plan"}]

    assert request_key(make(str(uuid.uuid4())), None, "m") == request_key(make(str(uuid.uuid4())), None, "m")
    r1, r2 = respond(make(str(uuid.uuid4()))), respond(make(str(uuid.uuid4())))
    assert r1.text == r2.text


# --- finding the schema llama-index embeds ------------------------------------------------


class _Recorder(CustomLLM):
    """A non-chat LLM that records its prompts and answers from the generator."""

    prompts: list[str] = Field(default_factory=list)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=False)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self.prompts.append(prompt)
        return CompletionResponse(text=respond([{"role": "user", "content": prompt}]).text or "")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any):  # pragma: no cover
        raise NotImplementedError


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("with_system", [True, False])
def test_find_schema_in_real_llama_index_prompts(model: type[BaseModel], with_system: bool) -> None:
    llm = _Recorder()
    msgs = [ChatMessage(role="user", content='Make one. Context: {"k": {"nested": 1}} and {braces}')]
    if with_system:
        msgs.insert(0, ChatMessage(role="system", content="You are {x}. Answer in JSON."))
    out = llm.as_structured_llm(model).chat(msgs)
    assert isinstance(out.raw, model)
    assert len(llm.prompts) == 1 and "{{" in llm.prompts[0]  # the schema really was brace-doubled
    assert find_schema_in_text(llm.prompts[0]) == model.model_json_schema()


def test_find_schema_escaped_and_plain_and_absent() -> None:
    parser = PydanticOutputParser(RiskRegister)
    schema = RiskRegister.model_json_schema()
    assert find_schema_in_text(parser.format("question")) == schema
    assert find_schema_in_text(parser.get_format_string(escape_json=False)) == schema
    # no marker: any schema-looking object is found, the outermost one
    assert find_schema_in_text("Reply following " + json.dumps(schema) + " please") == schema
    assert find_schema_in_text("Reply following " + json.dumps(schema).replace("{", "{{").replace("}", "}}")) == schema
    assert find_schema_in_text("no schema here {\"a\": 1} {\"properties\": 3}") is None
    assert find_schema_in_text("") is None


# --- whole responses -----------------------------------------------------------------------


def _tool(model: type[BaseModel]) -> dict:
    return {"type": "function", "function": {"name": model.__name__, "description": "d", "parameters": model.model_json_schema()}}


def test_respond_tool_call_valid_and_chosen() -> None:
    msgs = [{"role": "user", "content": "fill it"}]
    r = respond(msgs, [_tool(Risk), _tool(Plan)])
    assert r.kind == "tool" and r.finish_reason == "tool_calls" and r.text is None
    (call,) = r.tool_calls
    assert call.name == "Risk" and call.id.startswith("call_")
    Risk.model_validate_json(call.arguments)

    chosen = respond(msgs, [_tool(Risk), _tool(Plan)], tool_choice={"type": "function", "function": {"name": "Plan"}})
    assert chosen.tool_calls[0].name == "Plan"
    Plan.model_validate_json(chosen.tool_calls[0].arguments)
    assert respond(msgs, [_tool(Risk)], tool_choice="none").kind == "text"
    # after a tool result the model talks instead of calling again
    follow = msgs + [{"role": "assistant", "content": None, "tool_calls": []}, {"role": "tool", "content": "ok", "tool_call_id": "1"}]
    assert respond(follow, [_tool(Risk)]).kind == "text"


def test_respond_json_text_and_plain_text() -> None:
    prompt = PydanticOutputParser(Milestone).format("Give a milestone")
    r = respond([{"role": "system", "content": prompt}, {"role": "user", "content": "go"}])
    assert r.kind == "json" and r.finish_reason == "stop"
    Milestone.model_validate_json(r.text or "")

    p = respond([{"role": "user", "content": "Tell me about gardens."}], model="m1")
    assert p.kind == "text" and p.text and p.text.count(".") >= 2
    assert p.prompt_tokens == 4 and p.completion_tokens == len(p.text.split()) and p.total_tokens > 4
    assert respond([{"role": "user", "content": "Tell me about gardens."}], model="m1") == p
    assert respond([{"role": "user", "content": "Tell me about gardens."}], model="m2").text != p.text
    with pytest.raises(ValidationError):
        Milestone.model_validate_json(json.dumps({"name": "only"}))  # the check above can fail


# --- latency ---------------------------------------------------------------------------------


def test_latency_model_parse_and_sample() -> None:
    assert LatencyModel.parse("0.3") == LatencyModel("fixed", 0.3)
    assert LatencyModel.parse(0.2).sample("k") == 0.2
    assert LatencyModel.parse("fixed:0.1").mean == 0.1
    u = LatencyModel.parse("uniform:0.1:0.5")
    assert (u.kind, u.mean, round(u.spread, 9)) == ("uniform", 0.3, 0.2)
    samples = [u.sample(f"k{i}") for i in range(500)]
    assert all(0.1 <= s <= 0.5 for s in samples)
    assert u.sample("k1") == u.sample("k1") and len(set(samples)) > 400
    assert LatencyModel("uniform", 0.3, 0.2, seed=1).sample("k1") != u.sample("k1")
    ln = LatencyModel.parse("lognormal:0.3:0.5")
    ls = [ln.sample(f"k{i}") for i in range(4000)]
    assert all(s > 0 for s in ls) and 0.27 < statistics.fmean(ls) < 0.33
    assert LatencyModel.parse(ln) is ln and LatencyModel.parse(None).sample("x") == 0.0
    for bad in ("nope", "uniform:1", "gamma:1:2", "-1"):
        with pytest.raises(ValueError):
            LatencyModel.parse(bad)


def test_id_fields_echo_the_ids_the_prompt_listed() -> None:
    from planexe_concurrency.simllm.generator import ids_in

    class Assessment(BaseModel):
        lever_id: str
        doc_id: int
        note: str

    class Result(BaseModel):
        items: list[Assessment] = Field(min_length=3, max_length=3)

    a, b = "8f14e45f-ceea-467f-a0a4-6a2b1c7e8d90", "c9f0f895-fb98-4b9a-8a6f-0d1e2f3a4b5c"
    prompt = f"Levers: {a} and {b}. Documents: [{{'id': 0, 'name': 'x'}}, {{'id': 1, 'name': 'y'}}]. Budget id 'id': 77."
    assert ids_in([prompt]) == [a, b, 0, 1]
    value = json_for_schema(Result.model_json_schema(), "seed", ids_in([prompt]))
    Result.model_validate(value)
    assert [i["lever_id"] for i in value["items"]] == [a, b, a]
    assert [i["doc_id"] for i in value["items"]] == [0, 1, 0]
    assert all(i["note"] not in (a, b) for i in value["items"])
    # without ids, id fields are ordinary generated values
    plain = json_for_schema(Result.model_json_schema(), "seed")
    assert all(i["lever_id"] not in (a, b) for i in plain["items"])
