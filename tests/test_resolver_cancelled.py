"""A resolver that raises a cancellation while its request is not cancelled, at the ASGI level.

Such a ``CancelledError`` is a resolver failure (logged, ``on_resolver_error`` applied); a
real cancellation of the response (the client left, a timeout around the app, the server
cancelling the request's task) still propagates and sends nothing.

The stray cancellation is made in two ways: on both backends, a resolver re-raises a
cancellation caught in a cancel scope of its own that has since exited (on trio, the only
way a ``Cancelled`` reaches a task whose scopes are not cancelled: an exception captured
elsewhere, e.g. in an `outcome`); on asyncio, a resolver awaits a future that another
task cancelled, the case of the bug report. Native asyncio cancellations (``Task.cancel()``,
``asyncio.timeout``) exist only on asyncio; those tests run there only.
"""

from __future__ import annotations

import asyncio
import logging

import anyio
import pytest
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from header_first_stream import HeaderFirstMiddleware, HeaderFirstStreamingResponse
from header_first_stream._resolve import ResolverCancelledError
from header_first_stream._types import HeaderSource

from ._asgi import (
    Recorder,
    call,
    hanging_resolver,
    http_scope,
    receive_disconnect_after,
    receive_nothing,
    stray_cancellation,
)

pytestmark = pytest.mark.anyio

SPECS = pytest.mark.parametrize("spec", ["2.3", "2.4"])
PEEK = pytest.mark.parametrize("peek", [False, True], ids=["no-peek", "peek"])

ERROR_500 = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]


async def resolver_awaiting_a_future_another_task_cancelled() -> HeaderSource:
    future: asyncio.Future[HeaderSource] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(future.cancel)  # "another task" cancels it
    return await future


class Body:
    """A body iterator that records whether it was pulled and closed."""

    def __init__(self) -> None:
        self.pulled = 0
        self.closed = False

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        self.pulled += 1
        if self.pulled > 1:
            raise StopAsyncIteration
        return b"hello"

    async def aclose(self) -> None:
        self.closed = True


def failure_of(caplog: pytest.LogCaptureFixture) -> BaseException:
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.exc_info is not None
    exc = record.exc_info[1]
    assert exc is not None
    return exc


def assert_stray_cancellation_logged(caplog: pytest.LogCaptureFixture, level: str) -> None:
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelname == level
    exc = failure_of(caplog)
    assert isinstance(exc, ResolverCancelledError)
    assert str(exc) == (
        "the header resolver raised CancelledError, but its request was not cancelled "
        "(it awaited something another task cancelled)"
    )
    assert isinstance(exc.__cause__, anyio.get_cancelled_exc_class())


# --- a stray cancellation is a resolver failure ---------------------------------------


@SPECS
@PEEK
async def test_a_stray_cancellation_from_the_resolver_gives_a_500_and_is_logged(
    spec: str, peek: bool, caplog: pytest.LogCaptureFixture
) -> None:
    body = Body()

    response = HeaderFirstStreamingResponse(
        body, header_resolver=stray_cancellation, peek_first_chunk=peek
    )
    recorder = await call(response, http_scope(spec_version=spec))
    assert recorder.status == 500
    assert recorder.headers == ERROR_500
    assert recorder.body == b"Internal Server Error"
    assert recorder.types == ["http.response.start", "http.response.body"]
    assert caplog.records[0].getMessage() == "header resolver failed for /"
    assert_stray_cancellation_logged(caplog, "ERROR")
    assert body.closed


@SPECS
async def test_a_stray_cancellation_under_degrade_sends_the_stream_without_its_headers(
    spec: str, caplog: pytest.LogCaptureFixture
) -> None:
    response = HeaderFirstStreamingResponse(
        Body(),
        media_type="text/plain",
        header_resolver=stray_cancellation,
        on_resolver_error="degrade",
    )
    recorder = await call(response, http_scope(spec_version=spec))
    assert recorder.status == 200
    assert recorder.headers == [(b"content-type", b"text/plain; charset=utf-8")]
    assert recorder.body == b"hello"
    assert caplog.records[0].getMessage() == (
        "header resolver failed for /; sending the response without its headers"
    )
    assert_stray_cancellation_logged(caplog, "WARNING")


async def test_a_stray_cancellation_with_a_resolver_timeout_is_a_failure_not_a_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    response = HeaderFirstStreamingResponse(
        Body(), header_resolver=stray_cancellation, resolver_timeout=5
    )
    recorder = await call(response)
    assert recorder.status == 500
    assert_stray_cancellation_logged(caplog, "ERROR")


async def test_the_resolver_timeout_still_gives_a_504() -> None:
    response = HeaderFirstStreamingResponse(
        Body(), header_resolver=hanging_resolver, resolver_timeout=0.05
    )
    recorder = await call(response)
    assert recorder.status == 504


async def test_the_middleware_resolver_with_a_stray_cancellation_gives_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = HeaderFirstMiddleware(JSONResponse({"ok": True}), resolver=stray_cancellation)
    recorder = await call(app)
    assert recorder.status == 500
    assert recorder.headers == ERROR_500
    assert recorder.body == b"Internal Server Error"
    assert_stray_cancellation_logged(caplog, "ERROR")


