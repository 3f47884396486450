"""`HeaderFirstStreamingResponse` without options is Starlette's `StreamingResponse`; each
divergence that the module docstring lists is pinned here, one test each.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope

from header_first_stream import HeaderFirstStreamingResponse

from ._asgi import (
    END,
    LeavingClient,
    Recorder,
    call,
    chunk,
    http_scope,
    receive_nothing,
    resolver_of,
    sent,
    start,
    tracked,
    websocket_scope,
)
from ._expect import ERROR_500, SPECS, TEXT, plain_error

# --- drop-in parity with Starlette's StreamingResponse ---------------------------------


async def _bytes_chunks() -> AsyncIterator[bytes]:
    yield b"a"
    yield b""
    yield b"bc"


async def _bytes_chunks_after_a_wait() -> AsyncIterator[bytes]:
    await anyio.sleep(0.01)  # a listener started beside the body runs meanwhile
    async for item in _bytes_chunks():
        yield item


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
        recorder = await call(
            cls(_bytes_chunks_after_a_wait()), http_scope(spec_version=version), receive
        )
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
    # A resolver that returns without waiting gives the client no time to leave: the
    # listener does not run for it.
    at_once = await call(
        HeaderFirstStreamingResponse(_bytes_chunks(), header_resolver=resolver_of({})),
        scope,
        counting(receive_nothing(), "at once"),
    )
    ours = await call(
        HeaderFirstStreamingResponse(_bytes_chunks(), header_resolver=resolver_of({}, waits=True)),
        scope,
        counting(receive_nothing(), "held"),
    )
    assert received == ["held"]
    assert sent(at_once) == sent(ours)
    assert sent(ours) == [start(200, []), chunk(b"a"), chunk(b""), chunk(b"bc"), END]


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
