"""Nothing that runs beside a response outlives its ASGI call, a cancellation from outside
included (a timeout middleware, a server's nursery, a gateway abandoning the request).

Each test starts a response, waits (on events, never on the clock) until the side work under
test is running, the listener (the default one, which awaits the server's ``receive``, or a
``listen_for_disconnect`` override), an SSE ``data_sender_callable``, a ping's ``send``, a
``client_close_handler_callable``, then cancels the scope around
``await response(scope, receive, send)``. When that call raises, the side work's ``finally``
must have run to its end, including an ``await`` in a shielded scope, as an anyio task group
guarantees; and an error raised there surfaces from the call, as a task group raises it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from header_first_stream import (
    HeaderFirstEventSourceResponse,
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
)

from ._asgi import Recorder, http_scope, receive_nothing
from ._expect import WAIT

pytestmark = pytest.mark.anyio


class CleanUpFailed(Exception):
    """Raised by a side callable's ``finally``, to be surfaced by the call."""


class Work:
    """The log of the side work of one request, and the events that say it is running."""

    def __init__(self, fail_in: str | None = None) -> None:
        self.log: list[str] = []
        self.running: dict[str, anyio.Event] = {}
        self.fail_in = fail_in  # the side callable whose clean-up raises

    def entered(self, name: str) -> None:
        self.log.append(f"{name} entered")
        self.running.setdefault(name, anyio.Event()).set()

    async def wait_for(self, *names: str) -> None:
        for name in names:
            await self.running.setdefault(name, anyio.Event()).wait()

    async def clean_up(self, name: str) -> None:
        """A ``finally`` as users write it: it awaits (shielded) before it is done."""
        self.log.append(f"{name} finally")
        with anyio.CancelScope(shield=True):
            await anyio.lowlevel.checkpoint()
        self.log.append(f"{name} done")
        if self.fail_in == name:
            raise CleanUpFailed(name)

    async def side(self, name: str) -> None:
        """A side callable that runs until it is cancelled."""
        self.entered(name)
        try:
            await anyio.sleep_forever()
        finally:
            await self.clean_up(name)

    def receive(self) -> Receive:
        """The server's ``receive``: its client never leaves; records its own clean-up."""

        async def receive() -> Message:
            await self.side("receive")
            raise AssertionError("unreachable")  # pragma: no cover

        return receive

    def body(self) -> AsyncIterator[bytes]:
        """One chunk, then an endless wait (``streaming`` is set once the chunk was sent)."""

        async def generate() -> AsyncIterator[bytes]:
            yield b"data: first\r\n\r\n"
            self.entered("streaming")
            await anyio.sleep_forever()
            yield b""  # pragma: no cover

        return generate()

    async def resolver(self) -> dict[str, str]:
        self.entered("resolving")
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover


def done(*names: str) -> list[str]:
    """The log entries of side callables that ran their clean-up to its end."""
    return [entry for name in names for entry in (f"{name} finally", f"{name} done")]


def cleaned(work: Work, at_return: list[str], name: str) -> bool:
    """Whether ``name`` had run its ``finally`` to its end when the call returned."""
    return f"{name} entered" in work.log and all(entry in at_return for entry in done(name))


async def cancelled_from_outside(
    app: ASGIApp,
    work: Work,
    when: tuple[str, ...],
    scope: Scope | None = None,
    receive: Receive | None = None,
    send: Send | None = None,
) -> tuple[list[str], BaseException]:
    """Call ``app``, cancel the scope around the call once every event in ``when`` is set.

    Returns the log as it was at the moment the call raised (nothing else ran between), and
    what it raised.
    """
    at_return: list[str] = []
    raised: list[BaseException] = []
    outer = anyio.CancelScope()

    async def cancel_when_ready() -> None:
        await work.wait_for(*when)
        outer.cancel()

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as group:
            group.start_soon(cancel_when_ready)
            with outer:
                try:
                    await app(
                        scope or http_scope(), receive or receive_nothing(), send or Recorder()
                    )
                except BaseException as exc:
                    at_return.extend(work.log)
                    raised.append(exc)
                    if isinstance(exc, anyio.get_cancelled_exc_class()):
                        raise
    assert raised, "the call returned instead of raising"
    return at_return, raised[0]


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions in ``exc``, groups flattened."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def streaming_with(work: Work, listener: str) -> type[HeaderFirstStreamingResponse]:
    """The streaming class, with a ``listen_for_disconnect`` override if ``listener`` says so."""
    if listener == "default":
        return HeaderFirstStreamingResponse
    return _with_listener(HeaderFirstStreamingResponse, work)


