"""Per-key rate limiting, in the manner of LiteLLM's ``parallel_request_limiter``.

`Limiter` is the interface the gateway awaits, with two back ends: `RateLimiter`, in this
process's memory (the default, nothing to install), and
`examples.gateway.limiter_redis.RedisRateLimiter`, shared by every worker that points at
one Redis (one Lua script per request, atomic per key and window).

Before a request goes upstream, ``check_and_reserve`` counts it against the
key's requests-per-minute limit and reserves its estimated tokens against the
tokens-per-minute limit, in one atomic step (in memory: no ``await`` in it, so two
requests on one event loop can never both take the last unit). The `Decision` it returns carries the
``x-ratelimit-api_key-*`` headers as they stand right after this request's reservation:
each request reports its own numbers, however many others run at the same time.

Windows are fixed, one minute from a key's first request in the window. Reservations
are not settled against the tokens the upstream really used (LiteLLM does that after
the call); the demo only needs the counts to go down request by request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

HEADER_PREFIX = "x-ratelimit-api_key-"
WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class KeyLimits:
    """The limits of one virtual key; ``None`` means no limit of that kind."""

    rpm_limit: int | None = None
    tpm_limit: int | None = None


@dataclass(frozen=True)
class Decision:
    """The limiter's answer for one request.

    Attributes:
        allowed: The request was counted and may go upstream.
        headers: The ``x-ratelimit-api_key-*`` headers for the response: remaining and
            limit of each limit the key has (two per limit), in the bug report's order.
        retry_after: Whole seconds until the window resets, when not allowed.
        exceeded: Which limit refused the request, ``"requests"`` or ``"tokens"``.
    """

    allowed: bool
    headers: dict[str, str]
    retry_after: int | None = None
    exceeded: str | None = None


class StoreUnavailable(Exception):
    """The shared store (Redis) could not be reached in time; nothing was counted."""


class Limiter(Protocol):
    """What the gateway needs of a rate limiter; every method is a coroutine."""

    async def check_and_reserve(self, key: str, limits: KeyLimits, tokens: int) -> Decision:
        """Count one request of ``key`` and reserve ``tokens``, atomically, unless that
        exceeds a limit (a refused request takes nothing from the quota).

        Raises:
            StoreUnavailable: The store could not be reached in time.
        """
        ...

    async def aclose(self) -> None:
        """Release connections; the gateway's lifespan calls it at shut-down."""
        ...


def decide(
    limits: KeyLimits, requests: int, tokens: int, exceeded: str | None, retry_after: float
) -> Decision:
    """The `Decision` for counts that already include this request (when allowed).

    Shared by the back ends, so both give the same headers for the same counts.
    """
    rpm, tpm = limits.rpm_limit, limits.tpm_limit
    headers: dict[str, str] = {}
    if rpm is not None:
        headers[HEADER_PREFIX + "remaining-requests"] = str(max(0, rpm - requests))
        headers[HEADER_PREFIX + "limit-requests"] = str(rpm)
    if tpm is not None:
        headers[HEADER_PREFIX + "remaining-tokens"] = str(max(0, tpm - tokens))
        headers[HEADER_PREFIX + "limit-tokens"] = str(tpm)
    if exceeded is None:
        return Decision(True, headers)
    return Decision(False, headers, max(1, math.ceil(retry_after)), exceeded)


@dataclass
class _Window:
    start: float
    requests: int = 0
    tokens: int = 0


class RateLimiter:
    """Counts requests and reserves tokens per key, in fixed one-minute windows, in memory.

    Each process has its own counts: behind several workers, use the Redis back end.

    Args:
        clock: Seconds from a monotonic clock; tests pass a fake one.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    async def check_and_reserve(self, key: str, limits: KeyLimits, tokens: int) -> Decision:
        """Count one request of ``key`` and reserve ``tokens``, unless that exceeds a limit.

        A refused request is not counted: it takes nothing from the key's quota.
        """
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window.start >= WINDOW_SECONDS:
            window = self._windows[key] = _Window(start=now)
        rpm, tpm = limits.rpm_limit, limits.tpm_limit
        exceeded: str | None = None
        if rpm is not None and window.requests + 1 > rpm:
            exceeded = "requests"
        elif tpm is not None and window.tokens + tokens > tpm:
            exceeded = "tokens"
        if exceeded is None:
            window.requests += 1
            window.tokens += tokens
        retry_after = window.start + WINDOW_SECONDS - now
        return decide(limits, window.requests, window.tokens, exceeded, retry_after)

    async def aclose(self) -> None:
        """Nothing to release."""
