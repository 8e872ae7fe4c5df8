"""Which errors are transient, and how Retry-After is read."""
from __future__ import annotations

import email.utils
import json

import pytest

from planexe_concurrency.retry import is_transient, retry_after_seconds, status_code


class Resp:
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.headers = headers or {}


class HTTPError(Exception):
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.response = Resp(status, headers)


class APITimeoutError(Exception):
    pass


@pytest.mark.parametrize(
    "exc,expected",
    [
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (HTTPError(429), True),
        (HTTPError(500), True),
        (HTTPError(503), True),
        (HTTPError(400), False),
        (HTTPError(404), False),
        (APITimeoutError(), True),
        (ValueError("schema mismatch"), False),
        (KeyError("x"), False),
    ],
)
def test_is_transient(exc: BaseException, expected: bool) -> None:
    assert is_transient(exc) is expected


def test_transient_found_through_cause_chain() -> None:
    try:
        try:
            raise HTTPError(502)
        except HTTPError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_transient(outer)


def test_malformed_body_is_transient() -> None:
    with pytest.raises(json.JSONDecodeError) as info:
        json.loads("{not json")
    assert is_transient(info.value)


def test_status_code_from_error_or_response() -> None:
    assert status_code(HTTPError(418)) == 418
    assert status_code(ValueError()) is None


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after_seconds(HTTPError(429, {"retry-after": "3"})) == 3.0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 12, usegmt=True)
    assert retry_after_seconds(HTTPError(429, {"retry-after": date}), now=lambda: now) == pytest.approx(12, abs=1)
    assert retry_after_seconds(HTTPError(429, {"retry-after": "soon"})) is None
    assert retry_after_seconds(HTTPError(429)) is None

    class WithAttr(Exception):
        retry_after = "2.5"

    assert retry_after_seconds(WithAttr()) == 2.5
