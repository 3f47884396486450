"""Virtual keys, made by ``POST /key/generate``, and where the gateway keeps them.

`KeyStore` is the interface the gateway awaits, with two back ends: `MemoryKeyStore`
(the default: one process) and `examples.gateway.limiter_redis.RedisKeyStore` (every
worker that points at one Redis sees every key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .limiter import KeyLimits


@dataclass(frozen=True)
class VirtualKey:
    """A key made by ``POST /key/generate``; an empty ``models`` allows every model."""

    models: tuple[str, ...]
    limits: KeyLimits


class KeyStore(Protocol):
    """What the gateway needs of a key store; every method is a coroutine."""

    async def get(self, key: str) -> VirtualKey | None:
        """The virtual key ``key``, or ``None`` if there is no such key.

        Raises:
            StoreUnavailable: The store could not be reached in time.
        """
        ...

    async def put(self, key: str, virtual_key: VirtualKey) -> None:
        """Store ``virtual_key`` under ``key``.

        Raises:
            StoreUnavailable: The store could not be reached in time.
        """
        ...


class MemoryKeyStore:
    """Keys in this process's memory: seen by this process only."""

    def __init__(self) -> None:
        self._keys: dict[str, VirtualKey] = {}

    async def get(self, key: str) -> VirtualKey | None:
        return self._keys.get(key)

    async def put(self, key: str, virtual_key: VirtualKey) -> None:
        self._keys[key] = virtual_key
