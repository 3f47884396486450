"""Running a response while the client is watched: the package's one backend-specific module.

Everything else in the package is anyio. This module is not, because an anyio task group is
the largest cost of a response: ~80 us on asyncio and ~95 us on trio per response on the
benchmark machine, against ~5 us for a whole Starlette response at ASGI spec 2.4 (figures
and commands in ``docs/benchmarks.md``). What it gives instead:

- `run_watched`: the response runs in the request's own task, inside one stop signal (an
  anyio cancel scope, so that a shield in the response's own code holds as anyio
  promises); side tasks (the disconnect listener, pings, the server-exit polling) run
  beside it and may stop it. A side task is a bare asyncio task, or a trio system task
  (the only trio task that needs no nursery), each in an anyio cancel scope of its own. It
  is started at the event loop's next pass (asyncio's ``call_soon``, trio's
  ``run_sync_soon``), which a response that never waits ends before: then no task is
  created at all.
- `first_of`: await one call (the head's resolver) unless the client leaves first: a
  `run_watched` whose side task is the listener, so that a resolver that returns without
  waiting (a no-op or cached one) starts no task.
- `cancel_requested`: whether the running task is being cancelled, told apart from a
  ``CancelledError`` some code raised on its own.

Invariants:

1. One signal says "stop": `Watch.stop()` (or `Stopped`, from `first_of`); `Watch.stopped`
   reads it. Nothing else decides that the client left.
2. No side task outlives the call that started it: one that started is cancelled and
   waited for before `run_watched` and `first_of` return, however they end; one that had
   not started does nothing when it does.
3. A side task's exception stops the response and is raised by `run_watched` (when the
   response itself did not raise; with it, both in a group), as a task group raises it.
4. A cancellation from outside propagates: the stop signal absorbs only its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import anyio

__all__ = [
    "Stopped",
    "Watch",
    "cancel_requested",
    "first_of",
    "run_watched",
]

T = TypeVar("T")


class Stopped(Exception):
    """`first_of`'s listener returned first: the coroutine was cancelled."""


