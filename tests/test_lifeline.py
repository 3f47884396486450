"""The per-request owner of side work (`_lifeline.py`) on its own: `Lifeline`, `first_of`,
`cancel_requested`.

The response classes' tests pin what a client sees; these pin the module's own invariants
(its docstring), on both backends: `start_soon` starts nothing for a response that ends
first; `start` always calls its function and runs its clean-up; a side task's exception
surfaces as a task group would surface it; nothing runs after `Lifeline.run` returned, an
outer cancellation included. Every ordering is forced by events and checkpoints, not by
time; the few asyncio-only tests say why.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

from header_first_stream._lifeline import Lifeline, Side, Stopped, cancel_requested, first_of

pytestmark = pytest.mark.anyio


async def _passes(count: int = 10) -> None:
    """Let the event loop run ``count`` passes, and real time pass (trio's deferred calls
    run in a system task of their own): a deferred start still pending would run by then."""
    for _ in range(count):
        await anyio.lowlevel.checkpoint()
    await anyio.sleep(0.01)


async def _shielded_checkpoints(count: int = 5) -> None:
    """A clean-up that takes several loop passes, even inside a cancelled scope."""
    with anyio.CancelScope(shield=True):
        for _ in range(count):
            await anyio.lowlevel.checkpoint()


def _recording(events: list[str], name: str) -> Callable[[], Awaitable[None]]:
    """A side task that records being called and its clean-up (which takes loop passes)."""

    async def side() -> None:
        events.append(f"{name} called")
        try:
            await anyio.sleep_forever()
        finally:
            await _shielded_checkpoints()
            events.append(f"{name} cleaned up")

    return side


# --- run ---------------------------------------------------------------------------------


async def test_run_calls_the_work_with_the_lifeline_and_its_arguments() -> None:
    seen: list[object] = []

    async def work(lifeline: Lifeline, first: str, second: int) -> None:
        seen.extend([lifeline, first, second])

    lifeline = Lifeline()
    await lifeline.run(work, "a", 2)
    assert seen == [lifeline, "a", 2]
    assert not lifeline.stopped


async def test_the_works_exception_propagates_as_it_is() -> None:
    error = LookupError("work failed")

    async def work(lifeline: Lifeline) -> None:
        raise error

    with pytest.raises(LookupError) as info:
        await Lifeline().run(work)
    assert info.value is error


async def test_the_works_exception_waits_for_the_side_tasks_clean_up() -> None:
    events: list[str] = []

    async def work(lifeline: Lifeline) -> None:
        lifeline.start(_recording(events, "side"))
        await anyio.lowlevel.checkpoint()
        raise LookupError("work failed")

    with pytest.raises(LookupError, match=r"^work failed$"):
        await Lifeline().run(work)
    events.append("run raised")
    assert events == ["side called", "side cleaned up", "run raised"]


# --- start_soon --------------------------------------------------------------------------


async def test_start_soon_runs_beside_a_response_that_lasts_and_is_ended_with_it() -> None:
    events: list[str] = []
    running = anyio.Event()

    async def side(name: str) -> None:
        events.append(f"{name} called")
        running.set()
        try:
            await anyio.sleep_forever()
        finally:
            await _shielded_checkpoints()
            events.append(f"{name} cleaned up")

    sides: list[Side] = []

    async def work(lifeline: Lifeline) -> None:
        sides.append(lifeline.start_soon(side, "side"))
        assert not sides[0].started  # from the loop's next pass
        await running.wait()
        events.append("work done")

    with anyio.fail_after(5):
        await Lifeline().run(work)
    events.append("run returned")
    assert events == ["side called", "work done", "side cleaned up", "run returned"]
    assert sides[0].started
    assert sides[0].finished
    assert not sides[0].dropped


async def test_start_soon_is_dropped_when_the_response_ends_first() -> None:
    events: list[str] = []
    sides: list[Side] = []

    async def work(lifeline: Lifeline) -> None:
        sides.append(lifeline.start_soon(_recording(events, "side")))  # no checkpoint after

    await Lifeline().run(work)
    await _passes()  # a start still pending would have run by now
    assert events == []
    (side,) = sides
    assert side.dropped
    assert not side.started
    assert not side.finished


async def test_start_soon_while_the_response_ends_is_dropped_at_once() -> None:
    events: list[str] = []
    late: list[Side] = []

    async def starter(lifeline: Lifeline) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            late.append(lifeline.start_soon(_recording(events, "late")))

    async def work(lifeline: Lifeline) -> None:
        lifeline.start(starter, lifeline)
        await anyio.lowlevel.checkpoint()

    await Lifeline().run(work)
    await _passes()
    assert events == []
    (side,) = late
    assert side.dropped
    assert not side.started


class _Owner:
    """What a side task's function refers to (a response, with its scope and its store)."""

    def __init__(self) -> None:
        self.ran = anyio.Event()

    async def side(self) -> None:
        self.ran.set()
        await anyio.sleep_forever()


