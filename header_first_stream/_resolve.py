"""Running a header resolver, shared by `HeaderFirstStreamingResponse` and the middleware.

Invariant: a resolver's outcome is one of three, decided here and nowhere else: its
validated headers; no headers (``"degrade"``, logged at WARNING); or `ResolverFailed`,
which the caller answers with `plain_error` (``"error"``, logged with the traceback).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal, TypeAlias

import anyio

from ._headers import render_headers
from ._types import HeaderSource, RawHeaders

__all__ = [
    "ResolverErrorPolicy",
    "ResolverFailed",
    "check_options",
    "plain_error",
    "resolve",
    "without_content_type",
]

logger = logging.getLogger("header_first_stream")

ResolverErrorPolicy: TypeAlias = Literal["error", "degrade"]


class ResolverFailed(Exception):
    """The resolver failed under the ``"error"`` policy: answer ``status`` instead."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason


class _Timeout(Exception):
    pass


def check_options(
    name: str, resolver: object, timeout: float | None, policy: str, takes: str
) -> None:
    """Raise TypeError/ValueError naming the option that is out of range."""
    if resolver is not None and not callable(resolver):
        raise TypeError(f"{name} must be an async callable{takes}, got {type(resolver).__name__}")
    if timeout is not None and not timeout > 0:
        raise ValueError(
            f"resolver_timeout must be a positive number of seconds or None, got {timeout!r}"
        )
    if policy not in ("error", "degrade"):
        raise ValueError(f"on_resolver_error must be 'error' or 'degrade', got {policy!r}")


async def resolve(
    call: Callable[[], Awaitable[HeaderSource]],
    seconds: float | None,
    policy: ResolverErrorPolicy,
    path: str,
) -> RawHeaders:
    """Await ``call`` within ``seconds`` (``None``: no limit); return its validated headers.

    Raises:
        ResolverFailed: It raised, timed out or returned an invalid header, and the
            policy is ``"error"`` (500, or 504 on timeout).
    """
    try:
        if seconds is None:
            source = await call()
        else:
            with anyio.move_on_after(seconds) as deadline:
                source = await call()
            if deadline.cancelled_caught:
                raise _Timeout
        # Validates, and refuses framing headers (content-length, transfer-encoding).
        return render_headers(source)
    except _Timeout:
        if policy == "degrade":
            logger.warning(
                "header resolver timed out after %ss for %s; "
                "sending the response without its headers",
                seconds,
                path,
            )
            return []
        logger.error("header resolver timed out after %ss for %s", seconds, path)
        raise ResolverFailed(504, "Gateway Timeout") from None
    except Exception:
        if policy == "degrade":
            logger.warning(
                "header resolver failed for %s; sending the response without its headers",
                path,
                exc_info=True,
            )
            return []
        logger.exception("header resolver failed for %s", path)
        raise ResolverFailed(500, "Internal Server Error") from None


def plain_error(reason: str, late: RawHeaders) -> tuple[RawHeaders, bytes]:
    """The head and body of an error answered instead of the response.

    Short and generic on purpose: the exception is logged, never sent. The request's late
    headers go along, except a ``content-type``, which described the response that was
    not sent (and would be sent twice).
    """
    body = reason.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *without_content_type(late),
    ]
    return headers, body


def without_content_type(late: RawHeaders) -> RawHeaders:
    """``late`` without its ``content-type``, for a response other than the one it described."""
    return [pair for pair in late if pair[0] != b"content-type"]
