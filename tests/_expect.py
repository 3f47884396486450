"""Shared expectations of the tests: parametrisations, bounded waits, the exact responses
the package sends, and its log records."""

from __future__ import annotations

import subprocess
import sys

import pytest
from starlette.types import Message

from ._asgi import LOGGER, chunk, start

SPECS = pytest.mark.parametrize("spec", ["2.3", "2.4"])
"""Both ASGI disconnect paths: a listener for the whole response (2.3), or only while the
head is held back (2.4)."""

WAIT = 5.0
"""Upper bound, in seconds, for anything a test waits for across threads or sockets."""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (60 s at most); assert that it exited with 0."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result


# --- what the package sends -----------------------------------------------------------

TEXT = (b"content-type", b"text/plain; charset=utf-8")
ERROR_500 = b"Internal Server Error"
DEFAULT_502 = (
    b'{"error":{"message":"The upstream service failed before sending a response.",'
    b'"type":"upstream_error","code":502}}'
)

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]
"""The default head of `HeaderFirstEventSourceResponse` over HTTP/1.1, as sse-starlette's."""


def plain_error(status: int, reason: bytes, *late: tuple[bytes, bytes]) -> list[Message]:
    """The short plain-text error response this class sends instead of the stream."""
    headers = [TEXT, (b"content-length", str(len(reason)).encode()), *late]
    return [start(status, headers), chunk(reason, more=False)]


# --- what the package logs ------------------------------------------------------------


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """The package's log records as (level name, message) pairs."""
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def logged_exception(caplog: pytest.LogCaptureFixture, message: str) -> BaseException | None:
    """The exception logged with the package's record ``message``; fails if there is none."""
    for record in caplog.records:
        if record.name == LOGGER and record.getMessage() == message and record.exc_info:
            return record.exc_info[1]
    raise AssertionError(f"no log record {message!r} with exc_info: {logged(caplog)}")
