"""OpenAI-compatible HTTP server around the simulated generator (stdlib only, loopback only).

Benchmarks run PlanExe in other processes against a real socket, so client libraries,
connection pools, retries and rate limits behave as they would with a hosted provider.
The server can throttle (max concurrency, requests per minute), inject faults
deterministically, and records every request so a test can check what the client did.
"""
from __future__ import annotations

import collections
import contextlib
import ipaddress
import json
import logging
import math
import socket
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

from .generator import LatencyModel, SimResponse, _rng, request_key, respond

logger = logging.getLogger(__name__)

__all__ = [
    "FAULT_KINDS",
    "RequestRecord",
    "SimServer",
    "SimServerConfig",
    "count",
    "is_loopback_host",
    "load_log",
    "max_requests_in_window",
    "most_at_once",
    "peak_in_flight",
]

FAULT_KINDS = ("500", "timeout", "drop", "malformed", "429")
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
COMPLETION_PATHS = ("/v1/completions", "/completions")
MODELS_PATHS = ("/v1/models", "/models")
STATUS_DROPPED = 0  # no HTTP status: the connection was closed without a response
_CREATED = 1_700_000_000  # constant so identical requests give identical bytes


def is_loopback_host(host: str) -> bool:
    """True for localhost / 127.0.0.0/8 / ::1: the only addresses served without --allow-nonlocal."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class SimServerConfig:
    """How the simulated provider behaves. Zero means "no limit" for the limits."""

    host: str = "127.0.0.1"
    port: int = 0
    latency: LatencyModel | str | float = 0.0
    max_concurrent: int = 0  # refuse (429) above this many requests in flight
    slots: int = 0  # serve this many at once, queue the rest in arrival order (as Ollama, llama.cpp do)
    tokens_per_second: float = 0.0  # > 0: latency is time to first token, plus the answer's tokens at this rate
    requests_per_minute: int = 0
    rate_window_seconds: float = 60.0
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULT_KINDS
    timeout_seconds: float = 30.0
    timeout_mode: str = "504"  # "504": answer 504 after timeout_seconds; "hang": close without answering
    fault_retry_after: int = 1  # the Retry-After (seconds) sent with an injected 429
    fail_models: tuple[str, ...] = ()
    seed: int = 0
    time_scale: float = 1.0  # multiplies latency and timeout sleeps
    log_path: str | None = None  # append each record as a JSON line as it completes
    allow_nonlocal: bool = False

    def __post_init__(self) -> None:
        self.latency = LatencyModel.parse(self.latency, seed=self.seed)
        if isinstance(self.faults, str):
            self.faults = tuple(f.strip() for f in self.faults.split(",") if f.strip())
        self.faults = tuple(str(f) for f in self.faults)
        unknown = [f for f in self.faults if f not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; choose from {FAULT_KINDS}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be within [0, 1]")
        if self.fault_rate > 0 and not self.faults:
            raise ValueError("fault_rate > 0 needs at least one fault kind")
        if self.timeout_mode not in ("504", "hang"):
            raise ValueError("timeout_mode must be '504' or 'hang'")
        if self.max_concurrent < 0 or self.requests_per_minute < 0 or self.slots < 0:
            raise ValueError("max_concurrent, slots and requests_per_minute must be >= 0")
        if self.tokens_per_second < 0:
            raise ValueError("tokens_per_second must be >= 0")
        if self.rate_window_seconds <= 0 or self.time_scale < 0:
            raise ValueError("rate_window_seconds must be > 0 and time_scale >= 0")
        self.fail_models = tuple(self.fail_models)


@dataclass
class RequestRecord:
    """One request as the server saw it; times are ``time.time()`` so other processes can compare."""

    arrival: float
    start: float
    end: float
    status: int
    model: str
    key: str
    fault: str | None
    in_flight_at_start: int
    attempt: int = 0
    path: str = ""
    kind: str = ""  # what was generated: "tool", "json" or "text" ("" when nothing was)

    @property
    def accepted(self) -> bool:
        """Admitted past the rate/concurrency limits (i.e. not a 429)."""
        return self.status != 429

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RequestRecord":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# --- log analysis, usable on a dumped log from another process ----------------------


def peak_in_flight(records: Iterable[RequestRecord]) -> int:
    """Largest number of admitted requests being processed at once."""
    return max((r.in_flight_at_start for r in records if r.accepted), default=0)


def most_at_once(spans: Iterable[tuple[float, float]]) -> int:
    """Most ``(start, end)`` spans open at one moment (for requests: arrival to end, their queue wait included)."""
    spans = list(spans)
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    best = now = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def max_requests_in_window(records: Iterable[RequestRecord], seconds: float = 60.0, accepted_only: bool = True) -> int:
    """Most request arrivals inside any window of ``seconds`` (to check a client kept to an rpm)."""
    arrivals = sorted(r.arrival for r in records if r.accepted or not accepted_only)
    best = 0
    lo = 0
    for hi, t in enumerate(arrivals):
        while arrivals[lo] <= t - seconds:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def count(records: Iterable[RequestRecord], status: int | None = None) -> int:
    """Number of records, or of those with the given HTTP status (0 = dropped)."""
    return sum(1 for r in records if status is None or r.status == status)


def load_log(path: str | Path) -> list[RequestRecord]:
    """Read a log written by ``dump_log`` or by ``log_path`` streaming."""
    out: list[RequestRecord] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                out.append(RequestRecord.from_dict(json.loads(line)))
    return out


# --- HTTP plumbing ---------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default (5) refuses bursts of concurrent clients

    def __init__(self, address: tuple[str, int], sim: "SimServer", ipv6: bool) -> None:
        self.address_family = socket.AF_INET6 if ipv6 else socket.AF_INET
        self.sim = sim
        super().__init__(address, _Handler)


@dataclass
class _Admission:
    accepted: bool
    attempt: int = 0
    in_flight: int = 0
    retry_after: float = 0.0
    reason: str = ""
    token: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the client waits ~40 ms (delayed ACK)
    # per call, time that lies outside the logged request and so looked like per-task overhead.
    disable_nagle_algorithm = True
    server_version = "simllm/0.1"
    timeout = 300  # idle keep-alive connections end eventually
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s - %s", self.address_string(), format % args)

    def setup(self) -> None:
        super().setup()
        self.server.sim._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sim._track(self.connection, False)

    # -- helpers --
    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self._send_bytes(status, body, "application/json", headers)

    def _send_bytes(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _error(self, status: int, message: str, etype: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": etype, "param": None, "code": etype}}, headers)

    # -- routes --
    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in MODELS_PATHS:
            names = ["simulated", *self.server.sim.config.fail_models]
            data = [{"id": n, "object": "model", "created": _CREATED, "owned_by": "simllm"} for n in dict.fromkeys(names)]
            self._send_json(200, {"object": "list", "data": data})
        elif path in ("/health", "/v1/health"):
            self._send_json(200, {"status": "ok"})
        else:
            self._error(404, f"no route {self.path}", "not_found")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        arrival = time.time()
        path = self.path.split("?", 1)[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if path not in CHAT_PATHS + COMPLETION_PATHS:
            self._error(404, f"no route {self.path}", "not_found")
            return
        try:
            payload = json.loads(raw or b"{}")
            if not isinstance(payload, dict):
                raise ValueError("body must be a JSON object")
            chat = path in CHAT_PATHS
            messages, tools = _request_parts(payload, chat)
        except (ValueError, TypeError) as exc:
            self._error(400, f"bad request: {exc}", "invalid_request_error")
            return
        self.server.sim._handle(self, path, chat, payload, messages, tools, arrival)


def _request_parts(payload: dict[str, Any], chat: bool) -> tuple[list[dict[str, Any]], list | None]:
    if chat:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError("'messages' must be a list of objects")
        tools = payload.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise ValueError("'tools' must be a list")
        return messages, tools or None
    prompt = payload.get("prompt", "")
    if isinstance(prompt, list):
        prompt = "\n".join(str(p) for p in prompt)
    return [{"role": "user", "content": str(prompt)}], None


def _usage(resp: SimResponse) -> dict[str, int]:
    return {"prompt_tokens": resp.prompt_tokens, "completion_tokens": resp.completion_tokens, "total_tokens": resp.total_tokens}


def _chat_message(resp: SimResponse) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": resp.text}
    if resp.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in resp.tool_calls
        ]
    return message


def chat_completion_body(resp: SimResponse, model: str) -> dict[str, Any]:
    """OpenAI's /v1/chat/completions response object."""
    return {
        "id": f"chatcmpl-{resp.key[:24]}",
        "object": "chat.completion",
        "created": _CREATED,
        "model": model,
        "system_fingerprint": "simllm",
        "choices": [{"index": 0, "message": _chat_message(resp), "logprobs": None, "finish_reason": resp.finish_reason}],
        "usage": _usage(resp),
    }