def _with_listener(base: type[Any], work: Work) -> type[Any]:
    class Overridden(base):  # type: ignore[misc]
        async def listen_for_disconnect(self, receive: Receive) -> None:
            await work.side("listener")

    return Overridden


def sse_with(work: Work, listener: str) -> type[HeaderFirstEventSourceResponse]:
    if listener == "default":
        return HeaderFirstEventSourceResponse
    return _with_listener(HeaderFirstEventSourceResponse, work)


def wrapped(app: ASGIApp, middleware: bool) -> ASGIApp:
    return HeaderFirstMiddleware(app) if middleware else app


LISTENERS = pytest.mark.parametrize("listener", ["default", "override"])
PHASES = pytest.mark.parametrize("phase", ["mid-stream", "resolving"])
MIDDLEWARE = pytest.mark.parametrize("middleware", [False, True], ids=["bare", "middleware"])
# What runs beside a HeaderFirstStreamingResponse on each spec version: the listener for the
# whole response below 2.4; at 2.4 only while a resolver waits, or to the end with
# end_on_shutdown.
STREAMING_CASES = pytest.mark.parametrize(
    ("spec", "phase", "options"),
    [
        ("2.3", "mid-stream", {}),
        ("2.3", "resolving", {}),
        ("2.4", "resolving", {}),
        ("2.4", "mid-stream", {"end_on_shutdown": True}),
        ("2.4", "resolving", {"end_on_shutdown": True}),
    ],
)


def running_side(listener: str) -> str:
    """Which side callable shows that the listener runs: the override, or the server's
    ``receive`` that the default listener awaits."""
    return "receive" if listener == "default" else "listener"


# --- the listener -----------------------------------------------------------------------


@STREAMING_CASES
@LISTENERS
@MIDDLEWARE
async def test_the_streaming_listener_has_ended_when_an_outer_cancellation_returns(
    spec: str, phase: str, options: dict[str, Any], listener: str, middleware: bool
) -> None:
    work = Work()
    cls = streaming_with(work, listener)
    resolver = work.resolver if phase == "resolving" else None
    response = cls(work.body(), header_resolver=resolver, **options)
    side = running_side(listener)
    at_return, raised = await cancelled_from_outside(
        wrapped(response, middleware),
        work,
        (side, "resolving" if phase == "resolving" else "streaming"),
        scope=http_scope(spec_version=spec),
        receive=work.receive(),
    )
    assert isinstance(raised, anyio.get_cancelled_exc_class())
    assert cleaned(work, at_return, side), at_return


@PHASES
@LISTENERS
@MIDDLEWARE
async def test_the_sse_listener_has_ended_when_an_outer_cancellation_returns(
    phase: str, listener: str, middleware: bool
) -> None:
    work = Work()
    cls = sse_with(work, listener)
    resolver = work.resolver if phase == "resolving" else None
    response = cls(work.body(), ping=0, header_resolver=resolver)
    side = running_side(listener)
    at_return, raised = await cancelled_from_outside(
        wrapped(response, middleware),
        work,
        (side, "resolving" if phase == "resolving" else "streaming"),
        receive=work.receive(),
    )
    assert isinstance(raised, anyio.get_cancelled_exc_class())
    assert cleaned(work, at_return, side), at_return


# --- the SSE class's other side work ----------------------------------------------------


@PHASES
@MIDDLEWARE
async def test_the_data_sender_has_ended_when_an_outer_cancellation_returns(
    phase: str, middleware: bool
) -> None:
    work = Work()
    resolver = work.resolver if phase == "resolving" else None
    response = HeaderFirstEventSourceResponse(
        work.body(),
        ping=0,
        data_sender_callable=lambda: work.side("sender"),
        header_resolver=resolver,
    )
    at_return, raised = await cancelled_from_outside(
        wrapped(response, middleware),
        work,
        ("sender", "resolving" if phase == "resolving" else "streaming"),
    )
    assert isinstance(raised, anyio.get_cancelled_exc_class())
    assert cleaned(work, at_return, "sender"), at_return


