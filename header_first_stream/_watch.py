"""Running a response while the client is watched: the package's one backend-specific module.

Everything else in the package is anyio. This module is not, because anyio's task group is
the largest cost of a response: ~80 us on asyncio and ~95 us on trio per response on the
benchmark machine, against ~5 us for a whole Starlette response at ASGI spec 2.4 (figures
and commands in ``docs/benchmarks.md``). What it gives instead, on each backend:

- `run_watched`: the response runs in the request's own task, inside one stop signal (a
  cancel scope); side tasks (the disconnect listener, pings, the server-exit polling) run
  beside it and may stop it. asyncio: an anyio `CancelScope` and bare tasks (~10 us); trio:
  a nursery, which already is that scope (~55 us).
- `first_of`: await one call (the head's resolver) unless the client leaves first.
  asyncio: the listener task is started by a callback at the event loop's next pass, so
  a call that returns without waiting (a no-op or cached resolver) starts nothing; one
  that waits gets the listener, which cancels the request's task as ``asyncio.timeout``
  does (``Task.cancel``, counted with ``uncancel``). trio: a nursery, as `run_watched`
  (trio cancels only through a scope, and its tasks only start in a nursery).
- `cancel_requested`: whether the running task is being cancelled, told apart from a
  ``CancelledError`` some code raised on its own.

Invariants:

1. One signal says "stop": `Watch.stop()` (or `Stopped`, from `first_of`); `Watch.stopped`
   reads it. Nothing else decides that the client left.
2. No side task outlives the call that started it: each is cancelled and waited for
   before `run_watched` and `first_of` return, however they end.
3. A side task's exception stops the response and is raised by `run_watched` (when the
   response itself did not raise), as a task group raises it; one exception is raised as
   itself, never wrapped in a group.
4. A cancellation from outside propagates: the stop signal absorbs only its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

import anyio

__all__ = [
    "Stopped",
    "Watch",
    "cancel_requested",
    "collapse_excgroups",
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


@contextmanager
def collapse_excgroups() -> Iterator[None]:
    """Raise the one exception of a group as itself, as Starlette does for its task group."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        exc = group.exceptions[0]
        context = None if exc.__suppress_context__ else exc.__context__
        raise exc from exc.__cause__ or context


def _on_asyncio() -> bool:
    # The cheapest public question anyio answers about the running backend.
    return anyio.get_cancelled_exc_class() is asyncio.CancelledError


async def run_watched(work: Callable[..., Awaitable[None]], *args: object) -> None:
    """Run ``work(watch, *args)`` in this task; return when it ended or was stopped."""
    await _Watch(_on_asyncio()).run(work, args)


async def first_of(call: Awaitable[T], listen: Callable[[], Awaitable[object]]) -> T:
    """Await ``call`` in this task, unless ``listen()`` returns first.

    Raises:
        Stopped: ``listen()`` returned first; ``call`` was cancelled (or ended anyway).
    """
    if _on_asyncio():
        return await _AsyncioListener(listen).first_of(call)
    result: list[T] = []
    watch = _Watch(on_asyncio=False)
    await watch.run(_first_of_work, (call, listen, result))
    if watch.stopped:
        raise Stopped
    return result[0]


async def _first_of_work(
    watch: Watch, call: Awaitable[T], listen: Callable[[], Awaitable[object]], result: list[T]
) -> None:
    watch.start_soon(_stop_when_returned, watch, listen)
    result.append(await call)


async def _stop_when_returned(watch: Watch, listen: Callable[[], Awaitable[object]]) -> None:
    await listen()
    watch.stop()


def cancel_requested() -> bool:
    """Whether this task is being cancelled (by any scope, or a native ``Task.cancel``)."""
    if anyio.current_effective_deadline() == -math.inf:
        return True
    if _on_asyncio():
        task = asyncio.current_task()
        return task is not None and task.cancelling() > 0
    return False


# -- the watch -----------------------------------------------------------------------------


class _Side:
    """One side task: started or not yet, finished, and how to cancel and wait for it."""

    __slots__ = ("finished", "scope", "task", "waiter")

    def __init__(self) -> None:
        self.scope: anyio.CancelScope | None = None  # set once the task has started
        self.finished = False
        self.waiter: anyio.Event | None = None  # set by `_Watch._end_sides` to wait on
        # asyncio keeps only a weak reference to a task: this one keeps it running.
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
        task = self._side(side, fn, args)
        if self._on_asyncio:
            side.task = asyncio.get_running_loop().create_task(task)
        else:
            import trio  # only ever imported under trio

            trio.lowlevel.spawn_system_task(lambda: task, context=contextvars.copy_context())

    def stop(self) -> None:
        self.stopped = True
        self._scope.cancel()

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
        if self._ended:
            return  # the response ended before this task's first step
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
        self._ended = True
        sides = self._sides
        while sides:  # a side task may start another while it ends
            running = [side for side in sides if side.scope is not None and not side.finished]
            sides.clear()
            for side in running:
                assert side.scope is not None
                side.scope.cancel()
                side.waiter = anyio.Event()
            for side in running:
                assert side.waiter is not None
                await side.waiter.wait()


# -- asyncio -------------------------------------------------------------------------------


class _AsyncioListener:
    """`first_of`'s listener: a task, started only once this task waits, that cancels it."""

    __slots__ = ("_error", "_host", "_listen", "_side", "_stopped")

    def __init__(self, listen: Callable[[], Awaitable[object]]) -> None:
        self._listen = listen
        self._host = asyncio.current_task()
        self._side: asyncio.Task[None] | None = None
        self._stopped = False
        self._error: BaseException | None = None  # the listener's own exception

    async def first_of(self, call: Awaitable[T]) -> T:
        host = self._host
        assert host is not None  # first_of runs in a task
        cancelling = host.cancelling()
        # Runs at the event loop's next pass, which comes only if `call` waits: a call
        # that returns at once (a no-op or cached resolver) starts no task.
        start = asyncio.get_running_loop().call_soon(self._start)
        try:
            result = await call
        except asyncio.CancelledError:
            # Ours, and no other cancellation besides it: the client left (or the
            # listener failed, which a task group would raise too).
            if not self._stopped or host.uncancel() > cancelling:
                raise
        else:
            if not self._stopped:
                return result
            host.uncancel()  # delivered, and swallowed by the call: still stopped
        finally:
            start.cancel()
            side = self._side
            if side is not None and not side.done():
                side.cancel()
                await asyncio.wait((side,))
        if self._error is not None:
            raise self._error
        raise Stopped

    def _start(self) -> None:
        self._side = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._listen()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._error = exc
        self._stopped = True
        assert self._host is not None
        self._host.cancel()
