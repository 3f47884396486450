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
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import anyio
import sniffio

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
    return sniffio.current_async_library() == "asyncio"


async def run_watched(work: Callable[..., Awaitable[None]], *args: object) -> None:
    """Run ``work(watch, *args)`` in this task; return when it ended or was stopped."""
    if _on_asyncio():
        await _AsyncioWatch().run(work, args)
    else:
        await _run_trio(work, args)


async def first_of(call: Awaitable[T], listen: Callable[[], Awaitable[object]]) -> T:
    """Await ``call`` in this task, unless ``listen()`` returns first.

    Raises:
        Stopped: ``listen()`` returned first; ``call`` was cancelled (or ended anyway).
    """
    if _on_asyncio():
        return await _AsyncioListener(listen).first_of(call)
    return await _first_of_trio(call, listen)


def cancel_requested() -> bool:
    """Whether this task is being cancelled (by any scope, or a native ``Task.cancel``)."""
    if anyio.current_effective_deadline() == -math.inf:
        return True
    if _on_asyncio():
        task = asyncio.current_task()
        return task is not None and task.cancelling() > 0
    return False


# -- asyncio -------------------------------------------------------------------------------


class _AsyncioWatch:
    """The response in an anyio cancel scope of this task; side tasks as bare tasks."""

    __slots__ = ("_error", "_scope", "_sides", "stopped")

    def __init__(self) -> None:
        self.stopped = False
        self._scope = anyio.CancelScope()
        self._sides: list[asyncio.Task[None]] = []
        self._error: BaseException | None = None  # the first side task's exception

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        side = asyncio.get_running_loop().create_task(self._side(fn, args))
        self._sides.append(side)

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
            if isinstance(exc, asyncio.CancelledError):
                raise error from None
            raise BaseExceptionGroup("errors in a watched response", [error, exc]) from None
        await self._end_sides()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def _side(self, fn: Callable[..., Awaitable[object]], args: tuple[object, ...]) -> None:
        try:
            await fn(*args)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # raised by `run`, as a task group raises it
            if self._error is None:
                self._error = exc
            self.stop()

    async def _end_sides(self) -> None:
        sides = self._sides
        while sides:  # a side task may start another while it ends
            pending = [side for side in sides if not side.done()]
            sides.clear()
            if not pending:
                return
            for side in pending:
                side.cancel()
            await asyncio.wait(pending)


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


# -- trio ----------------------------------------------------------------------------------


class _TrioWatch:
    """The response in the body of a nursery; the nursery's cancel scope is the signal."""

    __slots__ = ("_nursery",)

    def __init__(self, nursery: Any) -> None:
        self._nursery = nursery

    @property
    def stopped(self) -> bool:
        return bool(self._nursery.cancel_scope.cancel_called)

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        self._nursery.start_soon(fn, *args)

    def stop(self) -> None:
        self._nursery.cancel_scope.cancel()


async def _run_trio(work: Callable[..., Awaitable[None]], args: tuple[object, ...]) -> None:
    import trio  # only ever imported under trio

    with collapse_excgroups():
        async with trio.open_nursery() as nursery:
            watch = _TrioWatch(nursery)
            try:
                await work(watch, *args)
            finally:
                watch.stop()  # the side tasks end with the response


async def _first_of_trio(call: Awaitable[T], listen: Callable[[], Awaitable[object]]) -> T:
    result: list[T] = []
    stopped = False

    async def work(watch: Watch) -> None:
        async def listener() -> None:
            nonlocal stopped
            await listen()
            stopped = True
            watch.stop()

        watch.start_soon(listener)
        result.append(await call)

    await _run_trio(work, ())
    if stopped or not result:
        raise Stopped
    return result[0]
