"""`first_of` and `step` (`_lifeline.py`): a call stepped before anything is set up.

The first call of a resolver's code runs inside the lifeline's scope from its start, and
teaches whether its code's calls can be stepped outside it: it returned without waiting,
or its first wait had no cancel scope of its own open. Calls of such code are stepped
first: one that returns without waiting costs neither a cancel scope nor a listener; one
that waits is resumed inside the lifeline's scope, entered at its first wait, so the
listener returning cancels it, its shields holding. A stepped call whose first wait is, this
time, inside a scope of its own runs to its end (nothing is sent) and its code enters the
scope first from then on. The private reads this needs are pinned here against the anyio
and trio this package is tested with. Orderings are forced by events, not by time.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Awaitable, Callable, Generator

import anyio
import anyio.lowlevel
import pytest

from header_first_stream import _lifeline
from header_first_stream._lifeline import (
    _NOT_STEPPED,
    _UNREADABLE,
    Pending,
    Stopped,
    _innermost_scope,
    _Resumed,
    first_of,
    step,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _fresh_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no code learned about (the memory is per process)."""
    monkeypatch.setattr(_lifeline, "_LEARNED_ON_ASYNCIO", {})
    monkeypatch.setattr(_lifeline, "_LEARNED_ON_TRIO", {})


async def _passes(count: int = 10) -> None:
    """Loop passes and a little real time: a listener started anyway would have run."""
    for _ in range(count):
        await anyio.lowlevel.checkpoint()
    await anyio.sleep(0.01)


async def _resolver(events: list[str], gate: anyio.Event | None, own_scope: bool = False) -> str:
    """One resolver's code, three ways: at once (no ``gate``), waiting at its base, or
    waiting inside a cancel scope of its own (as `fail_after`, a task group, trio's own
    `sleep`)."""
    events.append("call ran")
    if gate is None:
        return "value"
    try:
        if own_scope:
            with anyio.CancelScope():
                await gate.wait()
        else:
            await gate.wait()
    except anyio.get_cancelled_exc_class():
        events.append("call cancelled")
        raise
    events.append("call ended")
    return "value"


CODE = _resolver.__code__


def _leaving(
    events: list[str], then_open: anyio.Event | None = None
) -> Callable[[], Awaitable[None]]:
    """A listener that returns at once (the client left), opening ``then_open`` first."""

    async def listen() -> None:
        events.append("left")
        if then_open is not None:
            then_open.set()

    return listen


async def _stays() -> None:
    await anyio.sleep_forever()


def _stepped(pending: object) -> bool:
    assert isinstance(pending, Pending)
    return pending._trap is not _NOT_STEPPED


def _not_stepped(pending: object) -> bool:
    """Whether ``pending`` was not stepped; its call is closed, never to be awaited."""
    assert isinstance(pending, Pending)
    pending._call.close()
    return pending._trap is _NOT_STEPPED


async def _learn_that_it_steps() -> None:
    """Teach `CODE` that its calls wait with no scope of their own open."""
    gate = anyio.Event()
    gate.set()
    with anyio.fail_after(5):
        assert await first_of(_resolver([], gate), _stays, code=CODE) == "value"
    assert {id(CODE): _lifeline._STEPS} == _lifeline._learned()


# --- the private reads, pinned -------------------------------------------------------------


async def test_the_innermost_scope_is_read_and_changes_with_every_scope_entered_and_left() -> None:
    before = _innermost_scope()
    assert before is not _UNREADABLE
    with anyio.CancelScope():
        inside = _innermost_scope()
        assert inside is not before
        async with anyio.create_task_group():
            assert _innermost_scope() not in (before, inside)
        assert _innermost_scope() is inside
    assert _innermost_scope() is before


# --- the first call of a code: inside the scope, learning ------------------------------------


async def test_a_first_call_that_returns_at_once_is_not_stepped_and_teaches_that_it_steps() -> None:
    events: list[str] = []
    pending = step(_resolver(events, None), CODE)
    assert not _stepped(pending)
    assert events == []  # not run yet
    assert isinstance(pending, Pending)
    assert await pending.watched(_leaving(events)) == "value"
    await _passes()
    assert events == ["call ran"]  # the listener was never called
    assert {id(CODE): _lifeline._AT_ONCE} == _lifeline._learned()
    # Its next call is stepped: it returns its value, with nothing set up.
    assert step(_resolver(events, None), CODE) == "value"


async def test_a_first_call_that_waits_at_its_base_teaches_that_it_steps() -> None:
    events: list[str] = []
    gate = anyio.Event()
    gate.set()
    with anyio.fail_after(5):
        assert await first_of(_resolver(events, gate), _stays, code=CODE) == "value"
    assert {id(CODE): _lifeline._STEPS} == _lifeline._learned()
    pending = step(_resolver(events, anyio.Event()), CODE)
    assert _stepped(pending)
    assert isinstance(pending, Pending)
    assert pending._scoped
    pending._call.close()


