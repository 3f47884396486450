"""`HeaderFirstEventSourceResponse`'s pings, send timeout and failing sends.

The sends are recorded with their start and end time, so that "one send at a time" is
checked directly.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import pytest
from sse_starlette import ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Message

from header_first_stream import HeaderFirstEventSourceResponse

from ._asgi import Recorder, events, http_scope, receive_disconnect_after, receive_nothing
from ._expect import SPECS, WAIT

PING = b": ping\r\n\r\n"


def ping_event() -> ServerSentEvent:
    return ServerSentEvent(comment="ping")


# --- pings -------------------------------------------------------------------------------


@dataclass
class TimedSend:
    """A `send` that takes ``delay(message)`` seconds and records each call's start and end.

    It fails the test if a call starts while another is in flight.
    """

    delay: Callable[[Message], float] = lambda message: 0.0
    calls: list[tuple[float, float, Message]] = field(default_factory=list)
    in_flight: int = 0
    origin: float = field(default_factory=time.monotonic)

    async def __call__(self, message: Message) -> None:
        assert self.in_flight == 0, f"send called while another send is in flight: {message}"
        self.in_flight += 1
        started = time.monotonic() - self.origin
        try:
            seconds = self.delay(message)
            if seconds:
                await anyio.sleep(seconds)
        finally:
            self.in_flight -= 1
        self.calls.append((started, time.monotonic() - self.origin, message))

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for _, _, m in self.calls if m["type"] == "http.response.body"]


def is_ping(message: Message) -> bool:
    return message.get("body") == PING


async def send_through(response: Response, send: TimedSend, spec: str = "2.3") -> None:
    async def as_send(message: Message) -> None:
        await send(message)

    with anyio.fail_after(WAIT):
        await response(http_scope(spec_version=spec), receive_nothing(), as_send)


@pytest.mark.anyio
@SPECS
async def test_pings_go_out_after_the_head_even_when_the_resolver_is_slow(spec: str) -> None:
    async def resolver() -> Mapping[str, str]:
        await anyio.sleep(0.2)  # four ping intervals
        return {"x-late": "1"}

    async def body() -> AsyncIterator[str]:
        yield "first"
        await anyio.sleep(0.2)
        yield "second"

    send = TimedSend()
    response = HeaderFirstEventSourceResponse(
        body(), ping=0.05, ping_message_factory=ping_event, header_resolver=resolver
    )
    await send_through(response, send, spec)
    messages = [m for _, _, m in send.calls]
    assert messages[0]["type"] == "http.response.start"
    assert messages[0]["headers"][-1] == (b"x-late", b"1")
    assert messages[1]["body"] == b"data: first\r\n\r\n"
    between = [m["body"] for m in messages[2:-2]]
    assert between and set(between) == {PING}
    assert messages[-2]["body"] == b"data: second\r\n\r\n"
    assert messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


@pytest.mark.anyio
async def test_the_default_ping_is_sse_starlettes_timestamped_comment() -> None:
    async def body() -> AsyncIterator[str]:
        await anyio.sleep(0.3)
        yield "x"

    send = TimedSend()
    await send_through(HeaderFirstEventSourceResponse(body(), ping=0.05, sep="\n"), send)
    pings = send.bodies[:-2]
    assert pings
    for ping in pings:
        assert re.fullmatch(rb": ping - \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\+00:00\n\n", ping)


@pytest.mark.anyio
async def test_ping_zero_sends_no_pings() -> None:
    async def body() -> AsyncIterator[str]:
        await anyio.sleep(0.1)
        yield "x"

    send = TimedSend()
    await send_through(HeaderFirstEventSourceResponse(body(), ping=0), send)
    assert send.bodies == [b"data: x\r\n\r\n", b""]


@pytest.mark.anyio
@pytest.mark.parametrize("ping", [0, 0.05])
async def test_a_client_leaving_mid_stream_ends_the_response_and_closes_the_events(
    ping: float,
) -> None:
    closed = anyio.Event()

    async def body() -> AsyncIterator[str]:
        try:
            yield "x"
            await anyio.sleep_forever()
            yield "never"  # pragma: no cover
        finally:
            closed.set()

    recorder = Recorder()
    response = HeaderFirstEventSourceResponse(body(), ping=ping)
    with anyio.fail_after(WAIT):
        await response(http_scope(spec_version="2.3"), receive_disconnect_after(0.2), recorder)
    assert closed.is_set()
    bodies = [m["body"] for _, m in recorder.messages if m["type"] == "http.response.body"]
    assert bodies[0] == b"data: x\r\n\r\n"
    assert all(b.startswith(b": ping - ") for b in bodies[1:])
    assert len(bodies) > 1 if ping else len(bodies) == 1


@pytest.mark.anyio
async def test_an_event_waits_for_a_ping_being_sent() -> None:
    async def body() -> AsyncIterator[str]:
        await anyio.sleep(0.15)  # the first ping is being sent from 0.05 to 0.35
        yield "event"

    send = TimedSend(delay=lambda m: 0.3 if is_ping(m) else 0.0)
    response = HeaderFirstEventSourceResponse(body(), ping=0.05, ping_message_factory=ping_event)
    await send_through(response, send)
    first_ping = next(call for call in send.calls if is_ping(call[2]))
    event = next(call for call in send.calls if call[2].get("body") == b"data: event\r\n\r\n")
    assert first_ping[1] <= event[0]
    assert send.calls[-1][2] == {"type": "http.response.body", "body": b"", "more_body": False}


@pytest.mark.anyio
async def test_no_ping_starts_while_an_event_is_being_sent() -> None:
    async def body() -> AsyncIterator[str]:
        yield "slow to send"
        await anyio.sleep(0.2)

    send = TimedSend(delay=lambda m: 0.0 if is_ping(m) else 0.3)
    response = HeaderFirstEventSourceResponse(body(), ping=0.05, ping_message_factory=ping_event)
    await send_through(response, send)
    event = next(
        call for call in send.calls if call[2].get("body") == b"data: slow to send\r\n\r\n"
    )
    pings = [call for call in send.calls if is_ping(call[2])]
    assert pings  # pings resumed once the event was out
    assert all(ping[0] >= event[1] for ping in pings)


@pytest.mark.anyio
async def test_a_ping_tick_during_an_event_send_is_skipped_not_queued() -> None:
    # Ticks at 0.1 and 0.2 s find the event being sent (0 to 0.25 s) and are dropped; the
    # stream ends right after the event, before the next tick. A queued ping would show
    # between the event and the end.
    send = TimedSend(delay=lambda m: 0.25 if m.get("body") else 0.0)
    response = HeaderFirstEventSourceResponse(
        events("slow"), ping=0.1, ping_message_factory=ping_event
    )
    await send_through(response, send)
    assert send.bodies == [b"data: slow\r\n\r\n", b""]


@pytest.mark.anyio
async def test_the_end_of_the_stream_waits_for_a_ping_being_sent() -> None:
    async def body() -> AsyncIterator[str]:
        yield "only"
        await anyio.sleep(0.15)  # ends while the first ping is being sent (0.05 to 0.35)

    send = TimedSend(delay=lambda m: 0.3 if is_ping(m) else 0.0)
    response = HeaderFirstEventSourceResponse(body(), ping=0.05, ping_message_factory=ping_event)
    await send_through(response, send)
    assert send.bodies == [b"data: only\r\n\r\n", PING, b""]
    assert send.calls[-2][1] <= send.calls[-1][0]


@pytest.mark.anyio
@SPECS
async def test_pings_and_events_never_overlap_under_load(spec: str) -> None:
    # A short ping interval, a body with short pauses and a send that sleeps a little on
    # every call: many chances for a ping and an event to meet. TimedSend fails on overlap.
    items = [f"event {i}" for i in range(60)]

    async def body() -> AsyncIterator[str]:
        for i, item in enumerate(items):
            await anyio.sleep(0.001 * (i % 4))
            yield item

    send = TimedSend(delay=lambda m: 0.002 if is_ping(m) else 0.001 * (len(m.get("body", b"")) % 3))
    response = HeaderFirstEventSourceResponse(body(), ping=0.001, ping_message_factory=ping_event)
    await send_through(response, send, spec)
    sent_events = [body for body in send.bodies if body not in (PING, b"")]
    assert sent_events == [f"data: {item}\r\n\r\n".encode() for item in items]
    assert PING in send.bodies
    assert send.bodies[-1] == b""


# --- send timeout and failing sends -------------------------------------------------------


@pytest.mark.anyio
async def test_a_send_timeout_below_spec_2_4_raises_send_timeout_error_and_closes_the_stream() -> (
    None
):
    closed: list[bool] = []

    async def body() -> AsyncIterator[str]:
        try:
            yield "stuck"
            yield "never sent"  # pragma: no cover
        finally:
            closed.append(True)

    send = TimedSend(delay=lambda m: 10.0 if m.get("body") else 0.0)
    response = HeaderFirstEventSourceResponse(body(), send_timeout=0.05, ping=0)
    with pytest.raises(SendTimeoutError, match=r"took over 0\.05s \(send_timeout\)"):
        await send_through(response, send)
    assert closed == [True]


@pytest.mark.anyio
async def test_a_send_timeout_from_spec_2_4_is_a_client_disconnect() -> None:
    async def body() -> AsyncIterator[str]:
        await anyio.sleep(1)  # a quiet upstream: the ping is the send that times out
        yield "never sent"  # pragma: no cover

    send = TimedSend(delay=lambda m: 10.0 if is_ping(m) else 0.0)
    response = HeaderFirstEventSourceResponse(
        body(), send_timeout=0.05, ping=0.01, ping_message_factory=ping_event
    )
    with pytest.raises(ClientDisconnect) as info:
        await send_through(response, send, "2.4")
    assert isinstance(info.value.__context__, SendTimeoutError)


@pytest.mark.anyio
async def test_the_send_timeout_does_not_bound_the_head() -> None:
    send = TimedSend(delay=lambda m: 0.2 if m["type"] == "http.response.start" else 0.0)
    response = HeaderFirstEventSourceResponse(events("a"), send_timeout=0.05, ping=0)
    await send_through(response, send)
    assert send.bodies == [b"data: a\r\n\r\n", b""]


@pytest.mark.anyio
async def test_a_send_timeout_that_is_not_reached_changes_nothing() -> None:
    send = TimedSend()
    response = HeaderFirstEventSourceResponse(events("a", "b"), send_timeout=1, ping=0)
    await send_through(response, send)
    assert send.bodies == [b"data: a\r\n\r\n", b"data: b\r\n\r\n", b""]


@pytest.mark.anyio
async def test_a_ping_to_a_client_that_left_ends_the_response_at_spec_2_4() -> None:
    closed: list[bool] = []

    async def body() -> AsyncIterator[str]:
        try:
            yield "one"
            await anyio.sleep(WAIT)
            yield "never"  # pragma: no cover
        finally:
            closed.append(True)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        if is_ping(message):
            raise OSError("connection closed")
        sent.append(message)

    response = HeaderFirstEventSourceResponse(body(), ping=0.02, ping_message_factory=ping_event)
    with anyio.fail_after(WAIT), pytest.raises(ClientDisconnect):
        await response(http_scope(spec_version="2.4"), receive_nothing(), send)
    assert [m.get("body") for m in sent] == [None, b"data: one\r\n\r\n"]
    assert closed == [True]


@pytest.mark.anyio
async def test_pings_run_beside_the_whole_stream_at_spec_2_4_without_end_on_shutdown() -> None:
    async def body() -> AsyncIterator[str]:
        yield "one"
        await anyio.sleep(WAIT)  # a quiet upstream: only the pings can notice the client left
        yield "never"  # pragma: no cover

    sent: list[Message] = []

    async def send(message: Message) -> None:
        if is_ping(message):
            raise OSError("connection closed")
        sent.append(message)

    response = HeaderFirstEventSourceResponse(
        body(), ping=0.02, ping_message_factory=ping_event, end_on_shutdown=False
    )
    with anyio.fail_after(WAIT), pytest.raises(ClientDisconnect):
        await response(http_scope(spec_version="2.4"), receive_nothing(), send)
    assert [m.get("body") for m in sent] == [None, b"data: one\r\n\r\n"]


@pytest.mark.anyio
async def test_nothing_listens_at_spec_2_4_without_pings_tasks_or_end_on_shutdown() -> None:
    calls: list[str] = []

    async def receive() -> Message:
        calls.append("receive")
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    response = HeaderFirstEventSourceResponse(events("a", "b"), ping=0, end_on_shutdown=False)
    recorder = Recorder()
    await response(http_scope(spec_version="2.4"), receive, recorder)
    assert [m.get("body") for _, m in recorder.messages] == [
        None,
        b"data: a\r\n\r\n",
        b"data: b\r\n\r\n",
        b"",
    ]
    await anyio.sleep(0.01)  # a listener started anyway would have run
    assert calls == []