@pytest.mark.parametrize("how", ["start_soon", "start"])
async def test_what_a_side_task_refers_to_is_freed_when_the_lifeline_ends(how: str) -> None:
    # Without the garbage collector: nothing of a side task refers back to itself, so a
    # response (and a late-header store that logs when it is freed) goes when its call ends.
    owner = _Owner()
    freed = weakref.ref(owner)

    async def work(lifeline: Lifeline, owner: _Owner) -> None:
        getattr(lifeline, how)(owner.side)
        await owner.ran.wait()

    gc.disable()
    try:
        await Lifeline().run(work, owner)
        del owner
        assert freed() is None
    finally:
        gc.enable()


async def test_a_side_cancelled_before_it_started_never_starts() -> None:
    events: list[str] = []

    async def work(lifeline: Lifeline) -> None:
        side = lifeline.start_soon(_recording(events, "side"))
        side.cancel()
        await _passes()
        assert side.dropped
        assert not side.started

    await Lifeline().run(work)
    assert events == []


# --- start -------------------------------------------------------------------------------


async def test_start_always_calls_its_function_and_runs_its_clean_up() -> None:
    events: list[str] = []

    async def work(lifeline: Lifeline) -> None:
        lifeline.start(_recording(events, "side"))  # the response ends at once after it

    await Lifeline().run(work)
    events.append("run returned")
    assert events == ["side called", "side cleaned up", "run returned"]


async def test_start_on_a_stopped_lifeline_calls_the_function_cancelled() -> None:
    events: list[str] = []

    async def side() -> None:
        events.append("called")
        try:
            await anyio.lowlevel.checkpoint()
            events.append("past its first checkpoint")
        finally:
            events.append("cleaned up")

    async def work(lifeline: Lifeline) -> None:
        lifeline.stop()
        lifeline.start(side)

    lifeline = Lifeline()
    await lifeline.run(work)
    assert lifeline.stopped
    assert events == ["called", "cleaned up"]


async def test_start_while_the_response_ends_is_called_cancelled_and_waited_for() -> None:
    events: list[str] = []

    async def starter(lifeline: Lifeline) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            lifeline.start(_recording(events, "late"))

    async def work(lifeline: Lifeline) -> None:
        lifeline.start(starter, lifeline)
        await anyio.lowlevel.checkpoint()

    await Lifeline().run(work)
    events.append("run returned")
    assert events == ["late called", "late cleaned up", "run returned"]


async def test_start_after_the_lifeline_ended_raises_runtime_error() -> None:
    events: list[str] = []

    async def work(lifeline: Lifeline) -> None:
        pass

    lifeline = Lifeline()
    await lifeline.run(work)
    with pytest.raises(RuntimeError, match=r"^a side task started after its response ended$"):
        lifeline.start(_recording(events, "side"))
    await _passes()
    assert events == []


# --- stop --------------------------------------------------------------------------------