async def test_a_first_call_waiting_in_its_own_scope_is_cancelled_and_teaches_scope_first() -> None:
    events: list[str] = []
    with anyio.fail_after(5), pytest.raises(Stopped):
        await first_of(_resolver(events, anyio.Event(), True), _leaving(events), code=CODE)
    assert events == ["call ran", "left", "call cancelled"]
    assert {id(CODE): _lifeline._SCOPE_FIRST} == _lifeline._learned()
    # Its later calls are not stepped, even one that would return at once.
    assert _not_stepped(step(_resolver(events, None), CODE))


async def test_a_first_call_that_raises_before_it_waits_raises_and_teaches_that_it_steps() -> None:
    async def failing() -> str:
        raise LookupError("resolver failed at once")

    code = failing.__code__
    with pytest.raises(LookupError, match=r"^resolver failed at once$"):
        await first_of(failing(), _stays, code=code)
    assert {id(code): _lifeline._AT_ONCE} == _lifeline._learned()
    with pytest.raises(LookupError, match=r"^resolver failed at once$"):
        step(failing(), code)  # stepped: raised by the step itself


async def test_without_a_code_nothing_is_stepped_or_learned() -> None:
    events: list[str] = []
    assert _not_stepped(step(_resolver(events, None)))
    assert await first_of(_resolver(events, None), _stays) == "value"
    assert _lifeline._learned() == {}


async def test_where_the_scope_cannot_be_read_no_code_learns_that_it_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_lifeline, "_innermost_scope", lambda: _UNREADABLE)
    events: list[str] = []
    assert await first_of(_resolver(events, None), _stays, code=CODE) == "value"
    gate = anyio.Event()
    gate.set()
    assert await first_of(_resolver(events, gate), _stays, code=CODE) == "value"
    assert {id(CODE): _lifeline._SCOPE_FIRST} == _lifeline._learned()
    with anyio.fail_after(5), pytest.raises(Stopped):
        await first_of(_resolver(events, anyio.Event(), True), _leaving(events), code=CODE)
    assert events[-2:] == ["left", "call cancelled"]


async def test_the_memory_of_codes_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lifeline, "_LEARNED_SIZE", 2)
    codes = [object(), object(), object()]  # kept alive: their ids stay theirs
    for code in codes:
        assert await first_of(_resolver([], None), _stays, code=code) == "value"
    assert {id(codes[2]): _lifeline._AT_ONCE} == _lifeline._learned()  # emptied when full


# --- calls of code that returned at once: stepped, nothing read ---------------------------------


async def _learn_that_it_returns_at_once() -> None:
    assert await first_of(_resolver([], None), _stays, code=CODE) == "value"
    assert {id(CODE): _lifeline._AT_ONCE} == _lifeline._learned()


async def test_a_call_of_code_that_returned_at_once_and_now_waits_runs_to_its_end() -> None:
    await _learn_that_it_returns_at_once()
    events: list[str] = []
    gate = anyio.Event()
    # Nothing was read before its step: whether a scope of its own is open is not known,
    # so it is treated as if one were: the client leaving does not cancel it.
    with anyio.fail_after(5):
        pending = step(_resolver(events, gate), CODE)
        assert _stepped(pending)
        assert isinstance(pending, Pending)
        assert not pending._scoped
        with pytest.raises(Stopped):
            await pending.watched(_leaving(events, then_open=gate))
    assert events == ["call ran", "left", "call ended"]
    # Its end showed no scope of its own: its calls are stepped, the scope read around.
    assert {id(CODE): _lifeline._STEPS} == _lifeline._learned()
    events.clear()
    with anyio.fail_after(5), pytest.raises(Stopped):
        await first_of(_resolver(events, anyio.Event()), _leaving(events), code=CODE)
    assert events == ["call ran", "left", "call cancelled"]


async def test_a_call_of_code_that_returned_at_once_and_now_waits_in_its_own_scope() -> None:
    await _learn_that_it_returns_at_once()
    events: list[str] = []
    gate = anyio.Event()
    gate.set()
    with anyio.fail_after(5):
        assert await first_of(_resolver(events, gate, True), _stays, code=CODE) == "value"
    assert {id(CODE): _lifeline._SCOPE_FIRST} == _lifeline._learned()
    assert _not_stepped(step(_resolver(events, None), CODE))


# --- calls of code that steps: stepped first -------------------------------------------------


async def test_a_stepped_call_that_waits_at_its_base_is_watched_inside_the_scope() -> None:
    await _learn_that_it_steps()
    events: list[str] = []
    gate = anyio.Event()
    pending = step(_resolver(events, gate), CODE)
    assert _stepped(pending)
    assert events == ["call ran"]  # run up to its first wait, in the step
    assert isinstance(pending, Pending)
    gate.set()
    with anyio.fail_after(5):
        assert await pending.watched(_stays) == "value"
    assert events == ["call ran", "call ended"]


async def test_the_listener_returning_cancels_a_stepped_call_waiting_at_its_base() -> None:
    await _learn_that_it_steps()
    events: list[str] = []
    with anyio.fail_after(5), pytest.raises(Stopped):
        await first_of(_resolver(events, anyio.Event()), _leaving(events), code=CODE)
    assert events == ["call ran", "left", "call cancelled"]