def completion_body(resp: SimResponse, model: str) -> dict[str, Any]:
    """OpenAI's legacy /v1/completions response object."""
    return {
        "id": f"cmpl-{resp.key[:24]}",
        "object": "text_completion",
        "created": _CREATED,
        "model": model,
        "choices": [{"index": 0, "text": resp.text or "", "logprobs": None, "finish_reason": resp.finish_reason}],
        "usage": _usage(resp),
    }


def _stream_chunks(resp: SimResponse, model: str, chat: bool, include_usage: bool) -> list[dict[str, Any]]:
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": resp.text}
        if resp.tool_calls:
            delta["tool_calls"] = [
                {"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for i, c in enumerate(resp.tool_calls)
            ]
        base = {"id": f"chatcmpl-{resp.key[:24]}", "object": "chat.completion.chunk", "created": _CREATED, "model": model}
        chunks = [{**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": resp.finish_reason}]}]
    else:
        base = {"id": f"cmpl-{resp.key[:24]}", "object": "text_completion", "created": _CREATED, "model": model}
        chunks = [{**base, "choices": [{"index": 0, "text": resp.text or "", "logprobs": None, "finish_reason": resp.finish_reason}]}]
    if include_usage:
        chunks.append({**base, "choices": [], "usage": _usage(resp)})
    return chunks


class SimServer:
    """The simulated provider on 127.0.0.1, served by daemon threads in the background."""

    def __init__(self, config: SimServerConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = SimServerConfig(**overrides)
        elif overrides:
            raise TypeError("pass either a SimServerConfig or keyword overrides, not both")
        self.config = config
        self._latency: LatencyModel = LatencyModel.parse(config.latency, seed=config.seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._records: list[RequestRecord] = []
        self._window: collections.deque[float] = collections.deque()
        self._attempts: dict[str, int] = collections.defaultdict(int)
        self._in_flight: dict[int, float] = {}  # token -> expected end
        self._next_token = 0
        self._slot_free = threading.Condition()
        self._slot_queue: collections.deque[int] = collections.deque()  # tickets waiting for a slot, oldest first
        self._serving = 0
        self._next_ticket = 0
        self._conns: set[socket.socket] = set()
        self._log_fh: IO[str] | None = None

    # -- lifecycle --
    def start(self) -> "SimServer":
        """Bind (port 0 = any free port) and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        host = self.config.host
        if not self.config.allow_nonlocal and not is_loopback_host(host):
            raise ValueError(f"refusing to bind non-loopback address {host!r} (set allow_nonlocal)")
        if self.config.log_path:
            self._log_fh = open(self.config.log_path, "a", encoding="utf-8")
        self._stopping.clear()
        self._httpd = _HTTPServer((host.strip("[]"), self.config.port), self, ipv6=":" in host)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="simllm-server", daemon=True
        )
        self._thread.start()
        logger.info("simulated LLM server listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop accepting, wake sleeping handlers, close open connections, close the log."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None
        logger.info("simulated LLM server stopped")

    def __enter__(self) -> "SimServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash, no /v1)."""
        host = self.config.host.strip("[]")
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    # -- request log --
    @property
    def log(self) -> list[RequestRecord]:
        """A snapshot of the completed requests, in completion order."""
        with self._lock:
            return list(self._records)

    def peak_in_flight(self) -> int:
        return peak_in_flight(self.log)

    def max_requests_in_window(self, seconds: float = 60.0, accepted_only: bool = True) -> int:
        return max_requests_in_window(self.log, seconds, accepted_only)

    def count(self, status: int | None = None) -> int:
        return count(self.log, status)

    def dump_log(self, path: str | Path) -> None:
        """Write every record as one JSON line, for a benchmark in another process."""
        lines = [json.dumps(asdict(r), sort_keys=True) + "\n" for r in self.log]
        Path(path).write_text("".join(lines), encoding="utf-8")

    def clear_log(self) -> None:
        with self._lock:
            self._records.clear()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    # -- internals --
    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._records.append(rec)
            if self._log_fh is not None:
                self._log_fh.write(json.dumps(asdict(rec), sort_keys=True) + "\n")
                self._log_fh.flush()

    def _admit(self, key: str, arrival: float) -> _Admission:
        """Apply the rpm window and the concurrency cap; on success take a slot and count the attempt."""
        cfg = self.config
        delay = self._latency.sample(key) * cfg.time_scale
        with self._lock:
            # read the clock under the lock so the window stays sorted across handler threads
            now = max(arrival, time.time())
            window = cfg.rate_window_seconds
            while self._window and self._window[0] <= now - window:
                self._window.popleft()
            if cfg.requests_per_minute and len(self._window) >= cfg.requests_per_minute:
                return _Admission(False, in_flight=len(self._in_flight), retry_after=self._window[0] + window - now,
                                  reason="requests per minute")
            if cfg.max_concurrent and len(self._in_flight) >= cfg.max_concurrent:
                soonest = min(self._in_flight.values()) - now
                return _Admission(False, in_flight=len(self._in_flight), retry_after=soonest, reason="concurrent requests")
            self._window.append(now)
            self._attempts[key] += 1
            self._next_token += 1
            token = self._next_token
            self._in_flight[token] = now + delay
            return _Admission(True, attempt=self._attempts[key], in_flight=len(self._in_flight), token=token)

    def _release(self, token: int) -> None:
        with self._lock:
            self._in_flight.pop(token, None)

    @contextlib.contextmanager
    def _queue_slot(self) -> Iterator[None]:
        """With ``slots``: wait, in arrival order, until fewer than ``slots`` requests are served."""
        slots = self.config.slots
        if not slots:
            yield
            return
        with self._slot_free:
            self._next_ticket += 1
            ticket = self._next_ticket
            self._slot_queue.append(ticket)
            while (self._slot_queue[0] != ticket or self._serving >= slots) and not self._stopping.is_set():
                self._slot_free.wait(0.5)
            self._slot_queue.remove(ticket)
            self._serving += 1
            self._slot_free.notify_all()
        try:
            yield
        finally:
            with self._slot_free:
                self._serving -= 1
                self._slot_free.notify_all()

    def _answer_delay(self, rec: RequestRecord, resp: SimResponse) -> float:
        """Time to the first token, plus the answer's tokens at ``tokens_per_second`` when set."""
        cfg = self.config
        delay = self._latency.sample(rec.key)
        if cfg.tokens_per_second > 0:
            delay += resp.completion_tokens / cfg.tokens_per_second
        return delay * cfg.time_scale

    def _draw_fault(self, key: str, attempt: int) -> str | None:
        """Deterministic per (seed, key, attempt): a retried request is a fresh draw."""
        cfg = self.config
        if cfg.fault_rate <= 0 or not cfg.faults:
            return None
        rng = _rng("fault", cfg.seed, key, attempt)
        if rng.random() < cfg.fault_rate:
            return cfg.faults[rng.randrange(len(cfg.faults))]
        return None

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _handle(
        self,
        h: _Handler,
        path: str,
        chat: bool,
        payload: dict[str, Any],
        messages: list[dict[str, Any]],
        tools: list | None,
        arrival: float,
    ) -> None:
        """Admit or refuse, simulate the work, then log and release *before* answering.

        Logging and releasing the slot before the bytes go out means that a client which has
        its answer already finds it in the log and can immediately use the freed slot.
        """
        model = str(payload.get("model") or "simulated")
        key = request_key(messages, tools, model)
        with self._queue_slot():  # a queueing server: wait for one of its K slots first
            cfg = self.config
            adm = self._admit(key, arrival)
            if not adm.accepted:
                wait = max(adm.retry_after, 0.001)
                headers = {"Retry-After": str(max(1, math.ceil(wait))), "retry-after-ms": str(max(1, math.ceil(wait * 1000)))}
                rec = RequestRecord(arrival, arrival, time.time(), 429, model, key, None, adm.in_flight, 0, path)
                self._record(rec)
                self._reply(h, rec, lambda: h._error(
                    429, f"rate limit reached ({adm.reason}); retry after {wait:.3f}s", "rate_limit_exceeded", headers
                ))
                return

            start = time.time()
            rec = RequestRecord(arrival, start, start, 200, model, key, None, adm.in_flight, adm.attempt, path)
            answer: Callable[[], None]
            try:
                if model in cfg.fail_models:
                    rec.fault, rec.status = "fail_model", 500
                    answer = lambda: h._error(500, f"model {model!r} is configured to fail", "server_error")  # noqa: E731
                else:
                    rec.fault = self._draw_fault(key, adm.attempt)
                    resp = respond(messages, tools, model, tool_choice=payload.get("tool_choice"))
                    rec.kind = resp.kind
                    answer = self._prepare(h, rec, resp, chat, payload)
            except Exception:
                rec.status = 500
                logger.exception("simulated server failed on a request")
                answer = lambda: h._error(500, "simulated server bug", "server_error")  # noqa: E731
            finally:
                rec.end = time.time()
                self._release(adm.token)
                self._record(rec)
            self._reply(h, rec, answer)

    def _prepare(
        self, h: _Handler, rec: RequestRecord, resp: SimResponse, chat: bool, payload: dict[str, Any]
    ) -> Callable[[], None]:
        """Sleep as the fault/latency says; return the function that sends the answer."""
        cfg = self.config
        model = rec.model
        if rec.fault == "429":
            # A provider-side throttle unrelated to our own pacing (e.g. a shared key): no latency.
            rec.status = 429
            headers = {"Retry-After": str(cfg.fault_retry_after), "retry-after-ms": str(int(cfg.fault_retry_after * 1000))}
            return lambda: h._error(429, "simulated rate limit", "rate_limit_exceeded", headers)
        if rec.fault == "timeout":
            self._sleep(cfg.timeout_seconds * cfg.time_scale)
            if cfg.timeout_mode == "504":
                rec.status = 504
                return lambda: h._error(504, "simulated upstream timeout", "timeout")
            rec.status = STATUS_DROPPED
            return lambda: _drop(h)
        self._sleep(self._answer_delay(rec, resp))
        if rec.fault == "drop":
            rec.status = STATUS_DROPPED
            return lambda: _drop(h)
        if rec.fault == "500":
            rec.status = 500
            return lambda: h._error(500, "simulated internal server error", "server_error")
        body = chat_completion_body(resp, model) if chat else completion_body(resp, model)
        if rec.fault == "malformed":
            text = json.dumps(body)
            return lambda: h._send_bytes(200, text[: max(1, len(text) // 2)].encode("utf-8"), "application/json")
        if payload.get("stream"):
            opts = payload.get("stream_options") or {}
            chunks = _stream_chunks(resp, model, chat, isinstance(opts, dict) and bool(opts.get("include_usage")))
            return lambda: _send_sse(h, chunks)
        return lambda: h._send_json(200, body)

    @staticmethod
    def _reply(h: _Handler, rec: RequestRecord, answer: Callable[[], None]) -> None:
        try:
            answer()
        except OSError as exc:  # the client went away (e.g. gave up on a slow answer)
            logger.debug("client connection lost before the answer: %s", exc)
            rec.status = STATUS_DROPPED  # in-memory record only; a streamed log line is already out
            h.close_connection = True


def _drop(h: _Handler) -> None:
    """Close the connection without writing a byte of response."""
    h.close_connection = True
    try:
        h.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _send_sse(h: _Handler, chunks: Sequence[dict[str, Any]]) -> None:
    h.close_connection = True
    h.send_response(200)
    h.send_header("Content-Type", "text/event-stream")
    h.send_header("Cache-Control", "no-cache")
    h.send_header("Connection", "close")
    h.end_headers()
    for chunk in chunks:
        h.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode("utf-8"))
    h.wfile.write(b"data: [DONE]\n\n")
    h.wfile.flush()
