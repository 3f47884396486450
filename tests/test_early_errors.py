"""First-chunk peek and early errors of `HeaderFirstStreamingResponse`, at the ASGI level.

Every test runs on asyncio and trio, and on both ASGI disconnect paths: spec 2.3 (a
listener task for the whole response) and spec 2.4 (a listener only while the head is
held back).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping

import anyio
import httpx
import pytest
from starlette.responses import JSONResponse, Response
from starlette.types import Message

from header_first_stream import HeaderFirstStreamingResponse, late_headers
from header_first_stream._types import Chunk

from ._asgi import Recorder, call, http_scope, receive_disconnect_after

pytestmark = pytest.mark.anyio

SPECS = pytest.mark.parametrize("spec", ["2.3", "2.4"])

DEFAULT_502_BODY = (
    b'{"error":{"message":"The upstream service failed before sending a response.",'
    b'"type":"upstream_error","code":502}}'
)


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


def from_upstream_status(exc: Exception) -> Response | None:
    """An app's `early_error_handler`: forward an upstream's status and retry-after."""
    if isinstance(exc, httpx.HTTPStatusError):
        return JSONResponse(
            {"error": {"message": "rate limited upstream", "type": "rate_limit", "code": 429}},
            status_code=exc.response.status_code,
            headers={"retry-after": exc.response.headers["retry-after"]},
        )
    return None  # pragma: no cover


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
async def test_an_iterator_failing_before_its_first_chunk_gives_the_default_502_with_late_headers(
    spec: str, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Chunk | None] = []

    async def body() -> AsyncIterator[bytes]:
        raise RuntimeError("connection refused by 10.0.0.7:8443 (internal detail)")
        yield b"never"  # pragma: no cover

    async def resolver(first: Chunk | None) -> Mapping[str, str | int]:
        seen.append(first)
        return {"x-ratelimit-remaining-requests": 41}

    scope = http_scope(spec_version=spec)
    late_headers(scope).add("x-request-id", "req-1")
    response = HeaderFirstStreamingResponse(
        body(), media_type="text/event-stream", header_resolver=resolver, peek_first_chunk=True
    )
    with caplog.at_level(logging.ERROR, logger="header_first_stream"):
        recorder = await call(response, scope)

    assert seen == [None]
    assert recorder.types == ["http.response.start", "http.response.body"]
    assert recorder.status == 502
    assert recorder.headers == [
        (b"content-length", str(len(DEFAULT_502_BODY)).encode()),
        (b"content-type", b"application/json"),
        (b"x-request-id", b"req-1"),
        (b"x-ratelimit-remaining-requests", b"41"),
    ]
    assert recorder.messages[-1][1] == {
        "type": "http.response.body",
        "body": DEFAULT_502_BODY,
        "more_body": False,
    }
    assert b"10.0.0.7" not in recorder.body
    assert [r.getMessage() for r in caplog.records] == [
        "body iterator failed before its first chunk for /"
    ]
    exc_info = caplog.records[0].exc_info
    assert exc_info is not None
    assert isinstance(exc_info[1], RuntimeError)


@SPECS
async def test_an_early_error_handler_turns_an_upstream_429_into_a_429_with_retry_after(
    spec: str,
) -> None:
    async def body() -> AsyncIterator[bytes]:
        raise upstream_429()
        yield b"never"  # pragma: no cover

    async def resolver(first: Chunk | None) -> Mapping[str, str | int]:
        return {"x-ratelimit-limit-requests": 100, "x-ratelimit-remaining-requests": 0}

    scope = http_scope(spec_version=spec)
    late_headers(scope).add("x-request-id", "req-2")
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
async def test_an_empty_iterator_gives_the_head_with_resolved_headers_and_an_empty_body(
    spec: str,
) -> None:
    seen: list[Chunk | None] = []

    async def body() -> AsyncIterator[bytes]:
        return
        yield b"never"  # pragma: no cover

    async def resolver(first: Chunk | None) -> Mapping[str, str]:
        seen.append(first)
        return {"x-cost": "0"}

    response = HeaderFirstStreamingResponse(
        body(), media_type="text/plain", header_resolver=resolver, peek_first_chunk=True
    )
    recorder = await call(response, http_scope(spec_version=spec))

    assert seen == [None]
    assert [m for _, m in recorder.messages] == [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"x-cost", b"0")],
        },
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]


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