async def test_stop_cancels_the_response_and_its_side_tasks_and_run_returns() -> None:
    events: list[str] = []

    async def work(lifeline: Lifeline) -> None:
        lifeline.start(_recording(events, "side"))

        async def stopper() -> None:
            lifeline.stop()

        lifeline.start_soon(stopper)
        try:
            await anyio.sleep_forever()
        finally:
            events.append(f"work ended, stopped={lifeline.stopped}")

    lifeline = Lifeline()
    with anyio.fail_after(5):
        await lifeline.run(work)
    assert lifeline.stopped
    # As a task group's cancellation: the side task is cancelled before the work's own
    # clean-up runs (it ends after, its clean-up taking loop passes).
    assert events == ["side called", "work ended, stopped=True", "side cleaned up"]


# --- side errors -------------------------------------------------------------------------


async def test_a_side_task_failing_stops_the_response_and_run_raises_its_exception() -> None:
    error = LookupError("side failed")
    events: list[str] = []

    async def failing() -> None:
        await anyio.lowlevel.checkpoint()
        raise error

    async def work(lifeline: Lifeline) -> None:
        lifeline.start(failing)
        try:
            await anyio.sleep_forever()
        finally:
            events.append("work cancelled")

    lifeline = Lifeline()
    with anyio.fail_after(5), pytest.raises(LookupError) as info:
        await lifeline.run(work)
    assert info.value is error  # alone, not in a group: the work only saw the cancellation
    assert lifeline.stopped
    assert events == ["work cancelled"]


async def test_a_side_task_and_the_work_failing_raise_both_in_a_group() -> None:
    side_error = LookupError("side failed")
    work_error = KeyError("work failed")

    async def failing() -> None:
        raise side_error

    async def work(lifeline: Lifeline) -> None:
        lifeline.start(failing)
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            raise work_error from None

    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as info:
        await Lifeline().run(work)
    assert info.value.message == "errors in a response and beside it"
    assert info.value.exceptions == (side_error, work_error)


@pytest.mark.parametrize("work_ends", [False, True], ids=["work-cancelled", "work-ended"])
async def test_every_failing_side_task_is_raised_in_a_group_as_a_task_group_does(
    work_ends: bool,
) -> None:
    # None is lost: a side task that fails in its clean-up (cancelled by another one's
    # failure, or by the end) is raised with the other.
    first, second = LookupError("side failed"), KeyError("clean-up failed")

    async def failing() -> None:
        await anyio.lowlevel.checkpoint()
        raise first

    async def failing_clean_up(error: Exception) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            raise error

    async def work(lifeline: Lifeline) -> None:
        if work_ends:  # both fail once the work ended, in an order the loop decides
            lifeline.start(failing_clean_up, first)
            lifeline.start(failing_clean_up, second)
            await anyio.lowlevel.checkpoint()
        else:
            lifeline.start(failing_clean_up, second)
            lifeline.start(failing)
            await anyio.sleep_forever()

    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as info:
        await Lifeline().run(work)
    assert info.value.message == "errors in a response and beside it"
    raised = info.value.exceptions
    assert raised == (first, second) or (work_ends and raised == (second, first))


async def test_a_side_task_failing_in_its_clean_up_after_the_work_ended_is_raised() -> None:
    async def failing_clean_up() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            raise LookupError("clean-up failed")

    async def work(lifeline: Lifeline) -> None:
        lifeline.start(failing_clean_up)
        await anyio.lowlevel.checkpoint()

    with anyio.fail_after(5), pytest.raises(LookupError, match=r"^clean-up failed$"):
        await Lifeline().run(work)


async def test_a_side_task_failing_while_the_response_is_cancelled_from_outside() -> None:
    # The side's exception wins over the outer cancellation, as with a task group.
    async def work(lifeline: Lifeline, outside: anyio.CancelScope) -> None:
        async def failing() -> None:
            outside.cancel()
            raise LookupError("side failed")

        lifeline.start_soon(failing)
        await anyio.sleep_forever()

    with anyio.fail_after(5), pytest.raises(LookupError, match=r"^side failed$"):
        with anyio.CancelScope() as outside:
            await Lifeline().run(work, outside)


