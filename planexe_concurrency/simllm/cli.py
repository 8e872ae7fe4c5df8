"""``planexe-concurrency simllm serve``: run the simulated provider until SIGINT/SIGTERM.

Benchmarks start this in one process and point PlanExe (in others) at the printed URL;
the request log written on exit is how they check concurrency and rate limits.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

from .server import FAULT_KINDS, SimServer, SimServerConfig, is_loopback_host

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "serve_main"]


def build_parser(prog: str = "planexe-concurrency simllm serve") -> argparse.ArgumentParser:
    """The flags of ``simllm serve`` (exposed so the main CLI can embed them)."""
    p = argparse.ArgumentParser(prog=prog, description="Serve a deterministic, OpenAI-compatible simulated LLM.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only unless --allow-nonlocal)")
    p.add_argument("--port", type=int, default=8089, help="port (0 = any free port)")
    p.add_argument("--latency", default="0.3", help="seconds, or uniform:LOW:HIGH, or lognormal:MEAN:SIGMA")
    p.add_argument("--max-concurrent", type=int, default=0, help="answer 429 above this many requests in flight (0 = no limit)")
    p.add_argument("--slots", type=int, default=0, help="serve this many requests at once, queue the rest in arrival order (like Ollama; 0 = no queue)")
    p.add_argument("--tokens-per-second", type=float, default=0.0, help="answer length costs time: --latency is the time to first token, plus tokens at this rate (0 = off)")
    p.add_argument("--rpm", type=int, default=0, help="answer 429 above this many requests per minute (0 = no limit)")
    p.add_argument("--fault-rate", type=float, default=0.0, help="fraction of accepted requests that fail")
    p.add_argument("--faults", default=",".join(FAULT_KINDS), help=f"comma-separated fault kinds from {','.join(FAULT_KINDS)}")
    p.add_argument("--timeout-seconds", type=float, default=30.0, help="how long a 'timeout' fault stalls")
    p.add_argument("--fail-models", default="", help="comma-separated model names that always get HTTP 500")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply every latency and timeout by this")
    p.add_argument("--log", default=None, metavar="FILE", help="append each request record to FILE as JSON lines")
    p.add_argument("--seed", type=int, default=0, help="seed for latency and fault draws")
    p.add_argument("--allow-nonlocal", action="store_true", help="allow binding a non-loopback address")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def serve_main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.allow_nonlocal and not is_loopback_host(args.host):
        print(f"error: refusing to bind {args.host!r}: not a loopback address (use --allow-nonlocal)", file=sys.stderr)
        return 2
    try:
        config = SimServerConfig(
            host=args.host,
            port=args.port,
            latency=args.latency,
            max_concurrent=args.max_concurrent,
            slots=args.slots,
            tokens_per_second=args.tokens_per_second,
            requests_per_minute=args.rpm,
            fault_rate=args.fault_rate,
            faults=_split(args.faults),
            timeout_seconds=args.timeout_seconds,
            fail_models=_split(args.fail_models),
            seed=args.seed,
            time_scale=args.time_scale,
            log_path=args.log,
            allow_nonlocal=args.allow_nonlocal,
        )
        if args.log:
            open(args.log, "w", encoding="utf-8").close()  # a fresh log per run
        server = SimServer(config).start()
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    done = threading.Event()
    previous: dict[int, Any] = {}

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        done.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
    print(server.url, flush=True)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()  # closes the streamed log, which holds every completed record
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("served %d requests", server.count())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve_main())
