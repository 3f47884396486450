"""`Lifeline`: the one owner of everything that runs beside one response.

A response (or the middleware, for one request) runs in the request's own task, inside one
anyio cancel scope; the work beside it (the disconnect listener, pings, an SSE
``data_sender_callable``, the server-exit polling, a held head's timer) are the lifeline's
side tasks. It starts them, cancels them, and waits for them on every exit. This is the
package's one backend-specific module; everything else is anyio.

Why not an anyio task group: a task group costs ~80 us a response on asyncio and ~95 us
on trio, against ~5 us for a whole Starlette response at ASGI spec 2.4 (``docs/benchmarks.md``
and ``scripts/bench``). A side task here is a bare asyncio task or a trio system task
(trio's only task that needs no nursery), each in an anyio cancel scope of its own.

Invariants:

1. Nothing outlives the call: when `Lifeline.run` returns or raises, every side task that
   was created has finished, its clean-up (``finally``, ``async with``) included. The
   wait for them is shielded, and entered only when one is still running, so an outer
   cancellation (a timeout middleware, a server's nursery) cannot cut it short.
2. Two ways to start: `start_soon` for the package's own work (the listener, a timer): it
   starts at the event loop's next pass, and a response that ends before that creates no
   task at all. `start` for user callables that the peers always call (sse-starlette's
   task group calls ``data_sender_callable`` however soon the response ends): a task now,
   always called; if the lifeline ended first, it is cancelled at its first checkpoint, so
   its code up to there and its clean-up always run.
3. One signal says "stop": `Lifeline.stop()` (the client left, the server exits), read as
   `Lifeline.stopped`. It cancels the response and every side task, as a task group's
   cancellation does, before the response's own clean-up runs.
4. A side task's exception stops the response and is raised by `run` (alone, or in a
   group with every other side task's and the response's own), as a task group raises
   it; a cancellation from outside propagates once every side task has finished.

`first_of` awaits one coroutine (a header resolver) unless the client leaves first: a
lifeline whose side task is the listener, deferred, so a resolver that returns without
waiting starts no task. The resolver runs inside the lifeline's anyio cancel scope, entered
before it runs, so that the client leaving cancels it with its shields holding. (Stepping
the resolver once before entering the scope would save the scope for one that returns at
once, but a scope the resolver entered in that step, a timeout's or a task group's, would
then be exited out of order; anyio has no public way to tell whether it did.)
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

__all__ = ["Lifeline", "Side", "Stopped", "cancel_requested", "first_of"]

T = TypeVar("T")


class Stopped(Exception):
    """`first_of`'s listener returned first: the coroutine was cancelled."""


def _asyncio_task() -> asyncio.Task[Any] | None:
    """The running asyncio task; ``None`` under trio (even as a guest of asyncio's loop)."""
    try:
        return asyncio.current_task()
    except RuntimeError:  # no asyncio event loop in this thread
        return None


_SCOPE_CLASSES: dict[bool, type[anyio.CancelScope]] = {}


def new_scope(on_asyncio: bool) -> anyio.CancelScope:
    """``anyio.CancelScope()`` without its backend lookup (a third of a scope's cost).

    ``anyio.CancelScope()`` finds the running backend on every call; the class it returns
    is the same for every scope of that backend, so it is looked up once per backend.
    """
    cls = _SCOPE_CLASSES.get(on_asyncio)
    if cls is None:
        cls = _SCOPE_CLASSES[on_asyncio] = type(anyio.CancelScope())
    return cls()


def cancel_requested() -> bool:
    """Whether this task is being cancelled (by any scope, or a native ``Task.cancel``)."""
    if anyio.current_effective_deadline() == -math.inf:
        return True
    task = _asyncio_task()
    return task is not None and task.cancelling() > 0


class Side:
    """One side task: its cancel scope, and whether it started and finished."""

    __slots__ = ("dropped", "finished", "handle", "scope", "started", "task", "waiter")

    def __init__(self) -> None:
        self.scope: anyio.CancelScope | None = None  # made when its task is created
        self.started = False  # its task exists
        self.finished = False
        self.dropped = False  # deferred, and cancelled before it started: it never will
        self.waiter: anyio.Event | None = None  # set by `Lifeline._end` to wait on
        self.handle: asyncio.Handle | None = None  # asyncio: the deferred start
        self.task: asyncio.Task[None] | None = None  # asyncio keeps only a weak reference

    def cancel(self) -> None:
        """Cancel this task, or its start if it has not started (then it never does)."""
        if self.scope is None:  # not started: its scope is made with its task
            self.dropped = True
            if self.handle is not None:
                self.handle.cancel()  # its references are dropped at once
        else:
            self.scope.cancel()


