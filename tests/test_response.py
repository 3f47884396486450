"""`HeaderFirstStreamingResponse`, called directly as an ASGI app, every message recorded.

Only these recordings can show *when* a message went out (test clients buffer), so every
ordering and timing claim of the module docstring is pinned here.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import threading
import time
import types
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import Message, Receive, Scope

from header_first_stream import HeaderFirstStreamingResponse, late_headers

from ._asgi import (
    Recorder,
    call,
    http_scope,
    receive_disconnect_after,
    receive_nothing,
    websocket_scope,
)

SPECS = pytest.mark.parametrize("spec", ["2.3", "2.4"])

TEXT = (b"content-type", b"text/plain; charset=utf-8")
ERROR_500 = b"Internal Server Error"
DEFAULT_502 = (
    b'{"error":{"message":"The upstream service failed before sending a response.",'
    b'"type":"upstream_error","code":502}}'
)
LOGGER = "header_first_stream"


def start(status: int, headers: list[tuple[bytes, bytes]]) -> Message:
    return {"type": "http.response.start", "status": status, "headers": headers}


def chunk(body: bytes, more: bool = True) -> Message:
    return {"type": "http.response.body", "body": body, "more_body": more}


def plain_error(status: int, reason: bytes, *late: tuple[bytes, bytes]) -> list[Message]:
    """The short plain-text error response this class sends instead of the stream."""
    headers = [TEXT, (b"content-length", str(len(reason)).encode()), *late]
    return [start(status, headers), chunk(reason, more=False)]


END = chunk(b"", more=False)


def sent(recorder: Recorder) -> list[Message]:
    return [message for _, message in recorder.messages]


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def logged_exception(caplog: pytest.LogCaptureFixture, message: str) -> BaseException | None:
    for record in caplog.records:
        if record.name == LOGGER and record.getMessage() == message and record.exc_info:
            return record.exc_info[1]
    raise AssertionError(f"no log record {message!r} with exc_info: {logged(caplog)}")


async def tracked(events: list[str], *chunks: bytes | str) -> AsyncGenerator[bytes | str]:
    """An async generator that records being entered and closed.

    Its ``finally`` awaits before recording: closing must happen in a shielded scope
    for "closed" to be recorded after a cancellation.
    """
    events.append("body entered")
    try:
        for item in chunks:
            yield item
    finally:
        await anyio.lowlevel.checkpoint()
        events.append("body closed")


class TrackedBody:
    """An async iterator (not a generator) that counts pulls and ``aclose()`` calls."""

    def __init__(
        self,
        *chunks: bytes | str,
        error: Exception | None = None,
        close_error: Exception | None = None,
        close_delay: float = 0.0,
    ) -> None:
        self.chunks = list(chunks)
        self.error = error
        self.close_error = close_error
        self.close_delay = close_delay
        self.pulls = 0
        self.closes = 0

    def __aiter__(self) -> TrackedBody:
        return self

    async def __anext__(self) -> bytes | str:
        self.pulls += 1
        if self.chunks:
            return self.chunks.pop(0)
        if self.error is not None:
            raise self.error
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closes += 1
        if self.close_delay:
            await anyio.sleep(self.close_delay)
        if self.close_error is not None:
            raise self.close_error


class BlockingClient(Recorder):
    """A client that stops reading: sends after the first ``accept`` block forever.

    `stalled` is set once a send blocks; `disconnect_when_stalled` is a spec-2.3
    ``receive`` whose client leaves then, so no test depends on the machine's speed.
    """

    def __init__(self, accept: int) -> None:
        super().__init__()
        self.accept = accept
        self.stalled = anyio.Event()

    async def __call__(self, message: Message) -> None:
        if len(self.messages) >= self.accept:
            self.stalled.set()
            await anyio.sleep_forever()
        await super().__call__(message)

    async def disconnect_when_stalled(self) -> Message:
        await self.stalled.wait()
        return {"type": "http.disconnect"}


class LeavingClient(Recorder):
    """A spec-2.4 server whose client left after ``accept`` messages: send raises OSError."""

    def __init__(self, accept: int) -> None:
        super().__init__()
        self.accept = accept

    async def __call__(self, message: Message) -> None:
        if len(self.messages) >= self.accept:
            raise OSError("connection reset by peer")
        await super().__call__(message)


def resolver_of(headers: Any) -> Any:
    async def resolver(*first: object) -> Any:  # with or without peek_first_chunk
        return headers

    return resolver


# --- ordering and timing -------------------------------------------------------------


@pytest.mark.anyio
@SPECS
async def test_head_waits_for_a_slow_resolver_and_carries_its_headers(spec: str) -> None:
    recorder = Recorder()
    events: list[str] = []
    returned_at: list[float] = []

    async def resolver() -> dict[str, str | int]:
        events.append("resolver started")
        await anyio.sleep(0.2)
        returned_at.append(time.monotonic() - recorder.start)
        events.append("resolver returned")
        return {"x-ratelimit-remaining-requests": 5999, "x-request-id": "abc"}

    response = HeaderFirstStreamingResponse(
        tracked(events, b"a", "b"), media_type="text/plain", header_resolver=resolver
    )
    await call(response, http_scope(spec_version=spec), send=recorder)

    assert sent(recorder) == [
        start(
            200,
            [
                TEXT,
                (b"x-ratelimit-remaining-requests", b"5999"),
                (b"x-request-id", b"abc"),
            ],
        ),
        chunk(b"a"),
        chunk(b"b"),
        END,
    ]
    assert events == ["resolver started", "resolver returned", "body entered", "body closed"]
    assert all(at >= returned_at[0] for at, _ in recorder.messages)
    assert recorder.messages[0][0] >= 0.2


@pytest.mark.anyio
@SPECS
async def test_merge_order_is_own_then_late_store_then_resolver(spec: str) -> None:
    scope = http_scope(spec_version=spec)
    store = late_headers(scope)
    store.add("X-Shared", "late")
    store.add("x-late-only", 1)
    store.update({"x-both": "late"})
    resolver = resolver_of(
        [("X-Both", "resolver"), ("set-cookie", "a=1"), ("set-cookie", "b=2"), ("x-n", 0)]
    )
    response = HeaderFirstStreamingResponse(
        TrackedBody(b"x"),
        headers={"x-own": "own", "x-shared": "own", "x-both": "own", "set-cookie": "own=1"},
        header_resolver=resolver,
    )
    recorder = await call(response, scope)

    assert recorder.headers == [
        (b"x-own", b"own"),
        (b"set-cookie", b"own=1"),  # never replaced: each set-cookie is its own cookie
        (b"x-shared", b"late"),
        (b"x-late-only", b"1"),
        (b"x-both", b"resolver"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"x-n", b"0"),
    ]
    assert recorder.body == b"x"
    assert store.sent


@pytest.mark.anyio
@SPECS
async def test_resolver_may_replace_content_type(spec: str) -> None:
    response = HeaderFirstStreamingResponse(
        TrackedBody(b"x"),
        media_type="text/plain",
        header_resolver=resolver_of({"Content-Type": "text/event-stream"}),
    )
    recorder = await call(response, http_scope(spec_version=spec))
    assert recorder.headers == [(b"content-type", b"text/event-stream")]


@pytest.mark.anyio
@SPECS
async def test_peek_pulls_the_first_chunk_before_the_resolver_and_passes_it(spec: str) -> None:
    events: list[str] = []

    async def resolver(first: bytes | str | memoryview | None) -> dict[str, str]:
        events.append(f"resolver got {first!r}")
        return {"x-first-length": str(len(first or b""))}

    response = HeaderFirstStreamingResponse(
        tracked(events, b"first", b"second"), header_resolver=resolver, peek_first_chunk=True
    )
    recorder = await call(response, http_scope(spec_version=spec))

    assert events == ["body entered", "resolver got b'first'", "body closed"]
    assert sent(recorder) == [
        start(200, [(b"x-first-length", b"5")]),
        chunk(b"first"),
        chunk(b"second"),
        END,
    ]


@pytest.mark.anyio
async def test_peeked_str_chunk_reaches_the_resolver_as_str_and_the_client_encoded() -> None:
    seen: list[object] = []

    async def resolver(first: bytes | str | memoryview | None) -> dict[str, str]:
        seen.append(first)
        return {}

    response = HeaderFirstStreamingResponse(
        TrackedBody("héllo", "wörld"), header_resolver=resolver, peek_first_chunk=True
    )
    recorder = await call(response)
    assert seen == ["héllo"]
    assert sent(recorder) == [
        start(200, []),
        chunk("héllo".encode()),
        chunk("wörld".encode()),
        END,
    ]


@pytest.mark.anyio
@SPECS
async def test_peek_without_a_resolver_streams_normally(spec: str) -> None:
    events: list[str] = []
    response = HeaderFirstStreamingResponse(tracked(events, b"a", b"b"), peek_first_chunk=True)
    recorder = await call(response, http_scope(spec_version=spec))
    assert sent(recorder) == [start(200, []), chunk(b"a"), chunk(b"b"), END]
    assert events == ["body entered", "body closed"]


# --- resolver failures ---------------------------------------------------------------


@pytest.mark.anyio
@SPECS
async def test_resolver_exception_gives_500_without_its_text_and_is_logged_with_the_path(
    spec: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    scope = http_scope(path="/v1/chat/completions", spec_version=spec)
    late_headers(scope).add("x-request-id", "req-1")
    error = RuntimeError("upstream key sk-secret-123 rejected")

    async def resolver() -> dict[str, str]:
        raise error

    body = TrackedBody(b"never")
    response = HeaderFirstStreamingResponse(body, header_resolver=resolver)
    recorder = await call(response, scope)

    assert sent(recorder) == plain_error(500, ERROR_500, (b"x-request-id", b"req-1"))
    assert b"sk-secret" not in recorder.body
    assert logged(caplog) == [("ERROR", "header resolver failed for /v1/chat/completions")]
    assert logged_exception(caplog, "header resolver failed for /v1/chat/completions") is error
    assert (body.pulls, body.closes) == (0, 1)


@pytest.mark.anyio
@SPECS
async def test_resolver_timeout_gives_504(spec: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def resolver() -> dict[str, str]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    body = TrackedBody(b"never")
    response = HeaderFirstStreamingResponse(body, header_resolver=resolver, resolver_timeout=0.05)
    recorder = await call(response, http_scope(path="/p", spec_version=spec))

    assert sent(recorder) == plain_error(504, b"Gateway Timeout")
    assert logged(caplog) == [("ERROR", "header resolver timed out after 0.05s for /p")]
    assert (body.pulls, body.closes) == (0, 1)


@pytest.mark.anyio
async def test_resolver_that_returns_within_its_timeout_is_used() -> None:
    async def resolver() -> dict[str, str]:
        await anyio.sleep(0.01)
        return {"x-late": "1"}

    response = HeaderFirstStreamingResponse(
        TrackedBody(b"a"), header_resolver=resolver, resolver_timeout=10
    )
    recorder = await call(response)
    assert sent(recorder) == [start(200, [(b"x-late", b"1")]), chunk(b"a"), END]


@pytest.mark.anyio
@SPECS
async def test_degrade_streams_without_resolver_headers_and_warns(
    spec: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    scope = http_scope(path="/p", spec_version=spec)
    late_headers(scope).add("x-request-id", "req-1")

    async def resolver() -> dict[str, str]:
        raise RuntimeError("limiter down")

    response = HeaderFirstStreamingResponse(
        TrackedBody(b"a", b"b"),
        headers={"x-own": "1"},
        header_resolver=resolver,
        on_resolver_error="degrade",
    )
    recorder = await call(response, scope)

    assert sent(recorder) == [
        start(200, [(b"x-own", b"1"), (b"x-request-id", b"req-1")]),
        chunk(b"a"),
        chunk(b"b"),
        END,
    ]
    message = "header resolver failed for /p; sending the response without its headers"
    assert logged(caplog) == [("WARNING", message)]
    assert isinstance(logged_exception(caplog, message), RuntimeError)


@pytest.mark.anyio
async def test_degrade_on_timeout_streams_without_resolver_headers_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def resolver() -> dict[str, str]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    response = HeaderFirstStreamingResponse(
        TrackedBody(b"a"),
        header_resolver=resolver,
        resolver_timeout=0.05,
        on_resolver_error="degrade",
    )
    recorder = await call(response, http_scope(path="/p"))

    assert sent(recorder) == [start(200, []), chunk(b"a"), END]
    assert logged(caplog) == [
        (
            "WARNING",
            "header resolver timed out after 0.05s for /p; "
            "sending the response without its headers",
        )
    ]


INVALID_RESOLVER_HEADERS = [
    pytest.param({"x-bad": "a\r\nx-injected: 1"}, "for 'x-bad': contains '\\r'", id="crlf"),
    pytest.param({"x-bad": "a\nb"}, "for 'x-bad': contains '\\n'", id="lf"),
    pytest.param({"x-bad": "a\x00b"}, "for 'x-bad': contains '\\x00'", id="nul"),
    pytest.param({"x-bad": "a\x7fb"}, "for 'x-bad': contains '\\x7f'", id="del"),
    pytest.param({"x bad": "v"}, "invalid header name 'x bad'", id="space-in-name"),
    pytest.param({"x:bad": "v"}, "invalid header name 'x:bad'", id="colon-in-name"),
    pytest.param({"": "v"}, "invalid header name ''", id="empty-name"),
    pytest.param({"x-bad": "€"}, "'€' is not latin-1", id="not-latin-1"),
    pytest.param({"content-length": "5"}, "invalid late header 'content-length'", id="cl"),
    pytest.param(
        {"Transfer-Encoding": "chunked"}, "invalid late header 'Transfer-Encoding'", id="te"
    ),
    pytest.param({"x-bad": 1.5}, "float (header values must be str or int)", id="float"),
    pytest.param({"x-bad": True}, "bool (header values must be str or int)", id="bool"),
    pytest.param({"x-bad": None}, "NoneType (header values must be str or int)", id="none"),
    pytest.param("x-bad: 1", "invalid headers: str", id="str"),
    pytest.param([("x-a", "1", "extra")], "invalid header entry ('x-a', '1', 'extra')", id="3"),
    pytest.param([(1, "v")], "invalid header name 1: int (header names", id="int-name"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("headers", "reason"), INVALID_RESOLVER_HEADERS)
async def test_invalid_resolver_header_gives_500_and_never_a_head_with_it(
    headers: Any, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    body = TrackedBody(b"never")
    response = HeaderFirstStreamingResponse(body, header_resolver=resolver_of(headers))
    recorder = await call(response, http_scope(path="/p"))

    assert sent(recorder) == plain_error(500, ERROR_500)
    error = logged_exception(caplog, "header resolver failed for /p")
    assert error is not None
    assert type(error).__name__ == "HeaderValidationError"
    assert reason in str(error)
    assert (body.pulls, body.closes) == (0, 1)


@pytest.mark.anyio
async def test_invalid_resolver_header_under_degrade_streams_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    response = HeaderFirstStreamingResponse(
        TrackedBody(b"a"),
        header_resolver=resolver_of({"x-good": "1", "x-bad": "a\r\nb"}),
        on_resolver_error="degrade",
    )
    recorder = await call(response, http_scope(path="/p"))
    assert sent(recorder) == [start(200, []), chunk(b"a"), END]
    assert [level for level, _ in logged(caplog)] == ["WARNING"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param({"x-own": "a\r\nb"}, "for 'x-own': contains '\\r'", id="crlf"),
        pytest.param({"x-own": "a\tb\x01"}, "for 'x-own': contains '\\x01'", id="soh"),
        pytest.param({"x own": "v"}, "invalid header name 'x own'", id="name"),
    ],
)
async def test_invalid_own_header_gives_500(
    headers: dict[str, str], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    scope = http_scope(path="/p")
    late_headers(scope).add("x-request-id", "req-1")
    body = TrackedBody(b"never")
    response = HeaderFirstStreamingResponse(
        body, headers=headers, header_resolver=resolver_of({"x-late": "1"})
    )
    recorder = await call(response, scope)

    assert sent(recorder) == plain_error(500, ERROR_500, (b"x-request-id", b"req-1"))
    assert reason in str(logged_exception(caplog, "invalid response header for /p"))
    assert (body.pulls, body.closes) == (0, 1)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"header_resolver": "x"}, TypeError, "header_resolver must be an async callable, got str"),
        (
            {"resolver_timeout": 0},
            ValueError,
            "resolver_timeout must be a positive number of seconds or None, got 0",
        ),
        ({"resolver_timeout": -1.5}, ValueError, "got -1.5"),
        ({"resolver_timeout": float("nan")}, ValueError, "got nan"),
        (
            {"on_resolver_error": "ignore"},
            ValueError,
            "on_resolver_error must be 'error' or 'degrade', got 'ignore'",
        ),
        (
            {"early_error_handler": 42},
            TypeError,
            "early_error_handler must be a callable taking the exception, got int",
        ),
        (
            {"early_error_handler": lambda exc: None},
            ValueError,
            "early_error_handler needs peek_first_chunk=True",
        ),
    ],
)
def test_constructor_rejects_bad_options(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        HeaderFirstStreamingResponse(iter([b"x"]), **options)
    assert message in str(info.value)


def test_constructor_keeps_starlette_positional_order() -> None:
    task = BackgroundTask(lambda: None)
    response = HeaderFirstStreamingResponse(iter([]), 201, {"x-a": "1"}, "text/plain", task)
    assert isinstance(response, StreamingResponse)
    assert response.status_code == 201
    assert response.raw_headers == [(b"x-a", b"1"), TEXT]
    assert response.background is task
    assert response.cleanup_timeout == 30.0


# --- the body iterator is closed on every exit ----------------------------------------


@pytest.mark.anyio
@SPECS
async def test_finished_body_is_closed_before_the_background_task(spec: str) -> None:
    events: list[str] = []
    response = HeaderFirstStreamingResponse(
        tracked(events, b"a"), background=BackgroundTask(events.append, "background")
    )
    recorder = await call(response, http_scope(spec_version=spec))
    assert sent(recorder) == [start(200, []), chunk(b"a"), END]
    assert events == ["body entered", "body closed", "background"]


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_client_disconnect_mid_stream_on_spec_2_3_closes_the_body() -> None:
    events: list[str] = []
    client = BlockingClient(accept=2)  # reads the head and one chunk, then stalls
    response = HeaderFirstStreamingResponse(
        tracked(events, b"a", b"b", b"c"), header_resolver=resolver_of({"x-late": "1"})
    )
    with anyio.fail_after(5):
        await call(response, http_scope(spec_version="2.3"), client.disconnect_when_stalled, client)
    assert sent(client) == [start(200, [(b"x-late", b"1")]), chunk(b"a")]
    assert events == ["body entered", "body closed"]


@pytest.mark.anyio
@pytest.mark.parametrize("accept", [0, 1, 2])
async def test_send_failing_on_spec_2_4_raises_client_disconnect_and_closes_the_body(
    accept: int,
) -> None:
    events: list[str] = []
    client = LeavingClient(accept=accept)
    body = tracked(events, b"a", b"b")
    response = HeaderFirstStreamingResponse(body, header_resolver=resolver_of({"x-late": "1"}))
    with pytest.raises(ClientDisconnect):
        await call(response, http_scope(spec_version="2.4"), send=client)
    assert sent(client) == [start(200, [(b"x-late", b"1")]), chunk(b"a")][:accept]
    # Never entered when the head could not be sent; closed either way.
    assert events == ([] if accept == 0 else ["body entered", "body closed"])
    assert isinstance(body, types.AsyncGeneratorType)
    assert body.ag_frame is None


@pytest.mark.anyio
@pytest.mark.parametrize("accept", [0, 1, 2])
async def test_send_failing_on_spec_2_4_with_a_peek_raises_client_disconnect_and_closes(
    accept: int,
) -> None:
    events: list[str] = []
    client = LeavingClient(accept=accept)
    body = tracked(events, b"a", b"b")
    response = HeaderFirstStreamingResponse(
        body, peek_first_chunk=True, header_resolver=resolver_of({"x-late": "1"})
    )
    with pytest.raises(ClientDisconnect):
        await call(response, http_scope(spec_version="2.4"), send=client)
    assert sent(client) == [start(200, [(b"x-late", b"1")]), chunk(b"a")][:accept]
    assert events == ["body entered", "body closed"]  # entered by the peek
    assert isinstance(body, types.AsyncGeneratorType)
    assert body.ag_frame is None


@pytest.mark.anyio
async def test_send_failing_without_options_on_spec_2_4_raises_client_disconnect() -> None:
    events: list[str] = []
    client = LeavingClient(accept=1)
    with pytest.raises(ClientDisconnect):
        await call(
            HeaderFirstStreamingResponse(tracked(events, b"a")),
            http_scope(spec_version="2.4"),
            send=client,
        )
    assert sent(client) == [start(200, [])]
    assert events == ["body entered", "body closed"]


@pytest.mark.anyio
@SPECS
async def test_cancellation_from_outside_closes_the_body(spec: str) -> None:
    events: list[str] = []
    client = BlockingClient(accept=2)
    response = HeaderFirstStreamingResponse(
        tracked(events, b"a", b"b"), header_resolver=resolver_of({"x-late": "1"})
    )
    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(call, response, http_scope(spec_version=spec), None, client)
            await client.stalled.wait()
            task_group.cancel_scope.cancel()
    assert sent(client) == [start(200, [(b"x-late", b"1")]), chunk(b"a")]
    assert events == ["body entered", "body closed"]


@pytest.mark.anyio
@SPECS
async def test_disconnect_while_resolving_cancels_the_resolver_and_sends_nothing(
    spec: str,
) -> None:
    events: list[str] = []
    resolving = anyio.Event()

    async def resolver() -> dict[str, str]:
        events.append("resolver started")
        resolving.set()
        try:
            await anyio.sleep(10)
            events.append("resolver returned")
        finally:
            events.append("resolver ended")
        return {"x-late": "1"}

    body = TrackedBody(b"a")
    response = HeaderFirstStreamingResponse(
        body,
        header_resolver=resolver,
        background=BackgroundTask(events.append, "background"),
    )

    async def receive() -> Message:
        await resolving.wait()
        return {"type": "http.disconnect"}

    with anyio.fail_after(5):
        recorder = await call(response, http_scope(spec_version=spec), receive)
    assert recorder.messages == []
    assert events == ["resolver started", "resolver ended", "background"]
    assert (body.pulls, body.closes) == (0, 1)


@pytest.mark.anyio
@SPECS
async def test_head_request_runs_the_resolver_but_never_iterates_the_body(spec: str) -> None:
    body = TrackedBody(b"a")
    calls: list[object] = []

    async def resolver(first: bytes | str | memoryview | None) -> dict[str, str]:
        calls.append(first)
        return {"x-late": "1"}

    response = HeaderFirstStreamingResponse(
        body, media_type="text/plain", header_resolver=resolver, peek_first_chunk=True
    )
    recorder = await call(response, http_scope("HEAD", spec_version=spec))
    assert sent(recorder) == [start(200, [TEXT, (b"x-late", b"1")]), END]
    assert calls == [None]
    assert (body.pulls, body.closes) == (0, 1)


@pytest.mark.anyio
async def test_head_request_closes_an_unstarted_sync_generator() -> None:
    def endless() -> Generator[bytes]:
        while True:  # pragma: no cover - never iterated
            yield b"x"

    generator = endless()
    response = HeaderFirstStreamingResponse(generator)
    recorder = await call(response, http_scope("HEAD"))
    assert sent(recorder) == [start(200, []), END]
    assert inspect.getgeneratorstate(generator) == inspect.GEN_CLOSED


@pytest.mark.anyio
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


@pytest.mark.anyio
@SPECS
async def test_finished_iterator_objects_are_still_closed(spec: str) -> None:
    # Not generators: objects such as an SDK's stream may hold a connection until closed.
    class SyncStream:
        def __init__(self) -> None:
            self.items = [b"b", b"a"]
            self.closes = 0

        def __iter__(self) -> SyncStream:
            return self

        def __next__(self) -> bytes:
            if not self.items:
                raise StopIteration
            return self.items.pop()

        def close(self) -> None:
            self.closes += 1

    async_stream = TrackedBody(b"a", b"b")
    recorder = await call(HeaderFirstStreamingResponse(async_stream), http_scope(spec_version=spec))
    assert sent(recorder) == [start(200, []), chunk(b"a"), chunk(b"b"), END]
    assert (async_stream.pulls, async_stream.closes) == (3, 1)

    sync_stream = SyncStream()
    recorder = await call(HeaderFirstStreamingResponse(sync_stream), http_scope(spec_version=spec))
    assert sent(recorder) == [start(200, []), chunk(b"a"), chunk(b"b"), END]
    assert sync_stream.closes == 1


@pytest.mark.anyio
async def test_finished_sync_generator_is_closed() -> None:
    def chunks() -> Generator[bytes]:
        yield b"a"

    generator = chunks()
    recorder = await call(HeaderFirstStreamingResponse(generator))
    assert sent(recorder) == [start(200, []), chunk(b"a"), END]
    assert inspect.getgeneratorstate(generator) == inspect.GEN_CLOSED


@pytest.mark.anyio
async def test_sync_list_content_streams_and_needs_no_closing() -> None:
    recorder = await call(HeaderFirstStreamingResponse([b"a", "b", memoryview(b"c")]))
    assert sent(recorder) == [start(200, []), chunk(b"a"), chunk(b"b"), chunk(b"c"), END]


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_aclose_that_raises_is_logged_and_the_response_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    error = RuntimeError("close failed")
    response = HeaderFirstStreamingResponse(TrackedBody(b"a", close_error=error))
    recorder = await call(response, http_scope("HEAD"))
    assert sent(recorder) == [start(200, []), END]
    assert logged(caplog) == [("ERROR", "closing the body iterator failed")]
    assert logged_exception(caplog, "closing the body iterator failed") is error


@pytest.mark.anyio
async def test_sync_close_that_raises_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    error = RuntimeError("sync close failed")

    class Chunks:
        def __init__(self) -> None:
            self.items = [b"a"]

        def __iter__(self) -> Chunks:
            return self

        def __next__(self) -> bytes:
            if not self.items:
                raise StopIteration
            return self.items.pop()

        def close(self) -> None:
            raise error

    recorder = await call(HeaderFirstStreamingResponse(Chunks()), http_scope("HEAD"))
    assert sent(recorder) == [start(200, []), END]
    assert logged_exception(caplog, "closing the body iterator failed") is error


@pytest.mark.anyio
async def test_aclose_slower_than_cleanup_timeout_is_abandoned_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    body = TrackedBody(b"a", close_delay=10)
    response = HeaderFirstStreamingResponse(body)
    response.cleanup_timeout = 0.05
    with anyio.fail_after(5):
        recorder = await call(response, http_scope("HEAD"))
    assert sent(recorder) == [start(200, []), END]
    assert body.closes == 1
    assert logged(caplog) == [("WARNING", "closing the body iterator took over 0.05s")]


@pytest.mark.anyio
async def test_blocking_sync_close_slower_than_cleanup_timeout_is_abandoned_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
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
    assert logged(caplog) == [("WARNING", "closing the body iterator took over 0.05s")]


@pytest.mark.anyio
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


# --- peek_first_chunk and early errors -------------------------------------------------


@pytest.mark.anyio
@SPECS
async def test_peek_of_an_empty_body_sends_the_head_and_an_empty_body(spec: str) -> None:
    seen: list[object] = []

    async def resolver(first: bytes | str | memoryview | None) -> dict[str, str]:
        seen.append(first)
        return {"x-late": "1"}

    body = TrackedBody()
    response = HeaderFirstStreamingResponse(body, header_resolver=resolver, peek_first_chunk=True)
    recorder = await call(response, http_scope(spec_version=spec))
    assert sent(recorder) == [start(200, [(b"x-late", b"1")]), END]
    assert seen == [None]
    assert (body.pulls, body.closes) == (1, 1)


@pytest.mark.anyio
@SPECS
async def test_exception_before_the_first_chunk_gives_the_default_502_with_late_headers(
    spec: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    scope = http_scope(path="/v1/messages", spec_version=spec)
    late_headers(scope).add("x-request-id", "req-1")
    error = ConnectionError("upstream refused: token sk-secret")
    seen: list[object] = []

    async def resolver(first: bytes | str | memoryview | None) -> dict[str, str | int]:
        seen.append(first)
        return {"x-ratelimit-remaining-requests": 0}

    body = TrackedBody(error=error)
    response = HeaderFirstStreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"x-own": "1"},
        header_resolver=resolver,
        peek_first_chunk=True,
    )
    recorder = await call(response, scope)

    assert sent(recorder) == [
        start(
            502,
            [
                (b"content-length", str(len(DEFAULT_502)).encode()),
                (b"content-type", b"application/json"),
                (b"x-request-id", b"req-1"),
                (b"x-ratelimit-remaining-requests", b"0"),
            ],
        ),
        chunk(DEFAULT_502, more=False),
    ]
    assert seen == [None]
    message = "body iterator failed before its first chunk for /v1/messages"
    assert logged(caplog) == [("ERROR", message)]
    assert logged_exception(caplog, message) is error
    assert (body.pulls, body.closes) == (1, 1)


class RateLimited(Exception):
    pass


@pytest.mark.anyio
@SPECS
async def test_early_error_handler_response_keeps_its_headers_and_gets_late_ones(
    spec: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    error = RateLimited("429 from upstream")
    handled: list[Exception] = []

    def handler(exc: Exception) -> Response | None:
        handled.append(exc)
        return PlainTextResponse("slow down", status_code=429, headers={"Retry-After": "3"})

    response = HeaderFirstStreamingResponse(
        TrackedBody(error=error),
        header_resolver=resolver_of({"x-ratelimit-remaining-requests": 0, "retry-after": "5"}),
        peek_first_chunk=True,
        early_error_handler=handler,
    )
    recorder = await call(response, http_scope(path="/p", spec_version=spec))

    assert sent(recorder) == [
        start(
            429,
            [
                (b"content-length", b"9"),
                TEXT,
                (b"x-ratelimit-remaining-requests", b"0"),
                (b"retry-after", b"5"),
            ],
        ),
        chunk(b"slow down", more=False),
    ]
    assert handled == [error]
    assert logged(caplog) == [
        ("INFO", "body iterator failed before its first chunk for /p: answered 429")
    ]


@pytest.mark.anyio
async def test_early_error_handler_returning_none_gives_the_default_502() -> None:
    response = HeaderFirstStreamingResponse(
        TrackedBody(error=RuntimeError("x")),
        peek_first_chunk=True,
        early_error_handler=lambda exc: None,
    )
    recorder = await call(response)
    assert recorder.status == 502
    assert recorder.body == DEFAULT_502


@pytest.mark.anyio
async def test_early_error_handler_that_raises_gives_the_default_502_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    handler_error = KeyError("no mapping")

    def handler(exc: Exception) -> Response | None:
        raise handler_error

    response = HeaderFirstStreamingResponse(
        TrackedBody(error=RuntimeError("upstream")),
        header_resolver=resolver_of({"x-late": "1"}),
        peek_first_chunk=True,
        early_error_handler=handler,
    )
    recorder = await call(response, http_scope(path="/p"))
    assert recorder.status == 502
    assert recorder.headers[-1] == (b"x-late", b"1")
    assert recorder.body == DEFAULT_502
    assert logged_exception(caplog, "early_error_handler failed for /p") is handler_error
    assert [level for level, _ in logged(caplog)] == ["ERROR", "ERROR"]


@pytest.mark.anyio
async def test_early_error_handler_response_with_an_invalid_header_gives_the_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    response = HeaderFirstStreamingResponse(
        TrackedBody(error=RuntimeError("upstream")),
        peek_first_chunk=True,
        early_error_handler=lambda exc: Response("x", 429, headers={"x-bad": "a\r\nb"}),
    )
    recorder = await call(response, http_scope(path="/p"))
    assert sent(recorder) == [
        start(
            502,
            [
                (b"content-length", str(len(DEFAULT_502)).encode()),
                (b"content-type", b"application/json"),
            ],
        ),
        chunk(DEFAULT_502, more=False),
    ]
    error = logged_exception(caplog, "invalid header in the early error response for /p")
    assert "for 'x-bad': contains '\\r'" in str(error)


@pytest.mark.anyio
async def test_error_responses_keep_their_own_content_type_over_a_late_one() -> None:
    async def failing() -> dict[str, str]:
        raise RuntimeError("limiter down")

    scope = http_scope()
    late_headers(scope).add("content-type", "text/event-stream")
    late_headers(scope).add("x-request-id", "req-1")
    recorder = await call(
        HeaderFirstStreamingResponse(TrackedBody(), header_resolver=failing), scope
    )
    assert sent(recorder) == plain_error(500, ERROR_500, (b"x-request-id", b"req-1"))

    early = HeaderFirstStreamingResponse(
        TrackedBody(error=RuntimeError("upstream")),
        header_resolver=resolver_of({"content-type": "text/event-stream", "x-late": "1"}),
        peek_first_chunk=True,
    )
    recorder = await call(early)
    assert recorder.headers == [
        (b"content-length", str(len(DEFAULT_502)).encode()),
        (b"content-type", b"application/json"),
        (b"x-late", b"1"),
    ]


@pytest.mark.anyio
async def test_resolver_failure_wins_over_an_early_error() -> None:
    async def resolver(first: bytes | str | memoryview | None) -> dict[str, str]:
        raise RuntimeError("limiter down")

    response = HeaderFirstStreamingResponse(
        TrackedBody(error=RuntimeError("upstream")),
        header_resolver=resolver,
        peek_first_chunk=True,
    )
    recorder = await call(response)
    assert sent(recorder) == plain_error(500, ERROR_500)


# --- background tasks and websocket denial ---------------------------------------------


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_websocket_denial_carries_the_resolver_headers() -> None:
    events: list[str] = []
    response = HeaderFirstStreamingResponse(
        tracked(events, b"denied", " by policy"),
        status_code=403,
        header_resolver=resolver_of({"x-reason": "policy"}),
        background=BackgroundTask(events.append, "background"),
    )
    recorder = await call(response, websocket_scope())
    assert sent(recorder) == [
        {
            "type": "websocket.http.response.start",
            "status": 403,
            "headers": [(b"x-reason", b"policy")],
        },
        {"type": "websocket.http.response.body", "body": b"denied", "more_body": True},
        {"type": "websocket.http.response.body", "body": b" by policy", "more_body": True},
        {"type": "websocket.http.response.body", "body": b"", "more_body": False},
    ]
    assert events == ["body entered", "body closed", "background"]


@pytest.mark.anyio
async def test_websocket_denial_with_a_failed_resolver_is_a_500_denial() -> None:
    response = HeaderFirstStreamingResponse(
        TrackedBody(b"a"), header_resolver=resolver_of({"x-bad": "\r"})
    )
    recorder = await call(response, websocket_scope())
    assert sent(recorder) == [
        {**message, "type": "websocket." + message["type"]}
        for message in plain_error(500, ERROR_500)
    ]


# --- drop-in parity with Starlette's StreamingResponse ---------------------------------


async def _bytes_chunks() -> AsyncIterator[bytes]:
    yield b"a"
    yield b""
    yield b"bc"


async def _str_chunks() -> AsyncIterator[str]:
    yield "héllo"
    yield " wörld"


async def _memoryview_chunks() -> AsyncIterator[memoryview]:
    yield memoryview(b"abc")


def _sync_chunks() -> Iterator[str | bytes]:
    yield "x"
    yield b"y"


CONTENT: dict[str, Callable[[], Any]] = {
    "async-bytes": _bytes_chunks,
    "async-str": _str_chunks,
    "async-memoryview": _memoryview_chunks,
    "sync-generator": _sync_chunks,
    "sync-list": lambda: [b"a", "b"],
    "empty": lambda: [],
}

SCOPES: dict[str, Callable[[], Scope]] = {
    "spec-2.3": lambda: http_scope(spec_version="2.3"),
    "spec-2.4": lambda: http_scope(spec_version="2.4"),
    "no-asgi-key": lambda: {k: v for k, v in http_scope().items() if k != "asgi"},
    "websocket": websocket_scope,
}


async def _run(response: StreamingResponse, scope: Scope, receive: Receive) -> list[Message]:
    return sent(await call(response, scope, receive))


@pytest.mark.anyio
@pytest.mark.parametrize("content", list(CONTENT))
@pytest.mark.parametrize("scope_kind", list(SCOPES))
async def test_without_options_sends_exactly_what_starlette_sends(
    content: str, scope_kind: str
) -> None:
    ran: list[str] = []
    results = []
    for cls in (StreamingResponse, HeaderFirstStreamingResponse):
        response = cls(
            CONTENT[content](),
            status_code=201,
            headers={"x-own": "1"},
            media_type="text/plain",
            background=BackgroundTask(ran.append, cls.__name__),
        )
        results.append(await _run(response, SCOPES[scope_kind](), receive_nothing()))
    assert results[0] == results[1]
    assert results[1][0]["headers"] == [(b"x-own", b"1"), TEXT]
    assert ran == ["StreamingResponse", "HeaderFirstStreamingResponse"]


@pytest.mark.anyio
async def test_str_chunks_are_encoded_with_the_response_charset() -> None:
    class Latin1(StreamingResponse):
        charset = "latin-1"

    class Latin1HeaderFirst(HeaderFirstStreamingResponse):
        charset = "latin-1"

    theirs = await call(Latin1(_str_chunks(), media_type="text/plain"))
    ours = await call(Latin1HeaderFirst(_str_chunks(), media_type="text/plain"))
    assert sent(ours) == sent(theirs)
    assert ours.body == "héllo wörld".encode("latin-1")
    assert ours.headers == [(b"content-type", b"text/plain; charset=latin-1")]

    peeked = await call(
        Latin1HeaderFirst(_str_chunks(), media_type="text/plain", peek_first_chunk=True)
    )
    assert sent(peeked) == sent(theirs)


@pytest.mark.anyio
@pytest.mark.parametrize("peek", [False, True])
async def test_memoryview_chunks_pass_through_unchanged(peek: bool) -> None:
    view = memoryview(b"abc")

    async def chunks() -> AsyncIterator[memoryview]:
        yield view
        yield view

    recorder = await call(HeaderFirstStreamingResponse(chunks(), peek_first_chunk=peek))
    bodies = [message["body"] for message in sent(recorder)[1:3]]
    assert all(body is view for body in bodies)


@pytest.mark.anyio
@SPECS
async def test_exception_mid_stream_matches_starlette(spec: str) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"a"
        raise ValueError("upstream broke")

    results = []
    for cls in (StreamingResponse, HeaderFirstStreamingResponse):
        recorder = Recorder()
        with pytest.raises(ValueError, match=r"^upstream broke$") as info:
            await call(cls(failing()), http_scope(spec_version=spec), send=recorder)
        results.append((sent(recorder), type(info.value)))
    assert results[0] == results[1]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("version", "listens"), [("2", True), ("2.3.9", True), ("2.4.1", False), ("3", False)]
)
async def test_spec_version_is_read_as_starlette_reads_it(version: str, listens: bool) -> None:
    received: list[str] = []

    async def receive() -> Message:
        received.append("receive")
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    results = []
    for cls in (StreamingResponse, HeaderFirstStreamingResponse):
        received.clear()
        recorder = await call(cls(_bytes_chunks()), http_scope(spec_version=version), receive)
        results.append((sent(recorder), bool(received)))
    assert results[0] == results[1]
    assert results[1][1] is listens


# Each divergence listed in the module docstring of `_response.py`, pinned against Starlette.


@pytest.mark.anyio
async def test_divergence_head_does_not_iterate_the_body() -> None:
    theirs = await call(StreamingResponse(_bytes_chunks()), http_scope("HEAD"))
    assert sent(theirs) == [start(200, []), chunk(b"a"), chunk(b""), chunk(b"bc"), END]
    ours = await call(HeaderFirstStreamingResponse(_bytes_chunks()), http_scope("HEAD"))
    assert sent(ours) == [start(200, []), END]


@pytest.mark.anyio
async def test_divergence_the_body_iterator_is_closed_when_the_client_leaves() -> None:
    theirs_events: list[str] = []
    theirs_body = tracked(theirs_events, b"a", b"b")
    with pytest.raises(ClientDisconnect):
        await call(
            StreamingResponse(theirs_body), http_scope(spec_version="2.4"), send=LeavingClient(1)
        )
    assert theirs_events == ["body entered"]  # left suspended for the garbage collector
    await theirs_body.aclose()

    ours_events: list[str] = []
    with pytest.raises(ClientDisconnect):
        await call(
            HeaderFirstStreamingResponse(tracked(ours_events, b"a", b"b")),
            http_scope(spec_version="2.4"),
            send=LeavingClient(1),
        )
    assert ours_events == ["body entered", "body closed"]


@pytest.mark.anyio
async def test_divergence_headers_are_validated_before_sending() -> None:
    headers = {"x-bad": "a\r\nx-injected: 1"}
    theirs = await call(StreamingResponse(_bytes_chunks(), headers=headers))
    assert theirs.headers == [(b"x-bad", b"a\r\nx-injected: 1")]
    ours = await call(HeaderFirstStreamingResponse(_bytes_chunks(), headers=headers))
    assert sent(ours) == plain_error(500, ERROR_500)


@pytest.mark.anyio
async def test_divergence_disconnect_is_watched_on_spec_2_4_only_while_the_head_is_held() -> None:
    received: list[str] = []

    def counting(receive: Receive, name: str) -> Receive:
        async def wrapped() -> Message:
            received.append(name)
            return await receive()

        return wrapped

    scope = http_scope(spec_version="2.4")
    await call(StreamingResponse(_bytes_chunks()), scope, counting(receive_nothing(), "theirs"))
    await call(
        HeaderFirstStreamingResponse(_bytes_chunks()), scope, counting(receive_nothing(), "plain")
    )
    ours = await call(
        HeaderFirstStreamingResponse(_bytes_chunks(), header_resolver=resolver_of({})),
        scope,
        counting(receive_nothing(), "held"),
    )
    assert received == ["held"]
    assert sent(ours) == [start(200, []), chunk(b"a"), chunk(b""), chunk(b"bc"), END]
    # ...and a client that leaves while the head is held cancels the resolver: see
    # test_disconnect_while_resolving_cancels_the_resolver_and_sends_nothing.


@pytest.mark.anyio
async def test_divergence_background_runs_after_an_error_response() -> None:
    ran: list[str] = []
    response = HeaderFirstStreamingResponse(
        _bytes_chunks(),
        header_resolver=resolver_of({"x-bad": "\n"}),
        background=BackgroundTask(ran.append, "background"),
    )
    recorder = await call(response)
    assert recorder.status == 500
    assert ran == ["background"]


@pytest.mark.anyio
async def test_early_error_handler_response_without_a_body_gives_the_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    response = HeaderFirstStreamingResponse(
        TrackedBody(error=RuntimeError("upstream")),
        peek_first_chunk=True,
        early_error_handler=lambda exc: StreamingResponse(iter([b"never sent"]), 429),
    )
    recorder = await call(response, http_scope(path="/p"))
    assert recorder.status == 502
    assert recorder.body == DEFAULT_502
    assert (
        "early_error_handler returned StreamingResponse for /p, which has no body; answered 502"
        in caplog.text
    )


# --- one task iterates, and closes, the body -------------------------------------------

_span: contextvars.ContextVar[str | None] = contextvars.ContextVar("span", default=None)


def _span_body(log: list[object], *, endless: bool = False) -> AsyncIterator[str]:
    # Sets a context variable across its yields, as a tracing span around an upstream
    # call does; resetting it fails if the generator is resumed in another context.
    async def body() -> AsyncIterator[str]:
        token = _span.set("llm-call")
        try:
            for i in range(3):
                log.append(_span.get())
                yield f"chunk{i}\n"
            while endless:
                yield "more\n"
        finally:
            try:
                _span.reset(token)
                log.append("reset ok")
            except ValueError:
                log.append("reset failed")

    return body()


@pytest.mark.anyio
@SPECS
async def test_a_peeked_body_runs_in_one_context_from_first_chunk_to_close(spec: str) -> None:
    log: list[object] = []
    response = HeaderFirstStreamingResponse(
        _span_body(log), peek_first_chunk=True, header_resolver=resolver_of({"x-a": "1"})
    )
    recorder = await call(response, http_scope(spec_version=spec))
    assert recorder.body == b"chunk0\nchunk1\nchunk2\n"
    assert log == ["llm-call", "llm-call", "llm-call", "reset ok"]


@pytest.mark.anyio
@SPECS
async def test_a_body_cut_off_by_a_disconnect_is_closed_in_its_own_context(spec: str) -> None:
    log: list[object] = []
    response = HeaderFirstStreamingResponse(
        _span_body(log, endless=True), header_resolver=resolver_of({"x-a": "1"})
    )
    if spec == "2.4":
        recorder = Recorder()
        sends = 0

        async def send(message: Message) -> None:
            nonlocal sends
            sends += 1
            if sends > 3:  # the client leaves after the head and two chunks
                raise OSError("connection closed")
            await recorder(message)

        with pytest.raises(ClientDisconnect):
            await response(http_scope(spec_version=spec), receive_nothing(), send)
    else:

        async def slow_send(message: Message) -> None:
            await anyio.sleep(0.01)  # the client leaves while a send is in flight
            await recorder(message)

        recorder = Recorder()
        await response(http_scope(spec_version=spec), receive_disconnect_after(0.05), slow_send)
    assert log[-1] == "reset ok"


@pytest.mark.anyio
@SPECS
async def test_no_head_goes_out_when_the_client_left_during_a_shielded_resolver(
    spec: str,
) -> None:
    async def resolver() -> dict[str, int]:
        with anyio.CancelScope(shield=True):  # e.g. a limiter write that must not be torn
            await anyio.sleep(0.2)
        return {"x-ratelimit-remaining-requests": 7}

    body = TrackedBody(b"hello")
    response = HeaderFirstStreamingResponse(body, header_resolver=resolver)
    recorder = await call(response, http_scope(spec_version=spec), receive_disconnect_after(0.05))
    assert recorder.messages == []
    assert (body.pulls, body.closes) == (0, 1)


@pytest.mark.anyio
@SPECS
async def test_a_peeked_first_chunk_that_cannot_be_encoded_is_an_early_error(spec: str) -> None:
    async def body() -> AsyncIterator[Any]:
        yield {"not": "a chunk"}

    seen: list[object] = []

    async def resolver(first: object) -> dict[str, str]:
        seen.append(first)
        return {"x-a": "1"}

    response = HeaderFirstStreamingResponse(body(), peek_first_chunk=True, header_resolver=resolver)
    recorder = await call(response, http_scope(spec_version=spec))
    assert recorder.status == 502
    assert (b"x-a", b"1") in recorder.headers
    assert seen == [None]


@pytest.mark.anyio
@SPECS
async def test_a_peeked_body_may_hold_a_deadline_across_its_yields(spec: str) -> None:
    async def body() -> AsyncIterator[bytes]:
        with anyio.fail_after(60):  # a deadline over the whole upstream stream
            yield b"a"
            yield b"b"

    response = HeaderFirstStreamingResponse(
        body(), peek_first_chunk=True, header_resolver=resolver_of({"x-late": "1"})
    )
    recorder = await call(response, http_scope(spec_version=spec))
    assert sent(recorder) == [start(200, [(b"x-late", b"1")]), chunk(b"a"), chunk(b"b"), END]


@pytest.mark.anyio
@SPECS
async def test_no_head_goes_out_when_the_request_is_cancelled_during_a_shielded_resolver(
    spec: str,
) -> None:
    async def resolver() -> dict[str, str]:
        with anyio.CancelScope(shield=True):  # e.g. a limiter write that must not be torn
            await anyio.sleep(0.1)
        return {"x-late": "1"}

    body = TrackedBody(b"a")
    recorder = Recorder()
    # A request-timeout middleware around the app, or the server cancelling the request.
    with anyio.move_on_after(0.02) as outer:
        await HeaderFirstStreamingResponse(body, header_resolver=resolver)(
            http_scope(spec_version=spec), receive_nothing(), recorder
        )
    assert outer.cancelled_caught
    assert recorder.messages == []
    assert (body.pulls, body.closes) == (0, 1)
