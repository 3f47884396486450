"""Noticing that the server is shutting down, so that endless streams can end.

A server's graceful shutdown waits for open responses; an endless stream (SSE, a long LLM
completion) would hold it until the server's own timeout, or forever. Responses created
with ``end_on_shutdown=True`` register here, and are told when the server exits.

Invariants:

1. Nothing is process-global or patched: the waiting state lives in an anyio `RunVar`, one
   per event loop, and the sources below are only read.
2. However many streams watch, at most one task per event loop polls the server's flags
   (every `POLL_INTERVAL` seconds), a side task of a watching stream's `Lifeline`; a
   stream adds no task of its own, only a callback. When the polling task's stream ends,
   the polling moves to a stream still watching.
3. No notice is lost: `begin_shutdown()` tells every watching stream at once, without the
   polling task; and the marker "a task polls" is the polling task's own `Side`, set when
   it is created with `Lifeline.start` (which always runs it) and cleared in its
   ``finally``, so it cannot go stale however the streams end.

Sources of "the server is exiting", any of which ends the wait:

- `begin_shutdown()`, called in the event loop (for servers without a signal this module
  can read, e.g. from hypercorn's ``shutdown_trigger``);
- uvicorn's exit flag (``Server.should_exit``), found through its SIGTERM handler, as
  sse-starlette finds it;
- sse-starlette's ``AppStatus.should_exit``, when sse-starlette is imported; and when its
  ``AppStatus.enable_automatic_graceful_drain`` is ``False``, uvicorn's flag is ignored, as
  sse-starlette ignores it.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any

import anyio
from anyio.lowlevel import RunVar

from ._lifeline import Lifeline, Side

__all__ = [
    "POLL_INTERVAL",
    "begin_shutdown",
    "take_shutdown_options",
    "keep_polling",
    "unwatched",
    "wait_for_server_exit",
    "watch_server_exit",
]

POLL_INTERVAL = 0.5
"""Seconds between two looks at the server's exit flag, by one task per event loop."""


class _Watchers:
    """The streams of one event loop that end when the server exits."""

    __slots__ = ("exiting", "noticed", "polling", "watching")

    def __init__(self) -> None:
        self.exiting = False  # begin_shutdown() was called in this event loop
        self.noticed = False  # the exit was noticed and every stream told
        self.polling: Side | None = None  # the polling task, while it exists
        # Each watching stream's callback, and the lifeline the polling may run beside.
        self.watching: dict[Callable[[], None], Lifeline] = {}

    def notice(self) -> None:
        """The server exits: tell every watching stream (none watch once it was noticed)."""
        self.noticed = True
        watching, self.watching = self.watching, {}
        for on_exit in watching:
            on_exit()

    def start_polling(self, candidates: Iterable[Lifeline]) -> None:
        # Beside a lifeline that is not being stopped: a task started there would end at
        # once and hand the polling straight on.
        for lifeline in candidates:
            if not lifeline.stopped:
                self.polling = lifeline.start(self._poll)
                return

    async def _poll(self) -> None:
        try:
            while not _server_exiting(self):  # noqa: ASYNC110 - no signal to wait on
                await anyio.sleep(POLL_INTERVAL)
        finally:  # also when this stream's lifeline ends and cancels the polling
            self.polling = None
            if not self.noticed:
                if _server_exiting(self):
                    self.notice()
                else:  # a stream still watching polls from now on
                    self.start_polling(self.watching.values())


_WATCHERS: RunVar[_Watchers | None] = RunVar("header_first_stream.shutdown", default=None)


def _watchers() -> _Watchers:
    watchers = _WATCHERS.get()
    if watchers is None:
        watchers = _Watchers()
        _WATCHERS.set(watchers)
    return watchers


def _server_exiting(watchers: _Watchers) -> bool:
    if watchers.exiting:
        return True
    sse = sys.modules.get("sse_starlette.sse")
    app_status = getattr(sse, "AppStatus", None)
    if app_status is not None:
        if app_status.should_exit:
            return True
        if not app_status.enable_automatic_graceful_drain:
            return False
    # uvicorn installs its bound `Server.handle_exit` as the SIGTERM handler.
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return getattr(server, "should_exit", False) is True


def begin_shutdown() -> None:
    """Tell the streams of this event loop that the server is shutting down.

    Streams created with ``end_on_shutdown=True`` (the default of
    `HeaderFirstEventSourceResponse`) then end: their ``shutdown_event`` is set and, after
    their ``shutdown_grace_period``, they are cut off. uvicorn's exit signal is noticed
    without this call; call it for other servers, from their shutdown hook.

    Must be called in the server's event loop (from async code, or a callback it runs).
    """
    watchers = _watchers()
    watchers.exiting = True
    watchers.notice()  # again a no-op: a stream that watches after a notice is told at once
    if watchers.polling is not None:
        watchers.polling.cancel()  # nothing left to poll for


def watch_server_exit(lifeline: Lifeline, on_exit: Callable[[], None]) -> Callable[[], None]:
    """Call ``on_exit`` once the server exits; return the call that stops watching.

    ``lifeline`` is the watching stream's, beside which the polling task may run; stop
    watching before that lifeline ends. Costs no task per stream (invariant 2), and starts
    no polling: the stream calls `keep_polling` once it has lived `POLL_INTERVAL` (most
    responses end before a poll would matter, and a polling task started and cancelled per
    response would cost more than the response itself).
    """
    watchers = _watchers()
    if watchers.noticed:
        on_exit()
        return unwatched
    watchers.watching[on_exit] = lifeline

    def unwatch() -> None:
        watchers.watching.pop(on_exit, None)

    return unwatch


def keep_polling(lifeline: Lifeline) -> None:
    """Make sure a task polls the server's exit flag, starting one beside ``lifeline`` if none."""
    watchers = _watchers()
    if watchers.polling is None and not watchers.noticed:
        watchers.start_polling((lifeline,))


def unwatched() -> None:
    """The stop-watching call of a stream that watches nothing (a no-op)."""


async def wait_for_server_exit() -> None:
    """Return once the server is shutting down (polls; for code that waits by itself)."""
    watchers = _watchers()
    while not _server_exiting(watchers):  # noqa: ASYNC110 - no signal to wait on
        await anyio.sleep(POLL_INTERVAL)


def take_shutdown_options(
    response: Any, end_on_shutdown: bool, shutdown_event: object, shutdown_grace_period: object
) -> None:
    """Set a response's shutdown options; TypeError/ValueError naming one out of range."""
    if isinstance(shutdown_grace_period, bool) or not isinstance(
        shutdown_grace_period, int | float
    ):
        raise TypeError(
            "shutdown_grace_period must be a number of seconds, "
            f"got {type(shutdown_grace_period).__name__}"
        )
    if shutdown_grace_period < 0:
        raise ValueError("shutdown_grace_period must be >= 0")
    if not end_on_shutdown and (shutdown_event is not None or shutdown_grace_period):
        raise ValueError(
            "shutdown_event and shutdown_grace_period need end_on_shutdown=True: without "
            "it the stream does not watch for the server's shutdown"
        )
    response.end_on_shutdown = end_on_shutdown
    response.shutdown_event = shutdown_event
    response.shutdown_grace_period = shutdown_grace_period