class PingBlocks(Recorder):
    """A client that stops reading at the first ping: that ``send`` waits until cancelled."""

    def __init__(self, work: Work) -> None:
        super().__init__()
        self.work = work

    async def __call__(self, message: Message) -> None:
        if message.get("body", b"").startswith(b": ping"):
            await self.work.side("ping send")
        await super().__call__(message)


@MIDDLEWARE
async def test_a_ping_in_flight_has_ended_when_an_outer_cancellation_returns(
    middleware: bool,
) -> None:
    work = Work()
    # The interval only decides when the first ping goes out; the test waits for it.
    response = HeaderFirstEventSourceResponse(work.body(), ping=0.001)
    at_return, raised = await cancelled_from_outside(
        wrapped(response, middleware), work, ("streaming", "ping send"), send=PingBlocks(work)
    )
    assert isinstance(raised, anyio.get_cancelled_exc_class())
    assert cleaned(work, at_return, "ping send"), at_return


async def receive_disconnect() -> Message:
    return {"type": "http.disconnect"}


@MIDDLEWARE
async def test_the_close_handler_has_ended_when_an_outer_cancellation_returns(
    middleware: bool,
) -> None:
    work = Work()
    seen: list[Message] = []

    async def close_handler(message: Message) -> None:
        seen.append(message)
        await work.side("close handler")

    response = HeaderFirstEventSourceResponse(
        work.body(), ping=0, client_close_handler_callable=close_handler
    )
    at_return, raised = await cancelled_from_outside(
        wrapped(response, middleware), work, ("close handler",), receive=receive_disconnect
    )
    assert isinstance(raised, anyio.get_cancelled_exc_class())
    assert seen == [{"type": "http.disconnect"}]
    assert cleaned(work, at_return, "close handler"), at_return


# --- an error in side work's clean-up surfaces -------------------------------------------


def failing_in_clean_up(side: str, work: Work) -> tuple[ASGIApp, tuple[str, ...], Receive]:
    """A response whose side callable ``side`` raises in its ``finally``; what shows it runs;
    the ``receive`` it is called with."""
    if side == "listener":
        response = sse_with(work, "override")(work.body(), ping=0)
        return response, ("listener", "streaming"), receive_nothing()
    if side == "sender":
        response = HeaderFirstEventSourceResponse(
            work.body(), ping=0, data_sender_callable=lambda: work.side("sender")
        )
        return response, ("sender", "streaming"), receive_nothing()

    async def close_handler(message: Message) -> None:
        await work.side("close handler")

    response = HeaderFirstEventSourceResponse(
        work.body(), ping=0, client_close_handler_callable=close_handler
    )
    return response, ("close handler", "streaming"), receive_disconnect


@pytest.mark.parametrize("side", ["listener", "sender", "close handler"])
@MIDDLEWARE
async def test_an_error_in_side_work_clean_up_surfaces_from_the_call(
    side: str, middleware: bool
) -> None:
    work = Work(fail_in=side)
    response, when, receive = failing_in_clean_up(side, work)
    at_return, raised = await cancelled_from_outside(
        wrapped(response, middleware), work, when, receive=receive
    )
    assert cleaned(work, at_return, side), at_return
    # As an anyio task group raises it: the error itself, or in an ExceptionGroup.
    assert [type(exc) for exc in leaves(raised)] == [CleanUpFailed], repr(raised)
    assert str(leaves(raised)[0]) == side


async def test_an_error_in_the_streaming_listeners_clean_up_surfaces_from_the_call() -> None:
    work = Work(fail_in="listener")
    response = streaming_with(work, "override")(work.body())
    at_return, raised = await cancelled_from_outside(
        response, work, ("listener", "streaming"), scope=http_scope(spec_version="2.3")
    )
    assert cleaned(work, at_return, "listener"), at_return
    assert [type(exc) for exc in leaves(raised)] == [CleanUpFailed], repr(raised)
