"""A shutdown notice reaches every ``end_on_shutdown`` stream still open, however the streams
before it came and went.

Streams end by themselves or because their client leaves, a given number of event-loop
passes (``anyio.sleep(0)``) apart from each other and from the notice, so that each
interleaving of "a stream ends" and "the watching is handed on" is driven on purpose.
Whatever the order, `begin_shutdown()` (and a uvicorn-like exit flag, which is polled) must
end every stream still watching, within a bound.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import TaskGroup
from starlette.types import Message

from header_first_stream import HeaderFirstStreamingResponse, begin_shutdown

from ._asgi import END, FakeUvicornServer, Recorder, http_scope

pytestmark = pytest.mark.anyio

PASSES = pytest.mark.parametrize("passes", range(6))
"""Event-loop passes between two steps of a test."""

PROMPTLY = 1.0
"""Seconds a stream may take to end once `begin_shutdown()` was called."""

POLL_INTERVAL = 0.5
"""The package's documented interval between two looks at the server's exit flag."""


class Stream:
    """One ``end_on_shutdown`` stream: open until its body ends, its client leaves, or the
    server shuts down."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.streaming = anyio.Event()  # its first chunk was sent
        self.body_ends = anyio.Event()
        self.client_leaves = anyio.Event()
        self.returned = anyio.Event()
        self.closed = False  # its generator's finally ran

    async def body(self) -> AsyncIterator[bytes]:
        try:
            yield b"first"
            self.streaming.set()
            await self.body_ends.wait()
        finally:
            self.closed = True

    async def receive(self) -> Message:
        await self.client_leaves.wait()
        return {"type": "http.disconnect"}

    async def run(self) -> None:
        response = HeaderFirstStreamingResponse(self.body(), end_on_shutdown=True)
        await response(http_scope(), self.receive, self.recorder)
        self.returned.set()

    def end(self, how: str) -> None:
        (self.body_ends if how == "body ends" else self.client_leaves).set()

    @property
    def cut_off(self) -> bool:
        """Ended by the shutdown: returned, closed, and without its final chunk."""
        messages = [message for _, message in self.recorder.messages]
        return self.returned.is_set() and self.closed and messages[-1] != END


async def opened(group: TaskGroup, count: int) -> list[Stream]:
    """Start ``count`` streams in ``group``; return once each sent its first chunk."""
    streams = [Stream() for _ in range(count)]
    for stream in streams:
        group.start_soon(stream.run)
    for stream in streams:
        await stream.streaming.wait()
    return streams


async def loop_passes(count: int) -> None:
    for _ in range(count):
        await anyio.lowlevel.checkpoint()


async def the_polling_stream_and_the_next_ended(group: TaskGroup, passes: int, how: str) -> Stream:
    """Open three streams that live past a poll interval (one of them polls the server's
    exit flag); end the first, and the second ``passes`` loop passes later (``how``), while
    the watching is handed on; return the third, still open."""
    first, second, third = await opened(group, 3)
    await anyio.sleep(POLL_INTERVAL * 1.3)
    first.end("body ends")
    await loop_passes(passes)
    second.end(how)
    await first.returned.wait()
    await second.returned.wait()
    return third


async def all_returned(streams: list[Stream], within: float) -> None:
    with anyio.fail_after(within):
        for stream in streams:
            await stream.returned.wait()


ENDINGS = pytest.mark.parametrize("how", ["body ends", "client leaves"])


@PASSES
@ENDINGS
@pytest.mark.parametrize("order", ["stream ends first", "notice first"])
async def test_a_stream_ending_beside_the_notice_does_not_lose_it_for_the_others(
    passes: int, how: str, order: str
) -> None:
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            first, *others = await opened(group, 3)
            if order == "stream ends first":
                first.end(how)
                await loop_passes(passes)
                begin_shutdown()
            else:
                begin_shutdown()
                await loop_passes(passes)
                first.end(how)
            await all_returned(others, PROMPTLY)
            await first.returned.wait()
    assert all(stream.cut_off for stream in others)


@PASSES
@ENDINGS
async def test_the_notice_reaches_every_stream_after_the_polling_one_and_the_next_ended(
    passes: int, how: str
) -> None:
    # Three streams live past a poll interval, so that one of them polls the server's exit
    # flag. The first ends, and the second `passes` loop passes later (by itself, or its
    # client leaves), while the watching is handed from one to the next; a new stream
    # opens. Both still open get the notice.
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            third = await the_polling_stream_and_the_next_ended(group, passes, how)
            (fourth,) = await opened(group, 1)
            begin_shutdown()
            await all_returned([third, fourth], PROMPTLY)
    assert third.cut_off and fourth.cut_off


@pytest.mark.parametrize("passes", range(4))  # the interleavings that lost it, and around
async def test_the_servers_exit_flag_is_still_polled_after_the_polling_streams_ended(
    passes: int, uvicorn_like: FakeUvicornServer
) -> None:
    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            third = await the_polling_stream_and_the_next_ended(group, passes, "body ends")
            uvicorn_like.should_exit = True
            await all_returned([third], POLL_INTERVAL + PROMPTLY)
    assert third.cut_off