class Lifeline:
    """The side tasks of one response, and the cancel scope the response runs in."""

    __slots__ = ("_closed", "_ended", "_errors", "_on_asyncio", "_scope", "_sides", "stopped")

    def __init__(self) -> None:
        self.stopped = False
        self._on_asyncio = _asyncio_task() is not None
        self._scope = new_scope(self._on_asyncio)
        self._sides: list[Side] = []
        self._ended = False  # ending: deferred starts are dropped from now on
        self._closed = False  # ended: every side task finished
        self._errors: list[BaseException] | None = None  # the side tasks' exceptions

    async def run(self, work: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run ``work(self, *args)`` in this task; return once it and every side task ended."""
        try:
            with self._scope:
                await work(self, *args)
        except BaseException as exc:
            await self._end()
            errors = self._errors
            if errors is None:
                raise
            if not isinstance(exc, anyio.get_cancelled_exc_class()):
                errors.append(exc)  # the response's own, after what stopped it
            raise _surfaced(errors) from None
        await self._end()
        if self._errors is not None:
            raise _surfaced(self._errors)

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> Side:
        """Run ``fn(*args)`` beside the response from the loop's next pass, if it lasts."""
        side = Side()
        if self._ended:
            side.dropped = True  # the response is ending: it would start too late
            return side
        self._sides.append(side)
        if self._on_asyncio:
            loop = asyncio.get_running_loop()
            side.handle = loop.call_soon(self._spawn, side, fn, args)
        else:
            import trio  # only ever imported under trio

            context = contextvars.copy_context()
            trio.lowlevel.current_trio_token().run_sync_soon(self._spawn, side, fn, args, context)
        return side

    def start(self, fn: Callable[..., Awaitable[object]], *args: object) -> Side:
        """Run ``fn(*args)`` beside the response, always: called even if the response ends."""
        if self._closed:
            raise RuntimeError("a side task started after its response ended")
        side = Side()
        self._sides.append(side)
        self._spawn(side, fn, args)
        if self._ended or self.stopped:
            side.cancel()  # called, and cancelled at its first checkpoint
        return side

    def stop(self) -> None:
        """Cancel the response and its side tasks (the client left, the server exits)."""
        self.stopped = True
        self._scope.cancel()
        for side in self._sides:
            side.cancel()

    def _spawn(
        self,
        side: Side,
        fn: Callable[..., Awaitable[object]],
        args: tuple[object, ...],
        context: contextvars.Context | None = None,
    ) -> None:
        """Create the side's task, unless it was dropped (a deferred start only can be)."""
        if side.dropped:
            return
        side.started = True
        side.scope = new_scope(self._on_asyncio)
        if self._on_asyncio:
            # The deferred start's handle holds this side and ``fn``: let go of it, or the
            # side and what ``fn`` refers to (the response, its scope) form a cycle that
            # only the garbage collector frees.
            side.handle = None
            side.task = asyncio.get_running_loop().create_task(self._side(side, fn, args))
        else:
            import trio

            context = context or contextvars.copy_context()
            trio.lowlevel.spawn_system_task(self._side, side, fn, args, context=context)

    async def _side(
        self, side: Side, fn: Callable[..., Awaitable[object]], args: tuple[object, ...]
    ) -> None:
        assert side.scope is not None
        try:
            with side.scope:
                await fn(*args)
        except anyio.get_cancelled_exc_class():
            raise  # from outside (the event loop shutting down)
        except BaseException as exc:  # raised by `run`, as a task group raises it
            if self._errors is None:
                self._errors = [exc]
            else:
                self._errors.append(exc)
            self.stop()
        finally:
            side.finished = True
            if side.waiter is not None:
                side.waiter.set()

    async def _end(self) -> None:
        """Cancel every side task and wait for those that run (invariant 1)."""
        self._ended = True
        while self._sides:  # a side task may start another while it ends
            sides, self._sides = self._sides, []
            running: list[Side] = []
            for side in sides:
                side.cancel()
                if side.started and not side.finished:
                    side.waiter = anyio.Event()
                    running.append(side)
            if running:
                with anyio.CancelScope(shield=True):
                    for side in running:
                        if not side.finished:
                            assert side.waiter is not None
                            await side.waiter.wait()
        self._closed = True


def _surfaced(errors: list[BaseException]) -> BaseException:
    """What `Lifeline.run` raises: the one exception, or every one in a group."""
    if len(errors) == 1:
        return errors[0]
    return BaseExceptionGroup("errors in a response and beside it", errors)


async def first_of(
    call: Awaitable[T], listen: Callable[..., Awaitable[object]], *args: object
) -> T:
    """Await ``call`` in this task, unless ``listen(*args)`` returns first.

    Raises:
        Stopped: ``listen()`` returned first; ``call`` was cancelled (or ended anyway).
    """
    result: list[T] = []
    lifeline = Lifeline()
    await lifeline.run(_first_of, call, listen, args, result)
    if lifeline.stopped:
        raise Stopped  # even if the call ended anyway (it swallowed the cancellation)
    return result[0]


async def _first_of(
    lifeline: Lifeline,
    call: Awaitable[T],
    listen: Callable[..., Awaitable[object]],
    args: tuple[object, ...],
    result: list[T],
) -> None:
    lifeline.start_soon(_stop_when_returned, lifeline, listen, args)
    result.append(await call)


async def _stop_when_returned(
    lifeline: Lifeline, listen: Callable[..., Awaitable[object]], args: tuple[object, ...]
) -> None:
    await listen(*args)
    lifeline.stop()
