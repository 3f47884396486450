"""The disconnect listener: the side task that tells a response its client left.

It runs beside a response, as a side task of the response's `Lifeline`, and waits through
the response's `_wait_for_disconnect` hook (which calls ``listen_for_disconnect``, the
Starlette extension point, and lets the SSE class send pings while it waits). When the
client leaves, or the server exits (with ``end_on_shutdown``), it stops the lifeline: the
one "stop" signal of invariant 6 of `_response.py`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
from starlette.types import Receive

from ._lifeline import Lifeline
from ._shutdown import POLL_INTERVAL, keep_polling

__all__ = ["FINAL_SEND_GRACE", "listen", "on_server_exit", "wait_for_disconnect"]

logger = logging.getLogger("header_first_stream")

FINAL_SEND_GRACE = 0.25
"""Seconds a final body message may still take once the client left or the server exits."""


class _Listened(Protocol):
    """What the listener reads of its response (`HeaderFirstStreamingResponse`)."""

    shutdown_event: anyio.Event | None
    shutdown_grace_period: float
    _ending: bool  # the final body message is being sent
    _polls_later: bool  # it watches the server's exit: the polling starts once it lived

    async def _wait_for_disconnect(self, receive: Receive, until: float = math.inf) -> bool: ...


async def listen(response: _Listened, receive: Receive, lifeline: Lifeline) -> None:
    """Wait until the client leaves, then stop the response."""
    # A stream still open `POLL_INTERVAL` in makes sure the server's exit is polled for
    # (see `_shutdown.watch_server_exit`); shorter ones never need it.
    if not response._polls_later:
        await response._wait_for_disconnect(receive)
    elif not await response._wait_for_disconnect(receive, anyio.current_time() + POLL_INTERVAL):
        keep_polling(lifeline)
        await response._wait_for_disconnect(receive)
    await _stop(response, lifeline)


async def wait_for_disconnect(
    listen_for_disconnect: Callable[[Receive], Awaitable[None]], receive: Receive, until: float
) -> bool:
    """Wait through ``listen_for_disconnect``: ``True`` once the client left, ``False`` at
    ``until``."""
    if until == math.inf:  # the common case: no cancel scope to pay for
        await listen_for_disconnect(receive)
        return True
    with anyio.CancelScope(deadline=until):
        await listen_for_disconnect(receive)
        return True
    return False


def on_server_exit(response: _Listened, lifeline: Lifeline) -> None:
    """The server exits: set the stream's ``shutdown_event``, cut it off after its grace."""
    if response.shutdown_event is not None:
        response.shutdown_event.set()
    logger.info("server shutting down: ending an open stream")
    # A body that ends by itself meanwhile ends the lifeline, and this task with it.
    lifeline.start_soon(_stop, response, lifeline, response.shutdown_grace_period)


async def _stop(response: _Listened, lifeline: Lifeline, after: float = 0) -> None:
    """Cancel the response (the client left, or the server exits), after ``after``."""
    if after:
        await anyio.sleep(after)
    if response._ending:
        # The final message is being sent. A server may close the connection inside that
        # send (hypercorn does, on `Connection: close`) and report a disconnect: cut it
        # short only if it stalls, never half-way through a closing send.
        await anyio.sleep(FINAL_SEND_GRACE)
    lifeline.stop()