async def test_a_stepped_call_waiting_in_its_own_scope_runs_to_its_end_then_is_scoped_first() -> (
    None
):
    await _learn_that_it_steps()
    events: list[str] = []
    gate = anyio.Event()
    # Stepped, its first wait inside its own scope: the lifeline's scope cannot hold it, so
    # the client leaving does not cancel it; it ends, and nothing is returned. (`watched`
    # awaited at once: a scope entered in between would be exited out of order.)
    with anyio.fail_after(5):
        pending = step(_resolver(events, gate, True), CODE)
        assert _stepped(pending)
        assert isinstance(pending, Pending)
        assert not pending._scoped
        assert {id(CODE): _lifeline._SCOPE_FIRST} == _lifeline._learned()
        with pytest.raises(Stopped):
            await pending.watched(_leaving(events, then_open=gate))
    assert events == ["call ran", "left", "call ended"]
    # Its later calls run inside the scope from their start, even after one that returned
    # at once: the client leaving cancels them.
    assert await first_of(_resolver(events, None), _stays, code=CODE) == "value"
    assert {id(CODE): _lifeline._SCOPE_FIRST} == _lifeline._learned()
    events.clear()
    with anyio.fail_after(5), pytest.raises(Stopped):
        await first_of(_resolver(events, anyio.Event(), True), _leaving(events), code=CODE)
    assert events == ["call ran", "left", "call cancelled"]


async def test_not_eager_a_call_of_code_that_steps_runs_inside_the_scope_from_its_start() -> None:
    await _learn_that_it_steps()
    events: list[str] = []
    pending = step(_resolver(events, anyio.Event(), True), CODE, eager=False)
    assert not _stepped(pending)
    assert isinstance(pending, Pending)
    with anyio.fail_after(5), pytest.raises(Stopped):
        await pending.watched(_leaving(events))
    assert events == ["call ran", "left", "call cancelled"]


async def test_a_cancellation_from_outside_reaches_a_stepped_call_and_propagates() -> None:
    await _learn_that_it_steps()
    events: list[str] = []
    with anyio.fail_after(5):
        with anyio.CancelScope() as outside:
            pending = step(_resolver(events, anyio.Event()), CODE)
            assert isinstance(pending, Pending)
            outside.cancel()
            await pending.watched(_stays)
    assert outside.cancelled_caught
    assert events == ["call ran", "call cancelled"]


# --- _Resumed, driven by hand --------------------------------------------------------------


@types.coroutine
def _trap(name: str) -> Generator[str, object, object]:
    return (yield name)


async def _two_waits(events: list[str]) -> str:
    try:
        first = await _trap("first wait")
        events.append(f"got {first!r}")
        try:
            await _trap("second wait")
        except LookupError as exc:
            events.append(f"caught {exc}")
        return "value"
    finally:
        events.append("call ended")


def test_a_resumed_call_yields_its_pending_wait_then_gets_what_is_sent_and_thrown() -> None:
    events: list[str] = []
    call = _two_waits(events)
    trap = call.send(None)
    assert trap == "first wait"
    driver = _Resumed(call, trap).__await__()
    assert next(driver) == "first wait"  # the wait already begun, for the event loop
    assert driver.send("sent") == "second wait"
    with pytest.raises(StopIteration) as done:
        driver.throw(LookupError("thrown"))
    assert done.value.value == "value"
    assert events == ["got 'sent'", "caught thrown", "call ended"]


def test_a_resumed_call_returns_what_it_returns_after_a_send() -> None:
    async def one_wait() -> str:
        return f"after {await _trap('wait')!r}"

    call = one_wait()
    driver = _Resumed(call, call.send(None)).__await__()
    next(driver)
    with pytest.raises(StopIteration) as done:
        driver.send(1)
    assert done.value.value == "after 1"


def test_an_exception_thrown_into_a_resumed_call_that_does_not_catch_it_propagates() -> None:
    events: list[str] = []
    call = _two_waits(events)
    driver = _Resumed(call, call.send(None)).__await__()
    next(driver)
    with pytest.raises(KeyError):
        driver.throw(KeyError("not caught"))
    assert events == ["call ended"]


def test_closing_a_resumed_call_closes_the_call() -> None:
    events: list[str] = []
    call = _two_waits(events)
    driver = _Resumed(call, call.send(None)).__await__()
    next(driver)
    driver.close()
    assert events == ["call ended"]
    assert inspect.getcoroutinestate(call) == "CORO_CLOSED"


async def test_what_is_learned_on_one_backend_is_not_used_on_the_other() -> None:
    other = _lifeline._LEARNED_ON_TRIO
    if _lifeline._learned() is other:
        other = _lifeline._LEARNED_ON_ASYNCIO
    other[id(CODE)] = _lifeline._AT_ONCE  # as if its calls returned at once on the other
    assert _not_stepped(step(_resolver([], None), CODE))
    assert _lifeline._learned() == {}