# --- the end: every side task waited for, shielded ---------------------------------------


async def test_an_outer_cancellation_waits_for_the_side_tasks_clean_up() -> None:
    events: list[str] = []
    called = anyio.Event()

    async def side() -> None:
        called.set()
        await _recording(events, "side")()

    async def work(lifeline: Lifeline, outside: anyio.CancelScope) -> None:
        lifeline.start_soon(side)
        await called.wait()
        outside.cancel()  # a timeout middleware, a server's nursery
        await anyio.sleep_forever()

    with anyio.fail_after(5):
        with anyio.CancelScope() as outside:
            try:
                await Lifeline().run(work, outside)
            finally:
                events.append("run ended")
    assert outside.cancelled_caught  # the cancellation propagated, after the wait
    assert events == ["side called", "side cleaned up", "run ended"]


async def test_the_end_waits_for_every_side_task_whatever_order_they_finish_in() -> None:
    events: list[str] = []

    async def quick() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            events.append("quick cleaned up")

    async def work(lifeline: Lifeline) -> None:
        lifeline.start(_recording(events, "slow"))  # waited for first, finishes last
        lifeline.start(quick)
        await anyio.lowlevel.checkpoint()

    await Lifeline().run(work)
    events.append("run returned")
    assert events == ["slow called", "quick cleaned up", "slow cleaned up", "run returned"]


