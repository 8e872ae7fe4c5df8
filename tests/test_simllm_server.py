"""The OpenAI-compatible simulated server: llama-index works against it both ways, limits and faults behave."""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import pytest
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai_like import OpenAILike
from pydantic import BaseModel, Field

from planexe_concurrency.simllm import SimServer, SimServerConfig, load_log
from planexe_concurrency.simllm.cli import serve_main
from planexe_concurrency.simllm.server import max_requests_in_window, peak_in_flight

Factory = Callable[..., SimServer]


class Phase(str, Enum):
    PLAN = "plan"
    BUILD = "build"


class Task(BaseModel):
    name: str
    hours: float = Field(gt=0, le=100)
    phase: Phase
    depends_on: list[str] = Field(default_factory=list, max_length=2)


class WorkBreakdown(BaseModel):
    """A WBS {as PlanExe asks for}."""

    title: str
    tasks: list[Task] = Field(min_length=2, max_length=5)
    lead: Optional[Task] = None
    level: Literal[1, 2, 3]


class Review(BaseModel):
    verdict: Literal["go", "no-go"]
    issues: list[str] = Field(min_length=1, max_length=3)
    score: int = Field(ge=0, le=10)


MODELS = (Task, WorkBreakdown, Review)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def post(url: str, path: str, payload: dict, timeout: float = 10.0) -> Reply:
    """One request on a fresh connection, so faults on one never affect another."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(payload), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def chat_payload(text: str, model: str = "simulated", **extra: Any) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def openai_like(server: SimServer, function_calling: bool, **kw: Any) -> OpenAILike:
    return OpenAILike(
        model=kw.pop("model", "simulated"),
        api_base=server.url + "/v1",
        api_key="x",
        is_chat_model=True,
        is_function_calling_model=function_calling,
        max_retries=kw.pop("max_retries", 0),
        timeout=kw.pop("timeout", 10),
        **kw,
    )


# --- llama-index against the server ------------------------------------------------------------


@pytest.mark.parametrize("function_calling", [True, False], ids=["tools", "prompt-schema"])
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_openai_like_structured_chat(sim_server: SimServer, model: type[BaseModel], function_calling: bool) -> None:
    llm = openai_like(sim_server, function_calling)
    msgs = [ChatMessage(role="system", content="You plan {things}."), ChatMessage(role="user", content="Plan a shed.")]
    out = llm.as_structured_llm(model).chat(msgs)
    assert isinstance(out.raw, model)
    (rec,) = sim_server.log
    assert rec.status == 200 and rec.kind == ("tool" if function_calling else "json")
    again = llm.as_structured_llm(model).chat(msgs)
    assert again.raw == out.raw


def test_openai_like_plain_stream_and_completions(sim_server: SimServer) -> None:
    chat_llm = openai_like(sim_server, False)
    text = chat_llm.complete("Say something.").text
    assert text and text == chat_llm.complete("Say something.").text
    streamed = "".join(c.delta or "" for c in chat_llm.stream_chat([ChatMessage(role="user", content="Say something.")]))
    assert streamed == text
    legacy = OpenAILike(model="simulated", api_base=sim_server.url + "/v1", api_key="x", is_chat_model=False, max_retries=0)
    assert legacy.complete("Say something.").text == text  # same request key on either endpoint
    assert [r.path for r in sim_server.log].count("/v1/completions") == 1


# --- raw protocol ------------------------------------------------------------------------------------


def test_chat_completion_shape_and_routes(sim_server: SimServer) -> None:
    r = post(sim_server.url, "/v1/chat/completions", chat_payload("hello"))
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "simulated"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert post(sim_server.url, "/chat/completions", chat_payload("hello")).body == r.body

    tools = [{"type": "function", "function": {"name": "Review", "parameters": Review.model_json_schema()}}]
    t = post(sim_server.url, "/v1/chat/completions", chat_payload("judge", tools=tools, tool_choice="auto")).json()
    call = t["choices"][0]["message"]["tool_calls"][0]
    assert t["choices"][0]["finish_reason"] == "tool_calls" and call["type"] == "function"
    assert call["function"]["name"] == "Review"
    Review.model_validate_json(call["function"]["arguments"])

    c = post(sim_server.url, "/v1/completions", {"model": "simulated", "prompt": "hello"}).json()
    assert c["object"] == "text_completion" and c["choices"][0]["text"] == choice["message"]["content"]

    conn = http.client.HTTPConnection("127.0.0.1", sim_server.port, timeout=5)
    conn.request("GET", "/v1/models")
    models = json.loads(conn.getresponse().read())
    assert models["object"] == "list" and models["data"][0]["id"] == "simulated"
    conn.close()
    assert post(sim_server.url, "/v1/nothing", {}).status == 404
    assert post(sim_server.url, "/v1/chat/completions", {"messages": "not a list"}).status == 400


def test_stream_true_gives_sse(sim_server: SimServer) -> None:
    plain = post(sim_server.url, "/v1/chat/completions", chat_payload("hello")).json()
    r = post(sim_server.url, "/v1/chat/completions", chat_payload("hello", stream=True, stream_options={"include_usage": True}))
    assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in r.body.decode().split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunk = json.loads(events[0])
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["choices"][0]["delta"]["content"] == plain["choices"][0]["message"]["content"]
    assert json.loads(events[1])["usage"]["total_tokens"] > 0


def test_same_request_same_bytes_under_concurrency(sim_server_factory: Factory) -> None:
    server = sim_server_factory(latency="uniform:0.005:0.03")
    payloads = [chat_payload(f"question {i % 4}", model=f"m{(i // 4) % 2}") for i in range(16)]
    sequential = [post(server.url, "/v1/chat/completions", p).body for p in payloads]
    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(lambda p: post(server.url, "/v1/chat/completions", p).body, payloads))
    assert concurrent == sequential
    assert len(set(sequential)) == 8


def test_uuid_only_differences_same_answer(sim_server: SimServer) -> None:
    a = post(sim_server.url, "/v1/chat/completions", chat_payload("id 1b4e28ba-2fa1-11d2-883f-0016d3cca427 go")).body
    b = post(sim_server.url, "/v1/chat/completions", chat_payload("id 6fa459ea-ee8a-3ca4-894e-db77e160355e go")).body
    assert a == b


# --- limits --------------------------------------------------------------------------------------------


def test_rpm_limit_answers_429_with_retry_after(sim_server_factory: Factory) -> None:
    server = sim_server_factory(requests_per_minute=5)
    replies = [post(server.url, "/v1/chat/completions", chat_payload(f"q{i}")) for i in range(8)]
    assert [r.status for r in replies] == [200] * 5 + [429] * 3
    for r in replies[5:]:
        assert 55 <= int(r.headers["retry-after"]) <= 60
        assert 0 < int(r.headers["retry-after-ms"]) <= 60_000
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert server.count(429) == 3 and server.count(200) == 5
    assert server.max_requests_in_window(60) == 5
    assert server.max_requests_in_window(60, accepted_only=False) == 8


def test_rpm_window_frees(sim_server_factory: Factory) -> None:
    server = sim_server_factory(requests_per_minute=2, rate_window_seconds=0.3)
    assert [post(server.url, "/v1/chat/completions", chat_payload(f"q{i}")).status for i in range(3)] == [200, 200, 429]
    time.sleep(0.35)
    assert post(server.url, "/v1/chat/completions", chat_payload("later")).status == 200
    assert server.max_requests_in_window(0.3) == 2


def test_max_concurrent_answers_429(sim_server_factory: Factory) -> None:
    server = sim_server_factory(max_concurrent=2, latency=0.2)
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda i: post(server.url, "/v1/chat/completions", chat_payload(f"q{i}")), range(6)))
    statuses = sorted(r.status for r in replies)
    assert statuses == [200, 200, 429, 429, 429, 429]
    for r in replies:
        if r.status == 429:
            assert int(r.headers["retry-after"]) == 1 and 0 < int(r.headers["retry-after-ms"]) <= 200
    assert server.peak_in_flight() == 2


def test_slots_queue_requests_in_arrival_order(sim_server_factory: Factory) -> None:
    """A local server (Ollama, llama.cpp) serves K at once and queues the rest: no 429, FIFO."""
    server = sim_server_factory(slots=2, latency=0.15)
    with ThreadPoolExecutor(6) as pool:
        futures = []
        for i in range(6):
            futures.append(pool.submit(post, server.url, "/v1/chat/completions", chat_payload(f"q{i}")))
            time.sleep(0.02)  # a known arrival order
        replies = [f.result() for f in futures]
    assert [r.status for r in replies] == [200] * 6
    log = sorted(server.log, key=lambda r: r.arrival)
    assert server.peak_in_flight() == 2
    assert [r.start for r in log] == sorted(r.start for r in log)  # served in the order they came
    assert log[-1].start - log[-1].arrival >= 0.15  # the last ones waited for a slot
    with pytest.raises(ValueError, match="slots"):
        SimServerConfig(slots=-1)


def test_a_long_answer_takes_longer_with_tokens_per_second(sim_server_factory: Factory) -> None:
    server = sim_server_factory(latency=0.01, tokens_per_second=2000)
    reply = post(server.url, "/v1/chat/completions", chat_payload("write a long text"))
    tokens = reply.json()["usage"]["completion_tokens"]
    (rec,) = server.log
    assert tokens > 0 and rec.end - rec.start >= 0.01 + tokens / 2000
    with pytest.raises(ValueError, match="tokens_per_second"):
        SimServerConfig(tokens_per_second=-1)


def test_openai_client_retries_after_429(sim_server_factory: Factory) -> None:
    server = sim_server_factory(max_concurrent=1, latency=0.03)
    llm = openai_like(server, False, max_retries=8)
    with ThreadPoolExecutor(3) as pool:
        texts = list(pool.map(lambda i: llm.complete(f"q{i}").text, range(3)))
    assert all(texts)
    assert server.count(200) == 3 and server.peak_in_flight() == 1


# --- faults ---------------------------------------------------------------------------------------------


def test_fault_rate_roughly_honoured(sim_server_factory: Factory) -> None:
    server = sim_server_factory(fault_rate=0.2, timeout_seconds=0.01, seed=3)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: _post_quietly(server.url, chat_payload(f"q{i}")), range(200)))
    faults = [r.fault for r in server.log]
    assert len(faults) == 200
    rate = sum(f is not None for f in faults) / 200
    assert 0.1 <= rate <= 0.3
    assert {f for f in faults if f} == {"500", "timeout", "drop", "malformed", "429"}
    expected = {"500": 500, "timeout": 504, "drop": 0, "malformed": 200, "429": 429, None: 200}
    assert all(r.status == expected[r.fault] for r in server.log)


def _post_quietly(url: str, payload: dict) -> Reply | None:
    try:
        return post(url, "/v1/chat/completions", payload)
    except (http.client.HTTPException, ConnectionError):
        return None


def test_each_fault_kind(sim_server_factory: Factory) -> None:
    url500 = sim_server_factory(fault_rate=1.0, faults=("500",)).url
    assert post(url500, "/v1/chat/completions", chat_payload("x")).status == 500

    timeout = sim_server_factory(fault_rate=1.0, faults=("timeout",), timeout_seconds=0.05)
    t0 = time.perf_counter()
    assert post(timeout.url, "/v1/chat/completions", chat_payload("x")).status == 504
    assert time.perf_counter() - t0 >= 0.05

    hang = sim_server_factory(fault_rate=1.0, faults=("timeout",), timeout_seconds=5, timeout_mode="hang")
    with pytest.raises(TimeoutError):
        post(hang.url, "/v1/chat/completions", chat_payload("x"), timeout=0.2)  # the client gives up

    drop = sim_server_factory(fault_rate=1.0, faults=("drop",))
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        post(drop.url, "/v1/chat/completions", chat_payload("x"))
    assert drop.log[0].status == 0 and drop.log[0].fault == "drop"

    throttled = post(sim_server_factory(fault_rate=1.0, faults=("429",), fault_retry_after=2).url, "/v1/chat/completions", chat_payload("x"))
    assert throttled.status == 429 and throttled.headers["retry-after"] == "2"

    bad = post(sim_server_factory(fault_rate=1.0, faults=("malformed",)).url, "/v1/chat/completions", chat_payload("x"))
    assert bad.status == 200
    with pytest.raises(json.JSONDecodeError):
        bad.json()


def test_retried_request_gets_fresh_fault_draws(sim_server_factory: Factory) -> None:
    def outcomes(server: SimServer) -> list[int]:
        return [post(server.url, "/v1/chat/completions", chat_payload("same")).status for _ in range(20)]

    first = outcomes(sim_server_factory(fault_rate=0.5, faults=("500",), seed=7))
    assert set(first) == {200, 500}, "the Nth arrival of a key is its own draw, so a retry can succeed"
    assert outcomes(sim_server_factory(fault_rate=0.5, faults=("500",), seed=7)) == first
    assert outcomes(sim_server_factory(fault_rate=0.5, faults=("500",), seed=8)) != first


def test_fail_models_get_500(sim_server_factory: Factory) -> None:
    server = sim_server_factory(fail_models=("broken",))
    assert post(server.url, "/v1/chat/completions", chat_payload("x", model="broken")).status == 500
    assert post(server.url, "/v1/chat/completions", chat_payload("x", model="fine")).status == 200
    with pytest.raises(Exception):
        openai_like(server, False, model="broken").complete("x")
    assert [r.fault for r in server.log] == ["fail_model", None, "fail_model"]


# --- the request log ----------------------------------------------------------------------------------


def test_log_peak_in_flight_and_dump_round_trip(sim_server_factory: Factory, tmp_path: Path) -> None:
    stream_path = tmp_path / "stream.jsonl"
    server = sim_server_factory(latency=0.2, log_path=str(stream_path))
    with ThreadPoolExecutor(8) as pool:
        assert all(r.status == 200 for r in pool.map(lambda i: post(server.url, "/v1/chat/completions", chat_payload(f"q{i}")), range(8)))
    log = server.log
    assert server.count() == 8 and server.count(200) == 8 and server.count(500) == 0
    assert server.peak_in_flight() == 8
    for rec in log:
        assert rec.arrival <= rec.start < rec.end and rec.end - rec.start >= 0.2
        assert rec.model == "simulated" and len(rec.key) == 64 and rec.attempt == 1
    path = tmp_path / "log.jsonl"
    server.dump_log(path)
    loaded = load_log(path)
    assert loaded == log
    assert load_log(stream_path) == log  # streamed as each request completed
    assert peak_in_flight(loaded) == 8 and max_requests_in_window(loaded, 1.0) == 8


def test_fixtures_and_lifecycle(sim_server: SimServer, sim_server_factory: Factory) -> None:
    assert sim_server.url.startswith("http://127.0.0.1:")
    a, b = sim_server_factory(), sim_server_factory(latency=0.01)
    assert len({sim_server.port, a.port, b.port}) == 3
    with SimServer(SimServerConfig()) as s:
        url = s.url
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=2)
        conn.request("POST", "/v1/chat/completions", json.dumps(chat_payload("x")))
        assert conn.getresponse().read()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("POST", "/v1/chat/completions", json.dumps(chat_payload("x")))  # keep-alive closed by stop()
        conn.getresponse().read()
    with pytest.raises(OSError):
        post(url, "/v1/chat/completions", chat_payload("x"), timeout=1)


def test_config_validation_and_loopback_only() -> None:
    with pytest.raises(ValueError):
        SimServerConfig(faults=("explode",))
    with pytest.raises(ValueError):
        SimServerConfig(fault_rate=1.5)
    with pytest.raises(ValueError):
        SimServer(SimServerConfig(host="0.0.0.0")).start()
    assert SimServerConfig(faults="500,drop").faults == ("500", "drop")  # type: ignore[arg-type]


# --- CLI ---------------------------------------------------------------------------------------------------


def test_cli_refuses_nonlocal_and_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_main(["--host", "0.0.0.0", "--port", "0"]) == 2
    assert "loopback" in capsys.readouterr().err
    assert serve_main(["--faults", "nope", "--port", "0"]) == 2
    assert serve_main(["--rpm", "many"]) == 2
    assert serve_main(["--help"]) == 0


def test_cli_serves_then_stops_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "cli.jsonl"
    code = (
        "import sys; from planexe_concurrency.simllm.cli import serve_main; "
        f"sys.exit(serve_main(['--port', '0', '--latency', '0.01', '--log', {str(log)!r}]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert post(url, "/v1/chat/completions", chat_payload("hello")).status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (rec,) = load_log(log)
    assert rec.status == 200 and rec.model == "simulated"


def test_server_sockets_send_without_nagle_delay(sim_server: SimServer) -> None:
    """Headers and body are two writes; without TCP_NODELAY each call waits for a delayed ACK (~40 ms)."""
    import socket

    seen: list[int] = []
    original = sim_server._track

    def track(conn: socket.socket, opened: bool) -> None:
        if opened:
            seen.append(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        original(conn, opened)

    sim_server._track = track  # type: ignore[method-assign]
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(sim_server.url).netloc)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    conn.close()
    assert seen and all(seen)


def test_most_at_once_counts_open_spans_from_any_iterable() -> None:
    from planexe_concurrency.simllm.server import most_at_once

    spans = [(0.0, 2.0), (1.0, 3.0), (1.5, 1.7), (2.5, 4.0)]
    assert most_at_once(iter(spans)) == 3 and most_at_once([]) == 0
