"""Which errors are worth another try, and how long to wait before it.

Only transient failures are retried: timeouts, dropped connections, HTTP 429 and 5xx
(or a body that arrived cut in half). A schema error or a 4xx is not retried: asking the
same model the same question again would give the same answer, so PlanExe's fallback to
the next model is the right move. Error classes are recognised by name and attributes,
so neither openai nor httpx has to be importable.
"""
from __future__ import annotations

import asyncio
import email.utils
import random
import time
from typing import Any, Awaitable, Callable

import tenacity
from tenacity import AsyncRetrying, RetryCallState

from .config import RetryPolicy

TRANSIENT_CLASS_NAMES = frozenset(
    {
        # openai
        "APITimeoutError",
        "APIConnectionError",
        "RateLimitError",
        "InternalServerError",
        # httpx / httpcore
        "TimeoutException",
        "ConnectTimeout",
        "ReadTimeout",
        "WriteTimeout",
        "PoolTimeout",
        "ConnectError",
        "ReadError",
        "WriteError",
        "RemoteProtocolError",
        # requests / urllib3
        "ConnectionError",
        "Timeout",
        "ProtocolError",
        # a reply whose body is not the JSON the client expected
        "JSONDecodeError",
        "APIResponseValidationError",
    }
)


def status_code(exc: BaseException) -> int | None:
    for holder in (exc, getattr(exc, "response", None)):
        code = getattr(holder, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_transient(exc: BaseException) -> bool:
    """True for errors another try may cure (looks through ``__cause__`` chains)."""
    for err in _chain(exc):
        if isinstance(err, (TimeoutError, ConnectionError, asyncio.TimeoutError)):
            return True
        code = status_code(err)
        if code is not None:
            return code in (408, 429) or 500 <= code <= 599
        if any(cls.__name__ in TRANSIENT_CLASS_NAMES for cls in type(err).__mro__):
            return True
    return False


def retry_after_seconds(exc: BaseException, now: Callable[[], float] = time.time) -> float | None:
    """The provider's ``Retry-After`` (seconds or an HTTP date), if the error carries one."""
    for err in _chain(exc):
        value: Any = getattr(err, "retry_after", None)
        if value is None:
            headers = getattr(getattr(err, "response", None), "headers", None)
            if headers is not None:
                try:
                    value = headers.get("retry-after") or headers.get("Retry-After")
                except Exception:
                    value = None
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except (TypeError, ValueError):
            try:
                when = email.utils.parsedate_to_datetime(str(value))
            except (TypeError, ValueError):
                continue
            return max(0.0, when.timestamp() - now())
    return None


class wait_backoff_or_retry_after(tenacity.wait.wait_base):
    """Exponential backoff with jitter, but never shorter than the provider's Retry-After."""

    def __init__(self, policy: RetryPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.rng = rng or random.Random()

    def __call__(self, retry_state: RetryCallState) -> float:
        p = self.policy
        exponent = max(0, retry_state.attempt_number - 1)
        backoff = min(p.backoff_max, p.backoff_base * (2**exponent)) + self.rng.uniform(0, p.jitter)
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        hinted = retry_after_seconds(exc) if exc is not None else None
        return max(backoff, hinted) if hinted is not None else backoff


def build_retrying(
    policy: RetryPolicy,
    *,
    never_retry: tuple[type[BaseException], ...] = (),
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    before_sleep: Callable[[RetryCallState], Any] | None = None,
) -> AsyncRetrying:
    """A tenacity controller: retry transient errors up to ``policy.attempts`` tries and while
    ``policy.total_seconds`` allow (no retry that would start later), re-raising the last error."""

    def should_retry(exc: BaseException) -> bool:
        return not isinstance(exc, never_retry) and is_transient(exc)

    stop: Any = tenacity.stop_after_attempt(policy.attempts)
    if policy.total_seconds > 0:
        # tenacity >= 8.4: stop before a retry that would start after the budget; older: after it.
        before_delay = getattr(tenacity, "stop_before_delay", tenacity.stop_after_delay)
        stop = stop | before_delay(policy.total_seconds)
    return AsyncRetrying(
        stop=stop,
        wait=wait_backoff_or_retry_after(policy),
        retry=tenacity.retry_if_exception(should_retry),
        reraise=True,
        sleep=sleep,
        before_sleep=before_sleep,
    )