class Watch(Protocol):
    """What a watched response and its side tasks share."""

    @property
    def stopped(self) -> bool:
        """Whether `stop` was called (by a side task, or the response itself)."""

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``fn(*args)`` beside the response, until the response ends."""

    def stop(self) -> None:
        """Cancel the response and its side tasks (the client left, the server exits)."""


def _asyncio_task() -> asyncio.Task[Any] | None:
    """The running asyncio task; ``None`` under trio (even as a guest of asyncio's loop)."""
    try:
        return asyncio.current_task()
    except RuntimeError:  # no asyncio event loop in this thread
        return None


async def run_watched(work: Callable[..., Awaitable[None]], *args: object) -> None:
    """Run ``work(watch, *args)`` in this task; return when it ended or was stopped."""
    await _Watch(_asyncio_task() is not None).run(work, args)


async def first_of(
    call: Awaitable[T], listen: Callable[..., Awaitable[object]], *args: object
) -> T:
    """Await ``call`` in this task, unless ``listen(*args)`` returns first.

    Raises:
        Stopped: ``listen()`` returned first; ``call`` was cancelled (or ended anyway).
    """
    result: list[T] = []
    watch = _Watch(_asyncio_task() is not None)
    await watch.run(_first_of_work, (call, listen, args, result))
    if watch.stopped:
        raise Stopped  # even if the call ended anyway (it swallowed the cancellation)
    return result[0]


async def _first_of_work(
    watch: Watch,
    call: Awaitable[T],
    listen: Callable[..., Awaitable[object]],
    args: tuple[object, ...],
    result: list[T],
) -> None:
    watch.start_soon(_stop_when_returned, watch, listen, args)
    result.append(await call)


async def _stop_when_returned(
    watch: Watch, listen: Callable[..., Awaitable[object]], args: tuple[object, ...]
) -> None:
    await listen(*args)
    watch.stop()


def cancel_requested() -> bool:
    """Whether this task is being cancelled (by any scope, or a native ``Task.cancel``)."""
    if anyio.current_effective_deadline() == -math.inf:
        return True
    task = _asyncio_task()
    return task is not None and task.cancelling() > 0


# -- the watch -----------------------------------------------------------------------------


class _Side:
    """One side task: started or not yet, finished, and how to cancel and wait for it."""

    __slots__ = ("finished", "handle", "scope", "task", "waiter")

    def __init__(self) -> None:
        self.scope: anyio.CancelScope | None = None  # set once the task has started
        self.finished = False
        self.waiter: anyio.Event | None = None  # set by `_Watch._end_sides` to wait on
        # asyncio: the callback that starts it, cancelled (its references dropped at once)
        # if the response ends first; and the task, as asyncio keeps only a weak reference.
        self.handle: asyncio.Handle | None = None
        self.task: asyncio.Task[None] | None = None


class _Watch:
    """The response in an anyio cancel scope of this task; side tasks beside it.

    A side task is a bare asyncio task, or a trio system task (trio starts a task outside
    a nursery only there): either costs a fraction of a task group. Each runs in an anyio
    cancel scope of its own, and one that had not started when the response ended returns
    at its first step without doing anything.
    """

    __slots__ = ("_ended", "_error", "_on_asyncio", "_scope", "_sides", "stopped")

    def __init__(self, on_asyncio: bool) -> None:
        self.stopped = False
        self._on_asyncio = on_asyncio
        self._scope = anyio.CancelScope()
        self._sides: list[_Side] = []
        self._ended = False  # side tasks that start from now on return at once
        self._error: BaseException | None = None  # the first side task's exception

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        side = _Side()
        self._sides.append(side)
        # Started at the event loop's next pass, which a response that never waits ends
        # before: then no task is created at all.
        context = contextvars.copy_context()
        if self._on_asyncio:
            loop = asyncio.get_running_loop()
            side.handle = loop.call_soon(self._spawn, side, fn, args, context=context)
        else:
            import trio  # only ever imported under trio

            token = trio.lowlevel.current_trio_token()
            token.run_sync_soon(self._spawn, side, fn, args, context)

    def _spawn(
        self,
        side: _Side,
        fn: Callable[..., Awaitable[object]],
        args: tuple[object, ...],
        context: contextvars.Context | None = None,
    ) -> None:
        if self._ended or self.stopped:
            return  # the response ended, or is ending, first
        if self._on_asyncio:
            side.task = asyncio.get_running_loop().create_task(self._side(side, fn, args))
        else:
            import trio

            trio.lowlevel.spawn_system_task(self._side, side, fn, args, context=context)

    def stop(self) -> None:
        # As a task group's cancellation: the side tasks too, before the response's own
        # clean-up runs (a producer feeding the body must see a cancellation, not the
        # body's channel closed under it).
        self.stopped = True
        self._scope.cancel()
        for side in self._sides:
            if side.scope is not None:
                side.scope.cancel()

    async def run(self, work: Callable[..., Awaitable[None]], args: tuple[object, ...]) -> None:
        try:
            with self._scope:
                await work(self, *args)
        except BaseException as exc:
            await self._end_sides()
            error = self._error
            if error is None:
                raise
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise error from None
            raise BaseExceptionGroup("errors in a watched response", [error, exc]) from None
        await self._end_sides()
        if self._error is not None:
            raise self._error

    async def _side(
        self, side: _Side, fn: Callable[..., Awaitable[object]], args: tuple[object, ...]
    ) -> None:
        if self._ended or self.stopped:
            return  # the response ended, or is ending, before this task's first step
        try:
            with anyio.CancelScope() as side.scope:
                await fn(*args)
        except anyio.get_cancelled_exc_class():
            raise  # from outside (the event loop shutting down)
        except BaseException as exc:  # raised by `run`, as a task group raises it
            if self._error is None:
                self._error = exc
            self.stop()
        finally:
            side.finished = True
            if side.waiter is not None:
                side.waiter.set()

    async def _end_sides(self) -> None:
        while running := self._end():  # a side task may start another while it ends
            for side in running:
                assert side.waiter is not None
                await side.waiter.wait()

    def _end(self) -> list[_Side]:
        """End the watch: cancel every side task; return those to wait for (started)."""
        self._ended = True  # one not started yet returns at its first step
        running: list[_Side] = []
        for side in self._sides:
            if side.handle is not None:
                side.handle.cancel()  # not started yet: its callback never runs
            if side.scope is not None and not side.finished:
                side.scope.cancel()
                side.waiter = anyio.Event()
                running.append(side)
        self._sides.clear()
        return running
