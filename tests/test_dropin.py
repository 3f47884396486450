"""Drop-in behaviour that Starlette users rely on without knowing it.

No message object or headers list is shared between responses (any middleware may change
what it is given: Starlette's own GZipMiddleware rewrites ``message["body"]`` in place),
scopes that Starlette accepts are accepted, a late header added after a head that nobody
asked about is reported, not lost, and a clean-up cut short says so.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from header_first_stream import (
    HeaderFirstEventSourceResponse,
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
    late_headers,
)
from header_first_stream._listen import FINAL_SEND_GRACE

from ._asgi import (
    END,
    LOGGER,
    Recorder,
    call,
    chunk,
    http_scope,
    receive_disconnect_after,
    sent,
    start,
    words,
)
from ._servers import serve

pytestmark = pytest.mark.anyio


class Mutating:
    """A send that, like GZipMiddleware, rewrites every message it is given in place."""

    def __init__(self) -> None:
        self.recorder = Recorder()

    async def __call__(self, message: Message) -> None:
        copy = {**message}
        if "headers" in copy:
            copy["headers"] = list(copy["headers"])
        await self.recorder(copy)
        if "body" in message:
            message["body"] = b"STRAY"
        if "headers" in message:
            message["headers"].append((b"x-stray", b"1"))


def responses() -> list[Any]:
    """One response of every kind this package sends, fresh each call."""

    async def ok() -> dict[str, str]:
        return {"x-a": "1"}

    async def fails() -> dict[str, str]:
        raise RuntimeError("limiter down")

    return [
        HeaderFirstStreamingResponse(words(b"a", b"b")),
        HeaderFirstStreamingResponse(words(b"a"), header_resolver=ok),
        HeaderFirstStreamingResponse(words(), peek_first_chunk=True),
        HeaderFirstStreamingResponse(words(b"a"), header_resolver=fails),
        HeaderFirstEventSourceResponse(words(b"data: e\r\n\r\n"), ping=0),
    ]


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_middleware_that_mutates_what_it_is_sent_changes_no_later_response(
    spec: str, method: str
) -> None:
    first = [await call_mutated(r, http_scope(method, spec_version=spec)) for r in responses()]
    again = [await call(r, http_scope(method, spec_version=spec)) for r in responses()]
    assert [sent(r) for r in again] == [sent(m.recorder) for m in first]
    assert all(b"STRAY" not in r.body and (b"x-stray", b"1") not in r.headers for r in again)


async def call_mutated(response: Any, scope: Scope) -> Mutating:
    mutating = Mutating()
    await call(response, scope, send=mutating)  # type: ignore[arg-type]
    return mutating


async def test_the_middlewares_own_final_message_is_not_shared() -> None:
    async def head_only(scope: Scope, receive: Receive, send: Send) -> None:
        await send(start(200, []))  # and returns without a body: the middleware ends it

    app = HeaderFirstMiddleware(head_only)
    mutating = Mutating()
    await call(app, http_scope(), send=mutating)  # type: ignore[arg-type]
    recorder = await call(app, http_scope())
    assert sent(recorder) == [start(200, []), END]


def gzip_app(response_class: type[StreamingResponse]) -> Starlette:
    async def stream(request: Request) -> StreamingResponse:
        return response_class(words(b"hello ", b"world"), media_type="text/plain")

    return Starlette(
        routes=[Route("/", stream)], middleware=[Middleware(GZipMiddleware, minimum_size=0)]
    )


async def test_gzip_responses_leave_no_bytes_in_a_later_plain_response() -> None:
    transport = httpx.ASGITransport(app=gzip_app(HeaderFirstStreamingResponse))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for _ in range(2):
            zipped = await client.get("/", headers={"accept-encoding": "gzip"})
            assert zipped.headers["content-encoding"] == "gzip"
            assert zipped.content == b"hello world"  # httpx decoded it
        plain = await client.get("/", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.content == b"hello world"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn runs on asyncio only
async def test_gzip_then_plain_on_a_real_uvicorn_gives_exact_bytes() -> None:
    with serve(gzip_app(HeaderFirstStreamingResponse), "uvicorn-httptools") as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for _ in range(2):
                raw = await client.get("/", headers={"accept-encoding": "gzip"})
                assert raw.headers["content-encoding"] == "gzip"
                assert raw.content == b"hello world"
            async with client.stream("GET", "/", headers={"accept-encoding": "gzip"}) as zipped:
                compressed = b"".join([part async for part in zipped.aiter_raw()])
            plain = await client.get("/", headers={"accept-encoding": "identity"})
    assert gzip.decompress(compressed) == b"hello world"
    assert plain.content == b"hello world"
    assert plain.headers["transfer-encoding"] == "chunked"


# --- scopes Starlette accepts -------------------------------------------------------------


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
async def test_a_scope_without_a_method_streams_as_starlette_does(spec: str) -> None:
    scope = http_scope(spec_version=spec)
    del scope["method"]
    ours = await call(HeaderFirstStreamingResponse(words(b"a", b"b")), scope)
    theirs = await call(StreamingResponse(words(b"a", b"b")), dict(scope))
    assert sent(ours) == sent(theirs) == [start(200, []), chunk(b"a"), chunk(b"b"), END]


@pytest.mark.parametrize("method", ["head", "Head", "HEAD"])
async def test_head_is_recognised_in_any_case(method: str) -> None:
    entered: list[str] = []

    async def endless() -> AsyncIterator[bytes]:
        entered.append("entered")
        while True:
            yield b"x"  # pragma: no cover - never iterated on HEAD

    recorder = await call(HeaderFirstStreamingResponse(endless()), http_scope(method))
    assert sent(recorder) == [start(200, []), END]
    assert entered == []


# --- a late header is never lost silently -------------------------------------------------


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
@pytest.mark.parametrize("sse", [False, True], ids=["streaming", "sse"])
async def test_a_late_header_after_an_untouched_head_is_refused_and_logged(
    spec: str, sse: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    scope = http_scope(path="/v1/chat", spec_version=spec)
    added: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"data: 1\r\n\r\n"
        added.append(late_headers(scope).add("x-ratelimit-remaining-tokens", 9))

    response: Any = (
        HeaderFirstEventSourceResponse(body(), ping=0)
        if sse
        else HeaderFirstStreamingResponse(body())
    )
    recorder = await call(response, scope)
    assert added == [False]
    assert all(name != b"x-ratelimit-remaining-tokens" for name, _ in recorder.headers)
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER] == [
        (
            "WARNING",
            "late headers ['x-ratelimit-remaining-tokens'] for /v1/chat were added after the "
            "response head was sent and are not sent; add them before the response starts",
        )
    ]


# --- the types code written for the peers checks ------------------------------------------


def test_the_sse_response_is_an_sse_starlette_response_and_a_starlette_one() -> None:
    response = HeaderFirstEventSourceResponse(words())
    assert isinstance(response, EventSourceResponse)
    assert isinstance(response, StreamingResponse)
    assert isinstance(response, HeaderFirstStreamingResponse)


# --- clean-up cut short -------------------------------------------------------------------


async def test_a_cleanup_that_swallows_its_deadline_is_logged_as_cut_short(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    finished: list[str] = []

    async def stubborn() -> AsyncIterator[bytes]:
        try:
            yield b"a"
            yield b"b"  # pragma: no cover - the client is gone by then
        finally:
            try:
                await anyio.sleep(10)
            except anyio.get_cancelled_exc_class():
                finished.append("swallowed")  # and ends: the deadline is not re-raised

    async def stuck_on_body(message: Message) -> None:
        if message["type"] == "http.response.body":
            await anyio.sleep_forever()  # a client that stopped reading, then leaves

    response = HeaderFirstStreamingResponse(stubborn())
    response.cleanup_timeout = 0.05
    with anyio.fail_after(5):
        await response(http_scope(), receive_disconnect_after(0.05), stuck_on_body)
    assert finished == ["swallowed"]
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER] == [
        ("WARNING", "closing the body iterator took over 0.05s")
    ]


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
async def test_a_final_send_that_stalls_after_the_client_left_is_cut_after_the_grace(
    spec: str,
) -> None:
    final_started = anyio.Event()

    async def stalls_on_the_end(message: Message) -> None:
        if message["type"] == "http.response.body" and not message["more_body"]:
            final_started.set()
            await anyio.sleep_forever()

    async def leaves_during_the_end() -> Message:
        await final_started.wait()
        return {"type": "http.disconnect"}

    response = HeaderFirstStreamingResponse(words(b"a"), end_on_shutdown=True)
    began = anyio.current_time()
    with anyio.fail_after(2):
        await response(http_scope(spec_version=spec), leaves_during_the_end, stalls_on_the_end)
    assert anyio.current_time() - began >= FINAL_SEND_GRACE
