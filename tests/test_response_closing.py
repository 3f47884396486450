"""`HeaderFirstStreamingResponse` closes its body iterator on every exit, then runs the
background task; close failures and slow closes are logged, not raised.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import AsyncIterator, Generator
from typing import Any

import anyio
import pytest
from starlette.background import BackgroundTask
from starlette.types import Message

from header_first_stream import HeaderFirstStreamingResponse

from ._asgi import (
    END,
    BlockingClient,
    Recorder,
    TrackedBody,
    call,
    chunk,
    http_scope,
    resolver_of,
    sent,
    start,
    tracked,
)
from ._expect import SPECS, logged, logged_exception

pytestmark = pytest.mark.anyio


class SyncStream:
    """A sync iterator object, not a generator (as an SDK's stream may be): it counts its
    ``close()`` calls, and raises ``close_error`` from it when given one."""

    def __init__(self, *items: bytes, close_error: Exception | None = None) -> None:
        self.items = list(reversed(items))
        self.closes = 0
        self.close_error = close_error

    def __iter__(self) -> SyncStream:
        return self

    def __next__(self) -> bytes:
        if not self.items:
            raise StopIteration
        return self.items.pop()

    def close(self) -> None:
        self.closes += 1
        if self.close_error is not None:
            raise self.close_error


# --- the body iterator is closed on every exit ----------------------------------------


@SPECS
async def test_finished_body_is_closed_before_the_background_task(spec: str) -> None:
    events: list[str] = []
    response = HeaderFirstStreamingResponse(
        tracked(events, b"a"), background=BackgroundTask(events.append, "background")
    )
    recorder = await call(response, http_scope(spec_version=spec))
    assert sent(recorder) == [start(200, []), chunk(b"a"), END]
    assert events == ["body entered", "body closed", "background"]


@SPECS
async def test_exception_mid_stream_propagates_as_itself_and_closes_the_body(spec: str) -> None:
    events: list[str] = []

    async def failing() -> AsyncIterator[bytes]:
        try:
            yield b"a"
            raise ValueError("upstream broke")
        finally:
            events.append("body closed")

    response = HeaderFirstStreamingResponse(
        failing(), background=BackgroundTask(events.append, "background")
    )
    recorder = Recorder()
    with pytest.raises(ValueError, match=r"^upstream broke$"):
        await call(response, http_scope(spec_version=spec), send=recorder)
    assert sent(recorder) == [start(200, []), chunk(b"a")]
    assert events == ["body closed"]


async def test_sync_generator_is_closed_with_close_on_disconnect() -> None:
    events: list[str] = []

    def chunks() -> Generator[bytes]:
        try:
            yield b"a"
            yield b"b"
        finally:
            events.append("sync body closed")

    generator = chunks()
    client = BlockingClient(accept=2)
    with anyio.fail_after(5):
        await call(
            HeaderFirstStreamingResponse(generator),
            http_scope(spec_version="2.3"),
            client.disconnect_when_stalled,
            client,
        )
    assert sent(client) == [start(200, []), chunk(b"a")]
    assert events == ["sync body closed"]
    assert inspect.getgeneratorstate(generator) == inspect.GEN_CLOSED


@SPECS
async def test_finished_iterator_objects_are_still_closed(spec: str) -> None:
    # Not generators: objects such as an SDK's stream may hold a connection until closed.
    async_stream = TrackedBody(b"a", b"b")
    recorder = await call(HeaderFirstStreamingResponse(async_stream), http_scope(spec_version=spec))
    assert sent(recorder) == [start(200, []), chunk(b"a"), chunk(b"b"), END]
    assert (async_stream.pulls, async_stream.closes) == (3, 1)

    sync_stream = SyncStream(b"a", b"b")
    recorder = await call(HeaderFirstStreamingResponse(sync_stream), http_scope(spec_version=spec))
    assert sent(recorder) == [start(200, []), chunk(b"a"), chunk(b"b"), END]
    assert sync_stream.closes == 1


async def test_finished_sync_generator_is_closed() -> None:
    def chunks() -> Generator[bytes]:
        yield b"a"

    generator = chunks()
    recorder = await call(HeaderFirstStreamingResponse(generator))
    assert sent(recorder) == [start(200, []), chunk(b"a"), END]
    assert inspect.getgeneratorstate(generator) == inspect.GEN_CLOSED


async def test_sync_list_content_streams_and_needs_no_closing() -> None:
    recorder = await call(HeaderFirstStreamingResponse([b"a", "b", memoryview(b"c")]))
    assert sent(recorder) == [start(200, []), chunk(b"a"), chunk(b"b"), chunk(b"c"), END]


async def test_async_iterable_without_aclose_is_streamed() -> None:
    class Chunks:
        def __aiter__(self) -> AsyncIterator[bytes]:
            return self._chunks()

        async def _chunks(self) -> AsyncIterator[bytes]:
            yield b"a"

    class NoClose:
        def __init__(self) -> None:
            self.items = [b"a", b"b"]

        def __aiter__(self) -> NoClose:
            return self

        async def __anext__(self) -> bytes:
            if not self.items:
                raise StopAsyncIteration
            return self.items.pop(0)

    recorder = await call(HeaderFirstStreamingResponse(Chunks()))
    assert sent(recorder) == [start(200, []), chunk(b"a"), END]
    # HEAD: never started, and the iterable itself has no aclose()
    recorder = await call(HeaderFirstStreamingResponse(NoClose()), http_scope("HEAD"))
    assert sent(recorder) == [start(200, []), END]


async def test_aclose_that_raises_is_logged_and_the_response_completes(
    logs: pytest.LogCaptureFixture,
) -> None:
    error = RuntimeError("close failed")
    response = HeaderFirstStreamingResponse(TrackedBody(b"a", close_error=error))
    recorder = await call(response, http_scope("HEAD"))
    assert sent(recorder) == [start(200, []), END]
    assert logged(logs) == [("ERROR", "closing the body iterator failed")]
    assert logged_exception(logs, "closing the body iterator failed") is error


async def test_sync_close_that_raises_is_logged(logs: pytest.LogCaptureFixture) -> None:
    error = RuntimeError("sync close failed")

    stream = SyncStream(b"a", close_error=error)
    recorder = await call(HeaderFirstStreamingResponse(stream), http_scope("HEAD"))
    assert sent(recorder) == [start(200, []), END]
    assert logged_exception(logs, "closing the body iterator failed") is error


async def test_aclose_slower_than_cleanup_timeout_is_abandoned_and_logged(
    logs: pytest.LogCaptureFixture,
) -> None:
    body = TrackedBody(b"a", close_delay=10)
    response = HeaderFirstStreamingResponse(body)
    response.cleanup_timeout = 0.05
    with anyio.fail_after(5):
        recorder = await call(response, http_scope("HEAD"))
    assert sent(recorder) == [start(200, []), END]
    assert body.closes == 1
    assert logged(logs) == [("WARNING", "closing the body iterator took over 0.05s")]


async def test_blocking_sync_close_slower_than_cleanup_timeout_is_abandoned_and_logged(
    logs: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()

    class Stuck:
        def __iter__(self) -> Stuck:
            return self

        def __next__(self) -> bytes:
            raise StopIteration  # pragma: no cover - HEAD: never iterated

        def close(self) -> None:
            release.wait(10)

    response = HeaderFirstStreamingResponse(Stuck())
    response.cleanup_timeout = 0.05
    try:
        with anyio.fail_after(5):
            recorder = await call(response, http_scope("HEAD"))
    finally:
        release.set()  # let the abandoned worker thread finish
    assert sent(recorder) == [start(200, []), END]
    assert logged(logs) == [("WARNING", "closing the body iterator took over 0.05s")]


async def test_two_simultaneous_failures_are_raised_together() -> None:
    waiting = anyio.Event()

    async def receive() -> Message:
        await waiting.wait()
        raise RuntimeError("receive failed")

    async def body() -> AsyncIterator[bytes]:
        yield b"a"
        try:
            waiting.set()
            await anyio.sleep(10)
        except BaseException:
            raise ValueError("body failed while being cancelled") from None

    recorder = Recorder()
    with pytest.raises(BaseExceptionGroup) as info:
        await call(HeaderFirstStreamingResponse(body()), http_scope(), receive, recorder)
    assert sorted(type(exc).__name__ for exc in info.value.exceptions) == [
        "RuntimeError",
        "ValueError",
    ]
    assert sent(recorder) == [start(200, []), chunk(b"a")]


# --- background tasks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "status"),
    [
        pytest.param({}, 200, id="success"),
        pytest.param({"header_resolver": resolver_of({"x-bad": "\n"})}, 500, id="resolver"),
        pytest.param({"peek_first_chunk": True}, 502, id="early-error"),
        pytest.param({"headers": {"x-bad": "\n"}}, 500, id="own-header"),
    ],
)
async def test_background_task_runs_after_every_response_this_class_sends(
    options: dict[str, Any], status: int
) -> None:
    ran: list[str] = []
    body = TrackedBody(error=RuntimeError("upstream")) if status == 502 else TrackedBody(b"a")
    response = HeaderFirstStreamingResponse(
        body, background=BackgroundTask(ran.append, "background"), **options
    )
    recorder = await call(response)
    assert recorder.status == status
    assert ran == ["background"]
