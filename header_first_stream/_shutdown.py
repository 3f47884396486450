"""Noticing that the server is shutting down, so that endless streams can end.

A server's graceful shutdown waits for open responses; an endless stream (SSE, a long LLM
completion) would hold it until the server's own timeout, or forever. Responses created
with ``end_on_shutdown=True`` wait here, beside their body, and end when this returns.

Invariants:

1. Nothing is process-global or patched: the waiting state lives in an anyio `RunVar`, one
   per event loop, and the sources below are only read.
2. However many streams wait, one task per event loop polls (every `POLL_INTERVAL`
   seconds); the others sleep until it wakes them. When the polling task's response ends,
   it hands the polling to one sleeper.

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

import anyio
from anyio.lowlevel import RunVar

__all__ = ["POLL_INTERVAL", "begin_shutdown", "check_shutdown_options", "wait_for_server_exit"]

POLL_INTERVAL = 0.5
"""Seconds between two looks at the server's exit flag, by one task per event loop."""


class _Waiters:
    """The streams of one event loop that wait for the server to exit."""

    __slots__ = ("exiting", "polling", "sleepers")

    def __init__(self) -> None:
        self.exiting = False  # begin_shutdown() was called in this event loop
        self.polling: anyio.CancelScope | None = None  # the polling task's sleep
        self.sleepers: set[anyio.CancelScope] = set()

    def wake(self, *, everyone: bool) -> None:
        if everyone:
            for scope in self.sleepers:
                scope.cancel()
            if self.polling is not None:
                self.polling.cancel()
        elif self.sleepers:
            self.sleepers.pop().cancel()  # it takes the polling over


_WAITERS: RunVar[_Waiters | None] = RunVar("header_first_stream.shutdown", default=None)


def _waiters() -> _Waiters:
    waiters = _WAITERS.get()
    if waiters is None:
        waiters = _Waiters()
        _WAITERS.set(waiters)
    return waiters


def _server_exiting(waiters: _Waiters) -> bool:
    if waiters.exiting:
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
    waiters = _waiters()
    waiters.exiting = True
    waiters.wake(everyone=True)


async def wait_for_server_exit() -> None:
    """Return once the server is shutting down (see the module docstring)."""
    waiters = _waiters()
    while not _server_exiting(waiters):
        if waiters.polling is None:
            waiters.polling = polling = anyio.CancelScope()
            try:
                with polling:
                    # Polling: nothing would set an Event when a signal arrives.
                    while not _server_exiting(waiters):  # noqa: ASYNC110
                        await anyio.sleep(POLL_INTERVAL)
            finally:
                waiters.polling = None
                waiters.wake(everyone=_server_exiting(waiters))
            return
        with anyio.CancelScope() as sleeping:
            waiters.sleepers.add(sleeping)
            try:
                await anyio.sleep_forever()
            finally:
                waiters.sleepers.discard(sleeping)


def check_shutdown_options(
    end_on_shutdown: bool, shutdown_event: object, shutdown_grace_period: object
) -> None:
    """Raise TypeError/ValueError naming the shutdown option that is out of range."""
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