async def test_an_outer_cancellation_during_the_end_does_not_cut_the_wait_short() -> None:
    events: list[str] = []

    async def work(lifeline: Lifeline, outside: anyio.CancelScope) -> None:
        async def side() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                outside.cancel()  # arrives while the end waits for this task
                await _shielded_checkpoints()
                events.append("side cleaned up")

        lifeline.start(side)
        await anyio.lowlevel.checkpoint()

    with anyio.fail_after(5):
        with anyio.CancelScope() as outside:
            await Lifeline().run(work, outside)
            events.append("run returned")
            await anyio.lowlevel.checkpoint()  # where the outer cancellation lands
    assert outside.cancelled_caught
    assert events == ["side cleaned up", "run returned"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # Task.cancel(): asyncio only
async def test_a_side_task_cancelled_natively_from_outside_is_not_an_error() -> None:
    # The event loop shutting down cancels every task: that is no error of the response's.
    events: list[str] = []

    async def work(lifeline: Lifeline) -> None:
        side = lifeline.start(_recording(events, "side"))
        await anyio.lowlevel.checkpoint()
        assert side.task is not None
        side.task.cancel()
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        assert side.finished
        assert not lifeline.stopped

    await Lifeline().run(work)
    assert events == ["side called", "side cleaned up"]


# --- first_of ----------------------------------------------------------------------------


class Listener:
    """A listener for `first_of` that records its life; it returns once ``leave`` is set."""

    def __init__(self, events: list[str], *, leave: bool = False) -> None:
        self.events = events
        self.listening = anyio.Event()  # set once it is called
        self.leave = anyio.Event()
        if leave:
            self.leave.set()

    async def __call__(self, *args: object) -> None:
        self.events.append(f"listening {list(args)}")
        self.listening.set()
        try:
            await self.leave.wait()
            self.events.append("left")
        finally:
            self.events.append("listener ended")


async def _value_at_once(events: list[str]) -> str:
    events.append("call ran")
    return "value"


async def _value_once_listened(events: list[str], listener: Listener) -> str:
    try:
        await listener.listening.wait()  # as a resolver doing I/O: the listener runs meanwhile
        return "value"
    finally:
        events.append("call ended")


async def _never(events: list[str]) -> str:
    try:
        # An event never set, not `sleep_forever()`: trio's sleeps open a cancel scope of
        # their own, which `first_of` does not enter its scope inside (tests/test_first_of.py).
        await anyio.Event().wait()
    finally:
        events.append("call ended")
    raise AssertionError("unreachable")


async def test_first_of_a_call_that_never_waits_starts_no_listener() -> None:
    events: list[str] = []
    assert await first_of(_value_at_once(events), Listener(events)) == "value"
    await _passes()  # a listener started anyway would have run by now
    assert events == ["call ran"]


async def test_first_of_a_call_that_waits_listens_with_its_arguments_and_returns() -> None:
    events: list[str] = []
    listener = Listener(events)
    with anyio.fail_after(5):
        assert await first_of(_value_once_listened(events, listener), listener, "a", 1) == "value"
    events.append("returned")
    # The listener is cancelled and waited for before first_of returns.
    assert events == ["listening ['a', 1]", "call ended", "listener ended", "returned"]


async def test_first_of_the_listener_returning_first_cancels_the_call_and_raises_stopped() -> None:
    events: list[str] = []
    with anyio.fail_after(5), pytest.raises(Stopped):
        await first_of(_never(events), Listener(events, leave=True))
    assert events == ["listening []", "left", "listener ended", "call ended"]
    assert not cancel_requested()  # the cancellation was the lifeline's own, and is spent
    await anyio.lowlevel.checkpoint()  # and no stray one is left for the next await


async def test_first_of_keeps_the_calls_shields_and_raises_stopped_if_it_ended_anyway() -> None:
    events: list[str] = []
    listener = Listener(events, leave=True)

    async def shielded() -> str:
        with anyio.CancelScope(shield=True):
            await listener.listening.wait()
            for _ in range(5):  # the listener returns and stops the lifeline meanwhile
                await anyio.lowlevel.checkpoint()
            events.append("shielded part done")
        return "value"

    with anyio.fail_after(5), pytest.raises(Stopped):
        await first_of(shielded(), listener)
    assert events == ["listening []", "left", "listener ended", "shielded part done"]
    assert not cancel_requested()


async def test_first_of_the_calls_exception_propagates() -> None:
    events: list[str] = []
    listener = Listener(events)

    async def failing() -> str:
        await listener.listening.wait()
        raise LookupError("resolver failed")

    with anyio.fail_after(5), pytest.raises(LookupError, match=r"^resolver failed$"):
        await first_of(failing(), listener)
    assert events == ["listening []", "listener ended"]


async def test_first_of_the_listener_failing_cancels_the_call_and_raises_its_exception() -> None:
    events: list[str] = []

    async def failing() -> None:
        await anyio.lowlevel.checkpoint()
        raise OSError("receive failed")

    with anyio.fail_after(5), pytest.raises(OSError, match=r"^receive failed$"):
        await first_of(_never(events), failing)
    assert events == ["call ended"]


async def test_first_of_a_cancellation_from_outside_waits_for_the_listener() -> None:
    events: list[str] = []
    listener = Listener(events)

    async def call(outside: anyio.CancelScope) -> str:
        await listener.listening.wait()
        outside.cancel()
        return await _never(events)

    with anyio.fail_after(5):
        with anyio.CancelScope() as outside:
            try:
                await first_of(call(outside), listener)
            finally:
                events.append("first_of ended")
    assert outside.cancelled_caught
    assert events == ["listening []", "call ended", "listener ended", "first_of ended"]


# --- cancel_requested --------------------------------------------------------------------


async def test_cancel_requested_sees_a_cancelled_scope() -> None:
    with anyio.CancelScope() as scope:
        assert not cancel_requested()
        scope.cancel()
        assert cancel_requested()
        await anyio.lowlevel.checkpoint()  # where the cancellation lands
    assert scope.cancelled_caught
    assert not cancel_requested()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # Task.cancel(): asyncio only
async def test_cancel_requested_tells_a_native_cancel_from_a_raised_cancelled_error() -> None:
    host = asyncio.current_task()
    assert host is not None
    seen: list[bool] = []
    try:
        raise asyncio.CancelledError
    except asyncio.CancelledError:
        seen.append(cancel_requested())
    host.cancel()
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        seen.append(cancel_requested())
        host.uncancel()
    assert seen == [False, True]
