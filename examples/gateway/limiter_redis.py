"""The Redis back ends: quotas and keys shared by every worker that points at one Redis.

`RedisRateLimiter` counts a request and reserves its tokens in one Lua script, which
Redis runs atomically: the check and the increments of a key's window cannot interleave
with another worker's, so ``remaining-requests`` takes each value once and the request
over the limit is refused whichever worker serves it. The window is the hash's time to
live: it starts with the key's first counted request and ends a minute later.

`RedisKeyStore` keeps the virtual keys in a Redis hash, and each worker keeps the keys it
has read (they never change), as LiteLLM keeps keys in its in-memory cache in front of
the database: a known key is still recognised while Redis is unreachable.

Both use the ``redis`` package's asyncio client (``pip install redis``), so they need an
asyncio event loop, as uvicorn's. Every Redis error or timeout is raised as
`StoreUnavailable`; the client reconnects on the next call, so the gateway recovers by
itself when Redis comes back.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from .keys import VirtualKey
from .limiter import WINDOW_SECONDS, Decision, KeyLimits, StoreUnavailable, decide

PREFIX = "hfs-gateway:"
SOCKET_TIMEOUT = 1.0
"""Seconds to connect to Redis and to wait for each answer: an unreachable Redis costs a
request about this long, not a hung worker."""

# KEYS[1]: the key's window (a hash). ARGV: rpm and tpm limits (-1: none), this request's
# tokens, the window's length in milliseconds. Returns the refused limit ("" if allowed),
# the window's requests and tokens (this request's included when allowed), and the
# milliseconds left in the window.
_CHECK_AND_RESERVE = """
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local requests = tonumber(redis.call('HGET', KEYS[1], 'requests') or '0')
local used = tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0')
local exceeded = ''
if rpm >= 0 and requests + 1 > rpm then
  exceeded = 'requests'
elseif tpm >= 0 and used + tokens > tpm then
  exceeded = 'tokens'
end
if exceeded == '' then
  requests = redis.call('HINCRBY', KEYS[1], 'requests', 1)
  used = redis.call('HINCRBY', KEYS[1], 'tokens', tokens)
  if redis.call('PTTL', KEYS[1]) < 0 then
    redis.call('PEXPIRE', KEYS[1], window)
  end
end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then left = window end
return {exceeded, requests, used, left}
"""


def connect(url: str, *, timeout: float = SOCKET_TIMEOUT) -> redis.asyncio.Redis:
    """An asyncio Redis client for ``url`` (``redis://host:port/db``) with bounded waits.

    No retries inside the client: a failed call fails at once, and the gateway's policy
    answers it. So a pooled connection that Redis closed while it was idle (Redis was
    restarted) must never be used: the pool checks each one before a call and reconnects,
    but skips that check while redis-py's maintenance notifications are on (their default,
    "auto", turns them on over RESP3, redis-py 8's default protocol). They serve Redis
    Enterprise and Redis Cloud failovers; turned off, the check runs.
    """
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
        decode_responses=True,
    )
    return client


class RedisRateLimiter:
    """Counts requests and reserves tokens per key in Redis, shared by every worker.

    Args:
        client: From `connect`; closed by `aclose`.
        window_seconds: The length of a window; tests shorten it.
    """

    def __init__(self, client: redis.asyncio.Redis, *, window_seconds: float = WINDOW_SECONDS):
        self._client = client
        self._window_ms = round(window_seconds * 1000)
        self._script = client.register_script(_CHECK_AND_RESERVE)

    async def check_and_reserve(self, key: str, limits: KeyLimits, tokens: int) -> Decision:
        """Count one request of ``key`` and reserve ``tokens``, unless that exceeds a limit.

        One round trip: the script runs atomically in Redis (re-sent if a restarted
        Redis lost it).

        Raises:
            StoreUnavailable: Redis could not be reached or did not answer in time.
        """
        rpm = -1 if limits.rpm_limit is None else limits.rpm_limit
        tpm = -1 if limits.tpm_limit is None else limits.tpm_limit
        try:
            reply: Any = await self._script(
                keys=[PREFIX + "window:" + key], args=[rpm, tpm, tokens, self._window_ms]
            )
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        exceeded, requests, used, left_ms = reply
        return decide(limits, int(requests), int(used), exceeded or None, int(left_ms) / 1000)

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._client.aclose()


class RedisKeyStore:
    """Virtual keys in a Redis hash, with the keys this worker has read kept in memory.

    Args:
        client: From `connect`; shared with `RedisRateLimiter`, which closes it.
    """

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._known: dict[str, VirtualKey] = {}

    async def get(self, key: str) -> VirtualKey | None:
        """The virtual key ``key``: from memory if this worker read it before."""
        known = self._known.get(key)
        if known is not None:
            return known
        try:
            stored = await self._client.hget(PREFIX + "keys", key)
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        if stored is None:
            return None
        data = json.loads(stored)
        virtual_key = VirtualKey(tuple(data["models"]), KeyLimits(data["rpm"], data["tpm"]))
        self._known[key] = virtual_key
        return virtual_key

    async def put(self, key: str, virtual_key: VirtualKey) -> None:
        """Store ``virtual_key`` in Redis, for every worker."""
        limits = virtual_key.limits
        data = {
            "models": list(virtual_key.models),
            "rpm": limits.rpm_limit,
            "tpm": limits.tpm_limit,
        }
        try:
            await self._client.hset(PREFIX + "keys", key, json.dumps(data))
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        self._known[key] = virtual_key


def redis_backends(url: str) -> tuple[RedisRateLimiter, RedisKeyStore]:
    """The limiter and key store on one client for ``url``, for `Gateway`."""
    client = connect(url)
    return RedisRateLimiter(client), RedisKeyStore(client)
