"""Type aliases for the ideas this package adds; ASGI types come from `starlette.types`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, TypeAlias

from starlette.responses import Response
from starlette.types import Scope

HeaderValue: TypeAlias = str | int
"""A header value: a `str`, or an `int` sent as decimal text."""

HeaderSource: TypeAlias = Mapping[str, HeaderValue] | Iterable[tuple[str, HeaderValue]]
"""Headers as a resolver may return them: a mapping, or (name, value) pairs."""

RawHeaders: TypeAlias = list[tuple[bytes, bytes]]

HeaderResolver: TypeAlias = Callable[[], Awaitable[HeaderSource]]
"""An async callable, taking no arguments, that returns the late headers."""

BYTES_TYPES = (bytes, memoryview)
"""For ``isinstance``, built once: ``bytes | memoryview`` builds a union on every call
(~70 ns, a quarter of what raw ASGI costs per chunk)."""

Chunk: TypeAlias = str | bytes | memoryview

# Written out, not `Chunk | None`: the API reference shows only public names.
ChunkHeaderResolver: TypeAlias = Callable[
    [str | bytes | memoryview | None], Awaitable[HeaderSource]
]
"""With ``peek_first_chunk=True``: receives the first chunk (``None`` for an empty body)."""

EarlyErrorHandler: TypeAlias = Callable[[Exception], Response | None]
"""Maps an exception raised before the first chunk to the response to send instead.

Return ``None`` to use the default 502 response.
"""

ScopeHeaderResolver: TypeAlias = Callable[[Scope], Awaitable[HeaderSource]]
"""An async callable taking the request's ASGI scope and returning late headers."""

EventHeaderResolver: TypeAlias = Callable[[Any], Awaitable[HeaderSource]]
"""With ``peek_first_chunk=True`` on the SSE class: receives the first item as yielded."""

ResolverErrorPolicy: TypeAlias = Literal["error", "degrade"]
"""What a failed resolver leads to: an error response, or the response without its headers."""
