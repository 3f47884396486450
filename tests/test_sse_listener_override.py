"""`HeaderFirstEventSourceResponse` waits for the client through ``listen_for_disconnect``.

Starlette's extension point is "the listener's wait, wherever this class listens": a
subclass that overrides it decides when the client counts as gone, for the SSE class as for
the base class. Each override here waits on something of its own (an event, or the server's
``receive`` it wraps); the stream ends when, and only when, the override returns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest
from starlette.types import Message, Receive

from header_first_stream import HeaderFirstEventSourceResponse

from ._asgi import Recorder, http_scope, receive_nothing, sent
from ._expect import SPECS, SSE_HEADERS, WAIT

pytestmark = pytest.mark.anyio


class GoneOnSignal(HeaderFirstEventSourceResponse):
    """Counts the client gone when the app says so (`gone`), whatever ``receive`` says."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.gone = anyio.Event()
        self.listening = anyio.Event()  # the override was entered

    async def listen_for_disconnect(self, receive: Receive) -> None:
        self.listening.set()
        await self.gone.wait()


class Stream:
    """An endless event stream that records its first event and its closing."""

    def __init__(self) -> None:
        self.streaming = anyio.Event()
        self.closed = False

    async def events(self) -> AsyncIterator[str]:
        try:
            yield "first"
            self.streaming.set()
            await anyio.sleep_forever()
            yield "never"  # pragma: no cover
        finally:
            self.closed = True


@SPECS
@pytest.mark.parametrize("ping", [0, 0.001], ids=["no pings", "pings"])
async def test_the_stream_ends_when_the_override_returns(spec: str, ping: float) -> None:
    stream = Stream()
    response = GoneOnSignal(stream.events(), ping=ping)
    recorder = Recorder()
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as group:
            group.start_soon(response, http_scope(spec_version=spec), receive_nothing(), recorder)
            await stream.streaming.wait()
            await response.listening.wait()  # the override is what waits
            response.gone.set()
    assert stream.closed
    assert sent(recorder)[0] == {
        "type": "http.response.start",
        "status": 200,
        "headers": SSE_HEADERS,
    }
    assert sent(recorder)[1] == {
        "type": "http.response.body",
        "body": b"data: first\r\n\r\n",
        "more_body": True,
    }


async def test_while_the_override_waits_the_stream_stays_open_though_the_client_left() -> None:
    # The server reports a disconnect at once, but the override does not call receive():
    # the response does not read it behind the override's back.
    stream = Stream()
    response = GoneOnSignal(stream.events(), ping=0)
    received: list[Message] = []

    async def receive() -> Message:
        received.append({"type": "http.disconnect"})
        return {"type": "http.disconnect"}

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as group:
            group.start_soon(response, http_scope(), receive, Recorder())
            await stream.streaming.wait()
            await response.listening.wait()
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
            assert not stream.closed and received == []
            response.gone.set()
    assert stream.closed


async def test_a_wrapping_override_sees_the_disconnect_and_the_close_handler_gets_it() -> None:
    seen: list[Message] = []
    handled: list[Message] = []

    class Recording(HeaderFirstEventSourceResponse):
        async def listen_for_disconnect(self, receive: Receive) -> None:
            while True:
                message = await receive()
                seen.append(message)
                if message["type"] == "http.disconnect":
                    return

    async def close_handler(message: Message) -> None:
        handled.append(message)

    stream = Stream()
    leave = anyio.Event()

    async def receive() -> Message:
        await leave.wait()
        return {"type": "http.disconnect", "reason": "gone"}

    response = Recording(stream.events(), ping=0, client_close_handler_callable=close_handler)
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as group:
            group.start_soon(response, http_scope(), receive, Recorder())
            await stream.streaming.wait()
            leave.set()
    assert seen == [{"type": "http.disconnect", "reason": "gone"}]
    assert handled == seen
    assert stream.closed


async def test_an_override_returning_while_the_resolver_waits_sends_nothing() -> None:
    resolving = anyio.Event()

    async def resolver() -> dict[str, str]:
        resolving.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    stream = Stream()
    response = GoneOnSignal(stream.events(), ping=0, header_resolver=resolver)
    recorder = Recorder()
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as group:
            group.start_soon(response, http_scope(), receive_nothing(), recorder)
            await resolving.wait()
            await response.listening.wait()
            response.gone.set()
    assert sent(recorder) == []
