"""First-chunk peek and early errors of `HeaderFirstStreamingResponse`, at the ASGI level.

Every test runs on asyncio and trio, and on both ASGI disconnect paths: spec 2.3 (a
listener task for the whole response) and spec 2.4 (a listener only while the head is
held back).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping

import anyio
import httpx
import pytest
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import Message

from header_first_stream import HeaderFirstStreamingResponse, late_headers
from header_first_stream._types import Chunk

from ._asgi import (
    END,
    Recorder,
    TrackedBody,
    call,
    chunk,
    from_upstream_status,
    http_scope,
    receive_disconnect_after,
    resolver_of,
    scope_with_request_id,
    sent,
    start,
)
from ._expect import DEFAULT_502, ERROR_500, SPECS, TEXT, logged, logged_exception, plain_error

pytestmark = pytest.mark.anyio


class LoggingRecorder(Recorder):
    """A `Recorder` that also writes each send into a log shared with the app."""

    def __init__(self, log: list[object]) -> None:
        super().__init__()
        self.log = log

    async def __call__(self, message: Message) -> None:
        self.log.append(("send", message["type"], message.get("body")))
        await super().__call__(message)


def upstream_429() -> httpx.HTTPStatusError:
    """What `raise_for_status()` raises for an upstream that rate-limited the request."""
    request = httpx.Request("POST", "https://upstream.invalid/v1/chat/completions")
    response = httpx.Response(
        429,
        headers={"retry-after": "7", "x-upstream-secret": "do-not-forward"},
        json={"error": "rate limited"},
        request=request,
    )
    try:
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        return exc
    raise AssertionError("raise_for_status() did not raise for a 429")  # pragma: no cover


@SPECS
async def test_peek_pulls_the_first_chunk_before_the_head_and_the_resolver_sees_it(
    spec: str,
) -> None:
    log: list[object] = []

    async def body() -> AsyncIterator[bytes]:
        log.append("pull 1")
        yield b'{"model":"gpt-x"}\n'
        log.append("pull 2")
        yield b"rest\n"

    async def resolver(first: Chunk | None) -> Mapping[str, str]:
        log.append(("resolver", first))
        assert isinstance(first, bytes)
        return {"x-model": first.split(b'"')[3].decode()}

    response = HeaderFirstStreamingResponse(
        body(), media_type="text/plain", header_resolver=resolver, peek_first_chunk=True
    )
    recorder = await call(response, http_scope(spec_version=spec), send=LoggingRecorder(log))

    assert log == [
        "pull 1",
        ("resolver", b'{"model":"gpt-x"}\n'),
        ("send", "http.response.start", None),
        ("send", "http.response.body", b'{"model":"gpt-x"}\n'),
        "pull 2",
        ("send", "http.response.body", b"rest\n"),
        ("send", "http.response.body", b""),
    ]
    assert recorder.status == 200
    assert recorder.headers == [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"x-model", b"gpt-x"),
    ]


@SPECS
async def test_an_early_error_handler_turns_an_upstream_429_into_a_429_with_retry_after(
    spec: str,
) -> None:
    async def body() -> AsyncIterator[bytes]:
        raise upstream_429()
        yield b"never"  # pragma: no cover

    async def resolver(first: Chunk | None) -> Mapping[str, str | int]:
        return {"x-ratelimit-limit-requests": 100, "x-ratelimit-remaining-requests": 0}

    scope = scope_with_request_id("req-2", spec_version=spec)
    response = HeaderFirstStreamingResponse(
        body(),
        media_type="text/event-stream",
        header_resolver=resolver,
        peek_first_chunk=True,
        early_error_handler=from_upstream_status,
    )
    recorder = await call(response, scope)

    expected_body = b'{"error":{"message":"rate limited upstream","type":"rate_limit","code":429}}'
    assert recorder.status == 429
    assert recorder.headers == [
        (b"retry-after", b"7"),
        (b"content-length", str(len(expected_body)).encode()),
        (b"content-type", b"application/json"),
        (b"x-request-id", b"req-2"),
        (b"x-ratelimit-limit-requests", b"100"),
        (b"x-ratelimit-remaining-requests", b"0"),
    ]
    assert recorder.body == expected_body
    assert recorder.types == ["http.response.start", "http.response.body"]


@SPECS
async def test_a_disconnect_while_waiting_for_the_first_chunk_closes_the_iterator_and_sends_nothing(
    spec: str,
) -> None:
    times: dict[str, float] = {}
    resolver_calls: list[Chunk | None] = []

    async def body() -> AsyncGenerator[bytes]:
        times["started"] = time.monotonic()
        try:
            await anyio.sleep(30)  # an upstream that has not produced its first token
            yield b"never"  # pragma: no cover
        finally:
            times["finally"] = time.monotonic()

    async def resolver(first: Chunk | None) -> Mapping[str, str]:
        resolver_calls.append(first)  # pragma: no cover
        return {}  # pragma: no cover

    disconnect = receive_disconnect_after(0.05)

    async def receive() -> Message:
        message = await disconnect()
        times["disconnect"] = time.monotonic()
        return message

    iterator = body()
    response = HeaderFirstStreamingResponse(
        iterator, header_resolver=resolver, peek_first_chunk=True
    )
    with anyio.fail_after(5):
        recorder = await call(response, http_scope(spec_version=spec), receive)

    assert recorder.messages == []
    assert resolver_calls == []
    assert times["started"] < times["disconnect"] <= times["finally"]
    # "At once": no timer is involved, only the scheduling of the cancellation.
    assert times["finally"] - times["disconnect"] < 0.1
    with pytest.raises(StopAsyncIteration):  # closed: it can never produce anything again
        await anext(iterator)


@SPECS
async def test_the_peeked_first_chunk_is_sent_without_a_copy(spec: str) -> None:
    first = b"x" * 4096
    second = b"y" * 4096
    seen: list[Chunk | None] = []

    async def body() -> AsyncIterator[bytes]:
        yield first
        yield second

    async def resolver(chunk: Chunk | None) -> Mapping[str, str]:
        seen.append(chunk)
        return {}

    response = HeaderFirstStreamingResponse(body(), header_resolver=resolver, peek_first_chunk=True)
    recorder = await call(response, http_scope(spec_version=spec))

    assert seen[0] is first
    bodies = [m["body"] for _, m in recorder.messages[1:]]
    assert bodies[0] is first
    assert bodies[1] is second
    assert bodies[2] == b""


# --- peek_first_chunk and early errors -------------------------------------------------


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


@SPECS
async def test_exception_before_the_first_chunk_gives_the_default_502_with_late_headers(
    spec: str, logs: pytest.LogCaptureFixture
) -> None:
    scope = scope_with_request_id("req-1", path="/v1/messages", spec_version=spec)
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
    assert logged(logs) == [("ERROR", message)]
    assert logged_exception(logs, message) is error
    assert (body.pulls, body.closes) == (1, 1)


class RateLimited(Exception):
    pass


@SPECS
async def test_early_error_handler_response_keeps_its_headers_and_gets_late_ones(
    spec: str, logs: pytest.LogCaptureFixture
) -> None:
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
    assert logged(logs) == [
        ("INFO", "body iterator failed before its first chunk for /p: answered 429")
    ]


async def test_early_error_handler_returning_none_gives_the_default_502() -> None:
    response = HeaderFirstStreamingResponse(
        TrackedBody(error=RuntimeError("x")),
        peek_first_chunk=True,
        early_error_handler=lambda exc: None,
    )
    recorder = await call(response)
    assert recorder.status == 502
    assert recorder.body == DEFAULT_502


async def test_early_error_handler_that_raises_gives_the_default_502_and_is_logged(
    logs: pytest.LogCaptureFixture,
) -> None:
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
    assert logged_exception(logs, "early_error_handler failed for /p") is handler_error
    assert [level for level, _ in logged(logs)] == ["ERROR", "ERROR"]


async def test_early_error_handler_response_with_an_invalid_header_gives_the_default(
    logs: pytest.LogCaptureFixture,
) -> None:
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
    error = logged_exception(logs, "invalid header in the early error response for /p")
    assert "for 'x-bad': contains '\\r'" in str(error)


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


async def test_early_error_handler_response_without_a_body_gives_the_default(
    logs: pytest.LogCaptureFixture,
) -> None:
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
        in logs.text
    )
