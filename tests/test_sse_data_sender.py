"""``data_sender_callable`` is always called, and its clean-up has run when the call returns.

The shape of the MCP Python SDK's streamable-HTTP transport: the response streams what a
memory stream's reader yields, and the data sender owns the writer (``async with writer:``)
and cleans up per-request state in its ``finally``. sse-starlette starts the sender in its
task group, so it is called however soon the response ends, and awaited. Every test runs
`HeaderFirstEventSourceResponse` and sse-starlette's `EventSourceResponse` alike: whatever
sse-starlette does, ours does the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from sse_starlette.sse import EventSourceResponse
from starlette.types import Message

from header_first_stream import HeaderFirstEventSourceResponse

from ._asgi import Recorder, call, http_scope, receive_nothing, sent, words
from ._expect import WAIT

pytestmark = pytest.mark.anyio

CLASSES = pytest.mark.parametrize(
    "cls", [EventSourceResponse, HeaderFirstEventSourceResponse], ids=["sse-starlette", "ours"]
)


class Channel:
    """A memory stream whose writer the data sender owns, as MCP's transport does."""

    def __init__(self) -> None:
        self.writer: MemoryObjectSendStream[str]
        self.reader: MemoryObjectReceiveStream[str]
        self.writer, self.reader = anyio.create_memory_object_stream[str](10)
        self.log: list[str] = []

    async def endless_sender(self) -> None:
        """Sends one event, then waits (for more, as a transport does) until cancelled."""
        self.log.append("called")
        async with self.writer:
            try:
                await self.writer.send("hello")
                await anyio.sleep_forever()
            finally:
                self.log.append("cleaned up")

    async def closing_sender(self) -> None:
        """Has nothing to send: closes the writer at once, which ends the stream."""
        self.log.append("called")
        async with self.writer:
            self.log.append("cleaned up")

    @property
    def writer_closed(self) -> bool:
        return self.reader.statistics().open_send_streams == 0

    def close(self) -> None:
        # sse-starlette does not close its body iterator; neither stream may be left
        # open for the garbage collector (a ResourceWarning).
        self.writer.close()
        self.reader.close()


@pytest.fixture
def channel() -> Iterator[Channel]:
    made = Channel()
    yield made
    made.close()


@CLASSES
@pytest.mark.parametrize("passes", range(4))
async def test_a_response_cancelled_soon_after_it_started_called_the_sender_and_awaited_it(
    cls: type[EventSourceResponse], passes: int, channel: Channel
) -> None:
    response = cls(channel.reader, ping=0, data_sender_callable=channel.endless_sender)
    at_return: list[tuple[list[str], bool]] = []

    async def respond() -> None:
        try:
            await response(http_scope(), receive_nothing(), Recorder())
        finally:
            at_return.append((list(channel.log), channel.writer_closed))

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as group:
            group.start_soon(respond)
            for _ in range(passes):
                await anyio.lowlevel.checkpoint()
            group.cancel_scope.cancel()
    assert at_return == [(["called", "cleaned up"], True)]


@CLASSES
async def test_a_stream_ended_by_its_sender_at_once_is_complete_and_the_sender_ran(
    cls: type[EventSourceResponse], channel: Channel
) -> None:
    response = cls(channel.reader, ping=0, data_sender_callable=channel.closing_sender)
    with anyio.fail_after(WAIT):
        recorder = await call(response)
    assert (channel.log, channel.writer_closed) == (["called", "cleaned up"], True)
    assert recorder.types == ["http.response.start", "http.response.body"]
    assert sent(recorder)[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


@CLASSES
async def test_an_empty_body_ends_the_response_at_once_and_the_waiting_sender_is_awaited(
    cls: type[EventSourceResponse], channel: Channel
) -> None:
    response = cls(words(), ping=0, data_sender_callable=channel.endless_sender)
    with anyio.fail_after(WAIT):
        await call(response)
    assert (channel.log, channel.writer_closed) == (["called", "cleaned up"], True)


async def receive_disconnect() -> Message:
    return {"type": "http.disconnect"}


@CLASSES
async def test_a_client_gone_at_once_ends_the_response_and_the_sender_is_awaited(
    cls: type[EventSourceResponse], channel: Channel
) -> None:
    response = cls(channel.reader, ping=0, data_sender_callable=channel.endless_sender)
    with anyio.fail_after(WAIT):
        await call(response, receive=receive_disconnect)
    assert (channel.log, channel.writer_closed) == (["called", "cleaned up"], True)


async def head_response(cls: type[EventSourceResponse], channel: Channel) -> dict[str, Any]:
    response = cls(channel.reader, ping=0, data_sender_callable=channel.endless_sender)
    with anyio.fail_after(WAIT):
        recorder = await call(response, http_scope(method="HEAD"))
    # The order of distinct header names is not compared: ours puts content-type first, on
    # GET too (the same fields, each once).
    head, *rest = sent(recorder)
    return {
        "head": {**head, "headers": sorted(head["headers"])},
        "rest": rest,
        "log": list(channel.log),
        "writer closed": channel.writer_closed,
    }


async def test_a_head_request_treats_the_sender_as_sse_starlette_does() -> None:
    theirs, ours = Channel(), Channel()
    try:
        expected = await head_response(EventSourceResponse, theirs)
        got = await head_response(HeaderFirstEventSourceResponse, ours)
    finally:
        theirs.close()
        ours.close()
    assert got == expected
    # sse-starlette: HEAD starts no stream, nor the sender (its writer stays open).
    assert (expected["log"], expected["writer closed"]) == ([], False)
    assert expected["rest"] == [{"type": "http.response.body", "body": b"", "more_body": False}]
