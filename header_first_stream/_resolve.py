"""Running a header resolver, shared by `HeaderFirstStreamingResponse` and the middleware.

`ResolverOptions` holds a resolver with its timeout and failure policy, validated once
when a response or the middleware is built; `ResolverOptions.run` runs it.
`ResolverAttributes` reads the timeout and the policy back as public attributes.

Invariants, enforced in `ResolverOptions.run`:

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
from typing import Any, Generic, NamedTuple, TypeVar

import anyio

from ._headers import (
    check_head_size,
    render_headers,
)
from ._types import HeaderSource, RawHeaders, ResolverErrorPolicy
from ._watch import cancel_requested

__all__ = [
    "ResolverCancelledError",
    "ResolverAttributes",
    "ResolverFailed",
    "ResolverOptions",
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


R = TypeVar("R", bound=Callable[..., Awaitable[HeaderSource]])


class ResolverOptions(NamedTuple, Generic[R]):
    """A header resolver (``None``: none) with its timeout and failure policy.

    Built by `checked`, once per response or middleware; read by the public attributes
    that name the options as the caller gave them.
    """

    resolver: R | None
    timeout: float | None  # seconds; None waits as long as it takes
    policy: ResolverErrorPolicy
    # For the error messages of `replaced`: the resolver argument's name, what it takes.
    option: str = "header_resolver"
    takes: str | None = None

    @classmethod
    def checked(
        cls,
        *,
        option: str,
        resolver: R | None,
        timeout: float | None,
        policy: ResolverErrorPolicy,
        takes: str | None = None,
    ) -> ResolverOptions[R]:
        """Validate the options as given.

        Args:
            option: The resolver argument's name, for the error message.
            resolver: The resolver, or ``None``.
            timeout: ``resolver_timeout``.
            policy: ``on_resolver_error``.
            takes: What the resolver is called with, for the error message (``None``:
                not said).

        Raises:
            TypeError: ``resolver`` is not callable.
            ValueError: ``timeout`` or ``policy`` is out of range.
        """
        if resolver is not None and not callable(resolver):
            taking = "" if takes is None else f" taking {takes}"
            raise TypeError(
                f"{option} must be an async callable{taking}, got {type(resolver).__name__}"
            )
        if timeout is not None and not timeout > 0:
            raise ValueError(
                f"resolver_timeout must be a positive number of seconds or None, got {timeout!r}"
            )
        if policy not in ("error", "degrade"):
            raise ValueError(f"on_resolver_error must be 'error' or 'degrade', got {policy!r}")
        return cls(resolver, timeout, policy, option, takes)

    def replaced(self, **changes: Any) -> ResolverOptions[R]:
        """These options with ``changes`` (``resolver``, ``timeout``, ``policy``), validated."""
        options = {"resolver": self.resolver, "timeout": self.timeout, "policy": self.policy}
        return self.checked(option=self.option, takes=self.takes, **{**options, **changes})

    async def run(
        self, args: tuple[Any, ...], path: str, max_value: int, max_head: int
    ) -> RawHeaders:
        """Await the resolver called with ``args``; return its validated headers.

        Without a resolver, no headers. ``path`` names the request in the log.

        Raises:
            ResolverFailed: It raised (a ``CancelledError`` too, when this task was not
                cancelled), timed out, or returned an invalid, refused or oversized header
                (over ``max_value`` bytes, or all of them over ``max_head``), and the policy
                is ``"error"`` (500, or 504 on timeout).
        """
        resolver = self.resolver
        if resolver is None:
            return []
        seconds = self.timeout
        try:
            if seconds is None:
                try:
                    source = await resolver(*args)
                except anyio.get_cancelled_exc_class() as exc:
                    if cancel_requested():
                        raise
                    raise _stray() from exc
            else:
                source = await _call_in_scope(resolver(*args), seconds)
            # Validates, and refuses framing, connection-specific and server-owned headers.
            headers = render_headers(source)
            if headers:
                check_head_size(headers, max_value, max_head)
            return headers
        except _Timeout:
            if self.policy == "degrade":
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
            if self.policy == "degrade":
                logger.warning(
                    "header resolver failed for %s; sending the response without its headers",
                    path,
                    exc_info=True,
                )
                return []
            logger.exception("header resolver failed for %s", path)
            raise ResolverFailed(500, "Internal Server Error") from None


class ResolverAttributes:
    """Base of the classes that run a resolver: its timeout and policy, as attributes.

    Assigning one validates it again, with the constructor's errors.

    Each class sets ``_resolver_options`` in ``__init__`` and names the resolver itself
    (``header_resolver`` on the responses, ``resolver`` on the middleware).
    """

    _resolver_options: ResolverOptions[Any]

    @property
    def resolver_timeout(self) -> float | None:
        return self._resolver_options.timeout

    @resolver_timeout.setter
    def resolver_timeout(self, value: float | None) -> None:
        self._resolver_options = self._resolver_options.replaced(timeout=value)

    @property
    def on_resolver_error(self) -> ResolverErrorPolicy:
        return self._resolver_options.policy

    @on_resolver_error.setter
    def on_resolver_error(self, value: ResolverErrorPolicy) -> None:
        self._resolver_options = self._resolver_options.replaced(policy=value)


async def _call_in_scope(call: Awaitable[HeaderSource], seconds: float) -> HeaderSource:
    stray: BaseException | None = None
    with anyio.CancelScope(deadline=anyio.current_time() + seconds) as scope:
        try:
            return await call
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
