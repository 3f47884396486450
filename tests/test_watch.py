"""The watch primitive (`_watch.py`), on its own: `first_of`, `run_watched`, `cancel_requested`.

The response classes' tests pin what a client sees; these pin the primitive's own promises
(its module docstring's invariants), on both backends. Two tests are asyncio-only, each
saying why: they use ``Task.cancel()``, which trio does not have.
"""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

from header_first_stream._watch import Stopped, Watch, cancel_requested, first_of, run_watched

pytestmark = pytest.mark.anyio


async def _value_at_once(events: list[str]) -> str:
    events.append("call ran")
    return "value"


async def _value_after_a_wait(events: list[str]) -> str:
    try:
        await anyio.sleep(0.01)  # as a resolver doing I/O: the listener runs meanwhile
        return "value"
    finally:
        events.append("call ended")


async def _never(events: list[str]) -> str:
    try:
        await anyio.sleep_forever()
    finally:
        events.append("call ended")
    raise AssertionError("unreachable")


def _listener(events: list[str], leave: anyio.Event | None = None):  # type: ignore[no-untyped-def]
    async def listen() -> None:
        events.append("listening")
        if leave is None:
            await anyio.sleep_forever()
        else:
            await leave.wait()
        events.append("left")

    return listen


async def test_a_call_that_never_waits_never_listens() -> None:
    events: list[str] = []
    assert await first_of(_value_at_once(events), _listener(events)) == "value"
    await anyio.sleep(0.01)  # a listener started anyway would have run by now
    assert events == ["call ran"]


async def test_a_call_that_waits_is_watched_and_returns_its_value() -> None:
    events: list[str] = []
    assert await first_of(_value_after_a_wait(events), _listener(events)) == "value"
    assert events == ["listening", "call ended"]


async def test_the_listener_returning_first_cancels_the_call_and_raises_stopped() -> None:
    events: list[str] = []
    leave = anyio.Event()
    leave.set()
    with anyio.fail_after(5), pytest.raises(Stopped):
        await first_of(_never(events), _listener(events, leave))
    assert events == ["listening", "left", "call ended"]
    assert not cancel_requested()  # the cancellation was the watch's own, and is spent
    await anyio.lowlevel.checkpoint()  # and no stray one is left for the next await


async def test_a_call_that_swallows_the_cancellation_still_ends_stopped() -> None:
    events: list[str] = []
    leave = anyio.Event()

    async def stubborn() -> str:
        leave.set()
        try:
            await anyio.Event().wait()
        except anyio.get_cancelled_exc_class():
            events.append("swallowed")
        # A pass through the event loop after it (Python 3.11's tracer does not follow a
        # call that swallowed an exception thrown into it back to its caller otherwise).
        await anyio.lowlevel.checkpoint()
        return "value"

    with anyio.fail_after(5), pytest.raises(Stopped):
        await first_of(stubborn(), _listener(events, leave))
    assert events == ["listening", "left", "swallowed"]
    assert not cancel_requested()
    await anyio.lowlevel.checkpoint()


async def test_a_cancellation_from_outside_propagates_and_is_not_stopped() -> None:
    events: list[str] = []
    with anyio.move_on_after(0.05) as outside:
        await first_of(_never(events), _listener(events))
    assert outside.cancelled_caught
    assert events == ["listening", "call ended"]