async def test_the_middleware_resolver_with_a_stray_cancellation_under_degrade(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = HeaderFirstMiddleware(
        JSONResponse({"ok": True}), resolver=stray_cancellation, on_resolver_error="degrade"
    )
    recorder = await call(app)
    assert recorder.status == 200
    assert recorder.body == b'{"ok":true}'
    assert_stray_cancellation_logged(caplog, "WARNING")


@SPECS
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # asyncio futures: asyncio only
async def test_a_resolver_awaiting_a_future_another_task_cancelled_gives_a_500(
    spec: str, caplog: pytest.LogCaptureFixture
) -> None:
    response = HeaderFirstStreamingResponse(
        Body(), header_resolver=resolver_awaiting_a_future_another_task_cancelled
    )
    recorder = await call(response, http_scope(spec_version=spec))
    assert recorder.status == 500
    assert recorder.headers == ERROR_500
    assert_stray_cancellation_logged(caplog, "ERROR")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # asyncio futures: asyncio only
async def test_the_middleware_resolver_awaiting_a_cancelled_future_under_degrade(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def resolver(scope: Scope) -> HeaderSource:
        return await resolver_awaiting_a_future_another_task_cancelled()

    app = HeaderFirstMiddleware(
        JSONResponse({"ok": True}), resolver=resolver, on_resolver_error="degrade"
    )
    recorder = await call(app)
    assert recorder.status == 200
    assert_stray_cancellation_logged(caplog, "WARNING")


# --- a real cancellation still propagates ---------------------------------------------


@SPECS
@PEEK
@pytest.mark.parametrize("end", ["the client leaves", "a timeout around the app"])
async def test_a_client_that_leaves_or_a_timeout_cancels_the_resolver_silently(
    spec: str, peek: bool, end: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Either way the cancellation propagates: nothing is sent, nothing is logged.
    body = Body()
    response = HeaderFirstStreamingResponse(
        body, header_resolver=hanging_resolver, peek_first_chunk=peek
    )
    recorder = Recorder()
    if end == "the client leaves":
        with anyio.fail_after(5):
            await response(http_scope(spec_version=spec), receive_disconnect_after(0.05), recorder)
    else:
        with anyio.move_on_after(0.05) as timeout:
            await response(http_scope(spec_version=spec), receive_nothing(), recorder)
        assert timeout.cancelled_caught
    assert recorder.messages == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert body.closed


async def test_a_timeout_around_the_middleware_cancels_its_resolver_and_propagates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = HeaderFirstMiddleware(JSONResponse({"ok": True}), resolver=hanging_resolver)
    recorder = Recorder()
    with anyio.move_on_after(0.05) as timeout:
        await app(http_scope(), receive_nothing(), recorder)
    assert timeout.cancelled_caught
    assert recorder.messages == []
    assert caplog.records == []


# Native asyncio cancellation: delivered once, not level-triggered, so only the
# cancel scope around the resolver can tell it from a stray one (asyncio only).


@SPECS
@PEEK
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_asyncio_timeout_around_the_app_still_raises_timeout_error(
    spec: str, peek: bool, caplog: pytest.LogCaptureFixture
) -> None:
    response = HeaderFirstStreamingResponse(
        Body(), header_resolver=hanging_resolver, peek_first_chunk=peek
    )
    recorder = Recorder()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await response(http_scope(spec_version=spec), receive_nothing(), recorder)
    assert recorder.messages == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_asyncio_timeout_around_the_middleware_still_raises_timeout_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = HeaderFirstMiddleware(JSONResponse({"ok": True}), resolver=hanging_resolver)
    recorder = Recorder()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await app(http_scope(), receive_nothing(), recorder)
    assert recorder.messages == []
    assert caplog.records == []


@SPECS
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_server_cancelling_the_request_task_cancels_it(
    spec: str, caplog: pytest.LogCaptureFixture
) -> None:
    started = anyio.Event()

    async def resolver() -> HeaderSource:
        started.set()
        return await hanging_resolver()

    response = HeaderFirstStreamingResponse(Body(), header_resolver=resolver)
    recorder = Recorder()

    async def request_task(scope: Scope, receive: Receive, send: Send) -> None:
        await response(scope, receive, send)

    task = asyncio.create_task(
        request_task(http_scope(spec_version=spec), receive_nothing(), recorder)
    )
    with anyio.fail_after(5):
        await started.wait()
    task.cancel()  # as uvicorn does at the end of a graceful shutdown
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert recorder.messages == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_cancelled_future_and_a_native_cancel_together_propagate() -> None:
    # The resolver sees a stray CancelledError, but the task was cancelled too: the
    # cancellation wins.
    async def resolver() -> HeaderSource:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        return await resolver_awaiting_a_future_another_task_cancelled()

    response = HeaderFirstStreamingResponse(Body(), header_resolver=resolver)
    recorder = Recorder()

    async def request_task() -> None:
        await response(http_scope(spec_version="2.4"), receive_nothing(), recorder)

    task = asyncio.create_task(request_task())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert recorder.messages == []
