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

`step`, then `Pending.watched` (together: `first_of`), await one coroutine (a header
resolver) unless the client leaves first, at the lowest cost: at ASGI spec 2.4 a cancel scope
and a listener together cost more than a whole Starlette response. The client leaving must
cancel the coroutine as anyio cancels, its shields holding, so it runs inside the lifeline's
scope, with the listener beside it. That scope may be entered late, at the coroutine's first
wait, only if no cancel scope of its own (a timeout's, a task group's, trio's `sleep`) is
open there: it would be exited out of order. anyio has no public way to tell, so
`_innermost_scope` reads it (the one place this package reads anyio's and trio's private
state). The first call of a code runs inside the scope from its start, and teaches whether
that code's calls can be stepped first: it returned without waiting, or its first wait had
no scope of its own open (`_learn`, per backend). A stepped call that returns at once costs
neither scope nor listener; one that waits is resumed inside the scope, entered at that
wait. A stepped call whose first wait is, this time, inside a scope of its own cannot be
held by the lifeline's scope: it is awaited to its end with the listener beside it, not
cancelled (nothing is sent if the client left), and its code enters the scope first from
then on. Code whose calls all returned at once is stepped without reading the scope (the
read costs a tenth of a Starlette response on asyncio); should one of its calls wait, it
is not known whether a scope of its own is open, so that call is awaited to its end in the
same way, and the scope at its end tells which it was.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel

__all__ = ["Lifeline", "Pending", "Side", "Stopped", "cancel_requested", "first_of", "step"]

T = TypeVar("T")


class Stopped(Exception):
    """`first_of`'s listener returned first: the coroutine was cancelled."""


def _asyncio_task() -> asyncio.Task[Any] | None:
    """The running asyncio task; ``None`` under trio (even as a guest of asyncio's loop)."""
    loop = _running_loop()
    if loop is None:  # no asyncio event loop in this thread (trio): asked first, as
        return None  # `current_task()` raises there, which costs more
    return _current_task(loop)


# Once per response at spec 2.4: bound here, not looked up in their modules every time.
_running_loop = asyncio._get_running_loop
_weak = weakref.ref

# `asyncio.current_task(loop)` is Python code up to 3.11, a lookup in this dict.
_current_task: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = getattr(
    getattr(asyncio.tasks, "_current_tasks", None), "get", asyncio.current_task
)

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

    async def run(
        self, work: Callable[..., Awaitable[None]], *args: object, scoped: bool = True
    ) -> None:
        """Run ``work(self, *args)`` in this task; return once it and every side task ended.

        ``scoped=False``: ``work`` runs outside the lifeline's scope, so `stop` does not
        cancel it (`first_of`, for a call with a scope of its own already open).
        """
        try:
            if scoped:
                with self._scope:
                    await work(self, *args)
            else:
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


# What was learned about the code of resolvers (`step`), per backend (the same code may
# open a scope on one only: anyio's `sleep` is trio's, which opens one), by `id()`; a
# code's rank only ever goes down. A code object's hash is computed anew each time, from
# all its parts: hence `id()`. An id reused by other code makes that code enter the scope
# first, or be stepped and fall back as `step` says: slower, not wrong. Emptied when full
# (code made at run time, by `exec`, could fill it).
_SCOPE_FIRST = 0  # a call waited inside a scope of its own: every call enters it first
_STEPS = 1  # calls waited with no scope of their own open: stepped, the scope read around
_AT_ONCE = 2  # every call returned without waiting: stepped, nothing read
_LEARNED_ON_ASYNCIO: dict[int, int] = {}
_LEARNED_ON_TRIO: dict[int, int] = {}
_LEARNED_SIZE = 1024


def _learned() -> dict[int, int]:
    """What was learned on this thread's backend (trio as asyncio's guest: asyncio's)."""
    return _LEARNED_ON_TRIO if _running_loop() is None else _LEARNED_ON_ASYNCIO


def _learn(code: object, rank: int) -> None:
    learned = _learned()
    if len(learned) == _LEARNED_SIZE:
        learned.clear()
    known = learned.get(id(code))
    if known is None or rank < known:
        learned[id(code)] = rank


_UNREADABLE = object()  # `_innermost_scope` where private state cannot be read
_PRIVATE: dict[str, Any] = {}  # per backend: what `_innermost_scope` reads, found once


def _innermost_scope() -> object:
    """This task's innermost cancel scope, as an opaque token to compare (`_scope_of`)."""
    return _scope_of(_asyncio_task())


def _scope_of(task: asyncio.Task[Any] | None) -> object:
    """The innermost cancel scope of ``task``, the running one (``None``: trio's).

    Private state of anyio's asyncio backend and of trio, read only here (pinned by
    ``tests/test_first_of.py`` against the versions this package is tested with).
    `_UNREADABLE` where it cannot be read: every call then enters its scope first.
    """
    if task is not None:  # asyncio (not trio as a guest of its loop: no task there)
        states = _PRIVATE.get("asyncio", _MISSING)
        if states is _MISSING:
            states = _find_private("asyncio")
        if states is None:  # pragma: no cover - an anyio that keeps it elsewhere
            return _UNREADABLE
        state = states.get(_weak(task))
        return None if state is None else state.cancel_scope
    current = _PRIVATE.get("trio", _MISSING)
    if current is _MISSING:
        current = _find_private("trio")
    if current is None:  # pragma: no cover - a trio that keeps it elsewhere
        return _UNREADABLE
    return current()._cancel_status


_MISSING = object()


def _find_private(backend: str) -> Any:
    """What `_innermost_scope` reads on ``backend``, or ``None`` if it is not there."""
    found: Any = None
    if backend == "asyncio":
        from anyio._backends import _asyncio as anyio_asyncio

        # The dict inside anyio's WeakKeyDictionary of task states, keyed by weak reference.
        found = getattr(getattr(anyio_asyncio, "_task_states", None), "data", None)
        if not isinstance(found, dict):  # pragma: no cover
            found = None
    else:
        import trio

        readable = hasattr(trio.lowlevel.current_task(), "_cancel_status")
        found = trio.lowlevel.current_task if readable else None
    _PRIVATE[backend] = found
    return found


def step(call: Coroutine[Any, Any, T], code: object = None, eager: bool = True) -> T | Pending[T]:
    """Run ``call`` up to its first wait: its value if it returned, else a `Pending`.

    Only code known to step safely is stepped here (``code``: what ``call`` runs, a
    resolver's code object; module docstring). Other calls (``eager=False``, ``code``
    unknown, ``None``, or seen opening a scope) are not stepped: a `Pending` that enters
    the lifeline's scope before the call runs, and learns about ``code`` from that call.
    A call of code whose calls all returned at once is stepped with nothing read; if it
    waits after all, it is not known whether a scope of its own is open, so it is treated
    as one that is (awaited to its end, not cancelled), and `Pending.watched` learns from
    the scope at its end whether one was.
    """
    loop = _running_loop()  # `_learned()`, inline
    learned = _LEARNED_ON_TRIO if loop is None else _LEARNED_ON_ASYNCIO
    rank = None if not eager or code is None else learned.get(id(code))
    if rank == _AT_ONCE:
        try:
            trap = call.send(None)
        except StopIteration as done:  # as every call before: nothing to watch
            return done.value  # type: ignore[no-any-return]
        task = None if loop is None else _current_task(loop)
        return Pending(call, trap, scoped=False, code=code, first_wait=_scope_of(task))
    if rank != _STEPS:
        return Pending(call, _NOT_STEPPED, scoped=True, code=code)
    task = None if loop is None else _current_task(loop)  # `_innermost_scope()`, inline
    before = _scope_of(task)  # readable: `_learn` was told so
    try:
        trap = call.send(None)
    except StopIteration as done:  # it returned without waiting: nothing to watch
        return done.value  # type: ignore[no-any-return]
    scoped = _scope_of(task) is before
    if not scoped:  # it stepped safely before, not this time: scope first from now on
        _learn(code, _SCOPE_FIRST)
    return Pending(call, trap, scoped=scoped)


_NOT_STEPPED = object()  # `Pending`'s trap when the call has not run at all


class Pending(Generic[T]):
    """A call that waits (`step`): `watched` awaits the rest unless the client leaves."""

    __slots__ = ("_call", "_code", "_first_wait", "_scoped", "_trap")

    def __init__(
        self,
        call: Coroutine[Any, Any, T],
        trap: object,
        *,
        scoped: bool,
        code: object = None,
        first_wait: object = None,
    ) -> None:
        self._call = call
        self._trap = trap  # what its first wait yielded, for the event loop
        self._scoped = scoped  # the lifeline's scope can hold it (no scope of its own open)
        self._code = code  # what to learn about from this call
        self._first_wait = first_wait  # with a code, stepped: the scope at its first wait

    async def watched(self, listen: Callable[..., Awaitable[object]], *args: object) -> T:
        """Await the call in this task, unless ``listen(*args)`` returns first.

        A cancellation from outside that came while it waited is raised, even if the call
        ended without noticing.

        Raises:
            Stopped: ``listen()`` returned first; the call was cancelled (or ended anyway).
        """
        result: list[T] = []
        lifeline = Lifeline()
        if self._trap is _NOT_STEPPED:  # the listener deferred: the call may not wait
            await lifeline.run(_first_of, self._call, self._code, listen, args, result)
        else:
            resumed = _Resumed(self._call, self._trap)
            try:
                await lifeline.run(_watched, resumed, listen, args, result, scoped=self._scoped)
            finally:
                if self._code is not None:  # the scope at its end is the one it began in
                    own_scope = _innermost_scope() is not self._first_wait
                    _learn(self._code, _SCOPE_FIRST if own_scope else _STEPS)
        if lifeline.stopped:
            raise Stopped  # even if the call ended anyway (it swallowed the cancellation)
        await anyio.lowlevel.checkpoint_if_cancelled()
        return result[0]


async def first_of(
    call: Coroutine[Any, Any, T],
    listen: Callable[..., Awaitable[object]],
    *args: object,
    code: object = None,
    eager: bool = True,
) -> T:
    """Await ``call`` in this task, unless ``listen(*args)`` returns first (`step`, then
    `Pending.watched`).

    Raises:
        Stopped: ``listen()`` returned first; ``call`` was cancelled (or ended anyway).
    """
    stepped = step(call, code, eager)
    if isinstance(stepped, Pending):
        return await stepped.watched(listen, *args)
    return stepped


async def _first_of(
    lifeline: Lifeline,
    call: Coroutine[Any, Any, T],
    code: object,
    listen: Callable[..., Awaitable[object]],
    args: tuple[object, ...],
    result: list[T],
) -> None:
    lifeline.start_soon(_stop_when_returned, lifeline, listen, args)
    if code is None:
        result.append(await call)
        return
    # Stepped here, inside the lifeline's scope, to learn whether its calls can be stepped
    # outside it: no scope of its own open at its first wait.
    before = _innermost_scope()
    at_once = _SCOPE_FIRST if before is _UNREADABLE else _AT_ONCE
    try:
        trap = call.send(None)
    except StopIteration as done:
        _learn(code, at_once)
        result.append(done.value)
        return
    except BaseException:  # raised without waiting: stepping it would have been safe too
        _learn(code, at_once)
        raise
    own_scope = before is _UNREADABLE or _innermost_scope() is not before
    _learn(code, _SCOPE_FIRST if own_scope else _STEPS)
    result.append(await _Resumed(call, trap))


async def _watched(
    lifeline: Lifeline,
    call: _Resumed[T],
    listen: Callable[..., Awaitable[object]],
    args: tuple[object, ...],
    result: list[T],
) -> None:
    lifeline.start(_stop_when_returned, lifeline, listen, args)  # the call waits: now
    result.append(await call)


class _Resumed(Awaitable[T]):
    """A coroutine stepped once, awaited from there: its pending wait first, then the rest."""

    __slots__ = ("_call", "_trap")

    def __init__(self, call: Coroutine[Any, Any, T], trap: object) -> None:
        self._call = call
        self._trap = trap

    def __await__(self) -> Generator[Any, Any, T]:
        call, trap = self._call, self._trap
        while True:  # what `yield from` does, from a wait already begun
            try:
                sent = yield trap
            except GeneratorExit:
                call.close()
                raise
            except BaseException as exc:  # a cancellation, delivered at the wait
                try:
                    trap = call.throw(exc)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
            else:
                try:
                    trap = call.send(sent)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]


async def _stop_when_returned(
    lifeline: Lifeline, listen: Callable[..., Awaitable[object]], args: tuple[object, ...]
) -> None:
    await listen(*args)
    lifeline.stop()