async def test_the_listener_failing_raises_its_exception() -> None:
    events: list[str] = []

    async def failing() -> None:
        await anyio.lowlevel.checkpoint()
        raise RuntimeError("receive failed")

    with anyio.fail_after(5), pytest.raises(RuntimeError, match=r"^receive failed$"):
        await first_of(_never(events), failing)
    assert events == ["call ended"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # Task.cancel(): asyncio only
async def test_a_native_cancel_together_with_the_listener_propagates() -> None:
    events: list[str] = []
    host = asyncio.current_task()
    assert host is not None

    async def listen() -> None:
        await anyio.lowlevel.checkpoint()
        host.cancel()  # someone else's cancellation, in the same pass as the listener's

    with pytest.raises(asyncio.CancelledError):
        await first_of(_never(events), listen)
    assert events == ["call ended"]
    assert host.uncancel() == 0  # the watch took back its own cancellation only


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


async def test_cancel_requested_sees_a_cancelled_scope() -> None:
    with anyio.CancelScope() as scope:
        assert not cancel_requested()
        scope.cancel()
        assert cancel_requested()
        await anyio.lowlevel.checkpoint()  # where the cancellation lands
    assert scope.cancelled_caught
    assert not cancel_requested()


async def test_run_watched_runs_the_work_with_side_tasks_ended_after_it() -> None:
    events: list[str] = []

    started = anyio.Event()

    async def side(name: str) -> None:
        try:
            events.append(f"{name} started")
            started.set()
            await anyio.sleep_forever()
        finally:
            events.append(f"{name} ended")

    async def work(watch: Watch, name: str) -> None:
        watch.start_soon(side, "side")
        await started.wait()
        events.append(f"{name} done")

    await run_watched(work, "work")
    assert events == ["side started", "work done", "side ended"]


async def test_a_side_task_stopping_the_watch_ends_the_work() -> None:
    events: list[str] = []

    async def work(watch: Watch) -> None:
        async def stopper() -> None:
            events.append("stopping")
            watch.stop()

        watch.start_soon(stopper)
        try:
            await anyio.sleep_forever()
        finally:
            events.append(f"work ended, stopped={watch.stopped}")

    with anyio.fail_after(5):
        await run_watched(work)
    assert events == ["stopping", "work ended, stopped=True"]


async def test_a_side_task_failing_stops_the_work_and_raises_its_exception() -> None:
    async def work(watch: Watch) -> None:
        async def failing() -> None:
            raise LookupError("side failed")

        watch.start_soon(failing)
        await anyio.sleep_forever()

    with anyio.fail_after(5), pytest.raises(LookupError, match=r"^side failed$"):
        await run_watched(work)


async def test_a_side_task_failing_while_the_work_is_cancelled_from_outside() -> None:
    # The side's exception wins over the cancellation (on trio it comes grouped with
    # trio's own Cancelled once the outer scope took its own out, as with a task group).
    async def work(watch: Watch, outside: anyio.CancelScope) -> None:
        async def failing() -> None:
            outside.cancel()
            raise LookupError("side failed")

        watch.start_soon(failing)
        await anyio.sleep_forever()

    with anyio.fail_after(5), pytest.raises((LookupError, BaseExceptionGroup)) as info:
        with anyio.CancelScope() as outside:
            await run_watched(work, outside)
    raised = info.value
    while isinstance(raised, BaseExceptionGroup) and len(raised.exceptions) == 1:
        raised = raised.exceptions[0]
    assert isinstance(raised, LookupError)
    assert str(raised) == "side failed"


async def test_a_side_task_started_while_the_sides_end_is_ended_too() -> None:
    events: list[str] = []

    async def work(watch: Watch) -> None:
        async def late() -> None:
            events.append("late started")
            await anyio.sleep_forever()

        async def starter() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                watch.start_soon(late)  # while being cancelled at the end

        watch.start_soon(starter)
        await anyio.lowlevel.checkpoint()

    with anyio.fail_after(5):
        await run_watched(work)
    assert events in ([], ["late started"])  # ended before or after its first step


async def test_stopping_cancels_the_side_tasks_before_the_works_clean_up() -> None:
    # As a task group: a producer feeding the body must see a cancellation, not the body's
    # channel closed under it by the response's clean-up.
    events: list[str] = []
    closed = anyio.Event()

    async def producer() -> None:
        try:
            await closed.wait()
            events.append("producer woke to a closed channel")
        except anyio.get_cancelled_exc_class():
            events.append("producer cancelled")
            raise

    async def work(watch: Watch) -> None:
        async def stopper() -> None:
            await anyio.sleep(0.01)  # the producer is waiting by then
            watch.stop()

        watch.start_soon(producer)
        watch.start_soon(stopper)
        try:
            await anyio.sleep_forever()
        finally:
            closed.set()  # the clean-up: closes what the producer waits on

    with anyio.fail_after(5):
        await run_watched(work)
    assert events == ["producer cancelled"]
