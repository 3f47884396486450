"""Shared expectations of the tests: parametrisations, bounded waits, exact error responses,
and the package's log records."""

from __future__ import annotations

import pytest
from starlette.types import Message

from ._asgi import LOGGER, chunk, start

SPECS = pytest.mark.parametrize("spec", ["2.3", "2.4"])

TEXT = (b"content-type", b"text/plain; charset=utf-8")


ERROR_500 = b"Internal Server Error"


DEFAULT_502 = (
    b'{"error":{"message":"The upstream service failed before sending a response.",'
    b'"type":"upstream_error","code":502}}'
)


def plain_error(status: int, reason: bytes, *late: tuple[bytes, bytes]) -> list[Message]:
    """The short plain-text error response this class sends instead of the stream."""
    headers = [TEXT, (b"content-length", str(len(reason)).encode()), *late]
    return [start(status, headers), chunk(reason, more=False)]


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def logged_exception(caplog: pytest.LogCaptureFixture, message: str) -> BaseException | None:
    for record in caplog.records:
        if record.name == LOGGER and record.getMessage() == message and record.exc_info:
            return record.exc_info[1]
    raise AssertionError(f"no log record {message!r} with exc_info: {logged(caplog)}")
