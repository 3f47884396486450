"""Running a header resolver, shared by `HeaderFirstStreamingResponse` and the middleware.

Invariants, enforced in `resolve`:

1. A resolver's outcome is one of three, decided here and nowhere else: its validated
   headers; no headers (``"degrade"``, logged at WARNING); or `ResolverFailed`, which the
   caller answers with `plain_error` (``"error"``, logged with the traceback).
2. A cancellation of the task that awaits the resolver propagates (the client left, a
   timeout middleware, the server shutting down); a ``CancelledError`` the resolver raises
   while that task is not cancelled (it awaited a future another task cancelled) is a
   resolver failure like any other exception.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from ._headers import (
    DEFAULT_MAX_HEAD_SIZE,
    DEFAULT_MAX_HEADER_VALUE_SIZE,
    check_head_size,
    render_headers,
)
from ._types import HeaderSource, RawHeaders, ResolverErrorPolicy
from ._watch import cancel_requested

__all__ = [
    "ResolverCancelledError",
    "ResolverFailed",
    "check_options",
    "resolve",
]

logger = logging.getLogger("header_first_stream")


class ResolverFailed(Exception):
    """The resolver failed under the ``"error"`` policy: answer ``status`` instead."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason


class _Timeout(Exception):
    pass


class ResolverCancelledError(RuntimeError):
    """The resolver raised ``CancelledError`` while its request was not cancelled."""


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
    max_value: int = DEFAULT_MAX_HEADER_VALUE_SIZE,
    max_head: int = DEFAULT_MAX_HEAD_SIZE,
) -> RawHeaders:
    """Await ``call`` within ``seconds`` (``None``: no limit); return its validated headers.

    Raises:
        ResolverFailed: It raised (a ``CancelledError`` too, when this task was not
            cancelled), timed out, or returned an invalid, refused or oversized header
            (over ``max_value`` bytes, or all of them over ``max_head``), and the policy
            is ``"error"`` (500, or 504 on timeout).
    """
    try:
        if seconds is None:
            try:
                source = await call()
            except anyio.get_cancelled_exc_class() as exc:
                if cancel_requested():
                    raise
                raise _stray() from exc
        else:
            source = await _call_in_scope(call, seconds)
        # Validates, and refuses framing, connection-specific and server-owned headers.
        headers = render_headers(source)
        if headers:
            check_head_size(headers, max_value, max_head)
        return headers
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


async def _call_in_scope(
    call: Callable[[], Awaitable[HeaderSource]], seconds: float
) -> HeaderSource:
    stray: BaseException | None = None
    with anyio.CancelScope(deadline=anyio.current_time() + seconds) as scope:
        try:
            return await call()
        except anyio.get_cancelled_exc_class() as exc:
            if scope.cancel_called or cancel_requested():
                raise  # the deadline, or a cancellation of this task
            stray = exc
    if stray is not None:
        raise _stray() from stray
    raise _Timeout


def _stray() -> ResolverCancelledError:
    return ResolverCancelledError(
        "the header resolver raised CancelledError, but its request was not cancelled "
        "(it awaited something another task cancelled)"
    )
