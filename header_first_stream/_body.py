"""Closing a response's body iterator: once, on every exit, bounded, never raising.

Invariant 4 of `_response.py`: the body iterator is closed when the response ends for any
reason, in the task (and inside the lifeline) that iterated it, unless it is a native
generator that ran to its end (closed already: no cancel scope to pay for on the common
path). Starlette wraps a sync iterable in a thread-pool async generator; closing that
wrapper does not close the iterable itself, so it is closed too.
"""

from __future__ import annotations

import logging
import types
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Protocol

import anyio
import anyio.to_thread

__all__ = ["Body", "close", "must_close", "started"]

logger = logging.getLogger("header_first_stream")


class Body(Protocol):
    """A response's body as this module reads it (`HeaderFirstStreamingResponse`)."""

    cleanup_timeout: float | None
    _iterating: AsyncIterator[Any] | None
    _exhausted: bool  # the iterator ended by itself
    _sync_content: object  # a sync iterable Starlette wrapped, to close it too

    @property
    def body_iterator(self) -> AsyncIterable[Any]: ...


def started(body: Body) -> AsyncIterator[Any]:
    """The body iterator, started once and shared by the peek and the loop."""
    if body._iterating is None:
        body._iterating = aiter(body.body_iterator)
    return body._iterating


async def close(body: Body) -> None:
    """Close ``body`` (`close_body`: its iterator and the sync iterable it wraps)."""
    await close_body(
        body._iterating or body.body_iterator, body._sync_content, body.cleanup_timeout
    )


def must_close(iterating: object, exhausted: bool, sync_content: object) -> bool:
    """Whether the body still needs closing (a plain call: the answer is mostly no).

    A native generator that ran to its end is closed already; any other iterator (an SDK's
    stream object) may hold its connection until ``aclose()``/``close()``.
    """
    if not exhausted or not isinstance(iterating, types.AsyncGeneratorType):
        return True
    return hasattr(sync_content, "close") and not isinstance(sync_content, types.GeneratorType)


async def close_body(iterator: Any, sync_content: object, within: float | None) -> None:
    """Close ``iterator`` (and the sync iterable it wraps), within ``within`` seconds."""
    # Shielded: on a disconnect this runs inside a cancelled scope, and the generator's
    # own `finally` may need to await (closing an upstream connection).
    with anyio.move_on_after(within, shield=True) as deadline:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                logger.exception("closing the body iterator failed")
        close = getattr(sync_content, "close", None)
        if close is not None:
            try:
                # Abandoned, not waited for, when it outlasts ``within``.
                await anyio.to_thread.run_sync(close, abandon_on_cancel=True)
            except Exception:
                logger.exception("closing the body iterator failed")
    # `cancel_called`, not `cancelled_caught`: a generator that swallowed the deadline's
    # cancellation has still had its clean-up cut short.
    if deadline.cancel_called:
        logger.warning("closing the body iterator took over %ss", within)
