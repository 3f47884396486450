"""A decided head: what a response will send, before anything of it is sent."""

from __future__ import annotations

from typing import NamedTuple

from starlette.types import Message

from ._errors import plain_error
from ._types import RawHeaders

__all__ = ["Prepared", "error_head", "start_message"]


class Prepared(NamedTuple):
    """The head a response decided on, and what follows it; nothing of it sent yet."""

    start: Message
    """The ``http.response.start`` message, with its own headers list."""
    first_chunk: bytes | memoryview | None = None
    """The peeked first chunk, encoded; ``None`` when there was no peek."""
    body_ended: bool = False
    """The body ended during the peek, before its first chunk."""
    error_body: bytes | memoryview | None = None
    """The body of an error response sent instead of the stream."""


def start_message(status: int, headers: RawHeaders) -> Message:
    """A new ``http.response.start`` message (never one another response can see)."""
    return {"type": "http.response.start", "status": status, "headers": headers}


def error_head(status: int, reason: str, late: RawHeaders) -> Prepared:
    """The plain-text error response ``status``, with the request's late headers."""
    headers, body = plain_error(reason, late)
    return Prepared(start_message(status, headers), error_body=body)
