"""`HeaderFirstEventSourceResponse`'s head: resolved and late headers, HEAD, websocket denial,
the first-event peek and early errors (a 502, never a 200 event stream).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping

import anyio
import anyio.to_thread
import pytest
from starlette.background import BackgroundTask

from header_first_stream import HeaderFirstEventSourceResponse

from ._asgi import Recorder, call, events, http_scope, scope_with_request_id, websocket_scope
from ._expect import SPECS, SSE_HEADERS, WAIT

# --- the head: resolver, HEAD, websocket, background -------------------------------------


@pytest.mark.anyio
@SPECS
async def test_resolved_and_request_late_headers_are_in_the_sse_head(spec: str) -> None:
    async def resolver() -> Mapping[str, str | int]:
        return {"x-ratelimit-remaining-requests": 99}

    scope = scope_with_request_id("r-1", spec_version=spec)
    response = HeaderFirstEventSourceResponse(events("hi"), header_resolver=resolver)
    recorder = await call(response, scope)
    assert recorder.head == {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            *SSE_HEADERS,
            (b"x-request-id", b"r-1"),
            (b"x-ratelimit-remaining-requests", b"99"),
        ],
    }
    assert recorder.body == b"data: hi\r\n\r\n"


@pytest.mark.anyio
@SPECS
async def test_head_sends_the_get_head_and_never_starts_the_stream(spec: str) -> None:
    pulled: list[str] = []

    async def body() -> AsyncGenerator[str]:
        pulled.append("started")  # pragma: no cover
        yield "never"  # pragma: no cover

    async def resolver(first: object) -> Mapping[str, str]:
        assert first is None  # HEAD: nothing was pulled
        return {"x-model": "m"}

    ran: list[str] = []

    async def background() -> None:
        ran.append("background")

    iterator = body()
    response = HeaderFirstEventSourceResponse(
        iterator,
        ping=0.01,
        header_resolver=resolver,
        peek_first_chunk=True,
        background=BackgroundTask(background),
    )
    with anyio.fail_after(WAIT):
        recorder = await call(response, http_scope("HEAD", spec_version=spec))
    await anyio.sleep(0.05)  # a ping task, had one started, would have sent by now
    assert [m for _, m in recorder.messages] == [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*SSE_HEADERS, (b"x-model", b"m")],
        },
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]
    assert pulled == []
    with pytest.raises(StopAsyncIteration):  # closed: it can never produce anything again
        await anext(iterator)
    assert ran == ["background"]


@pytest.mark.anyio
async def test_a_websocket_scope_gets_the_events_as_a_denial_response() -> None:
    response = HeaderFirstEventSourceResponse(events("x"), ping=0)
    recorder = await call(response, websocket_scope())
    assert recorder.types == [
        "websocket.http.response.start",
        "websocket.http.response.body",
        "websocket.http.response.body",
    ]
    assert recorder.body == b"data: x\r\n\r\n"


# --- peek and early errors ---------------------------------------------------------------


@pytest.mark.anyio
@SPECS
async def test_with_peek_the_resolver_gets_the_first_event_as_yielded(spec: str) -> None:
    seen: list[object] = []
    first = {"data": '{"model":"gpt-x"}', "event": "chunk"}

    async def resolver(item: object) -> Mapping[str, str]:
        seen.append(item)
        return {"x-model": "gpt-x"}

    response = HeaderFirstEventSourceResponse(
        events(first, "done"), header_resolver=resolver, peek_first_chunk=True
    )
    recorder = await call(response, http_scope(spec_version=spec))
    assert seen == [first]
    assert seen[0] is first
    assert recorder.headers == [*SSE_HEADERS, (b"x-model", b"gpt-x")]
    assert recorder.body == b'event: chunk\r\ndata: {"model":"gpt-x"}\r\n\r\ndata: done\r\n\r\n'


@pytest.mark.anyio
@SPECS
async def test_a_first_event_that_cannot_be_encoded_is_a_502_not_a_200(spec: str) -> None:
    async def body() -> AsyncIterator[dict[str, str]]:
        yield {"dat": "a typo: not a ServerSentEvent argument"}

    response = HeaderFirstEventSourceResponse(body(), ping=0, peek_first_chunk=True)
    recorder = await call(response, http_scope(spec_version=spec))
    assert recorder.status == 502
    assert recorder.body.startswith(b'{"error":{"message":"The upstream service failed')


@pytest.mark.anyio
@SPECS
async def test_an_error_before_the_first_event_is_a_502_not_a_200_event_stream(spec: str) -> None:
    async def body() -> AsyncIterator[str]:
        raise ConnectionError("upstream refused")
        yield "never"  # pragma: no cover

    async def resolver(item: object) -> Mapping[str, str]:
        return {"x-ratelimit-remaining-requests": "3"}

    response = HeaderFirstEventSourceResponse(
        body(), ping=0.01, header_resolver=resolver, peek_first_chunk=True
    )
    recorder = await call(response, http_scope(spec_version=spec))
    body_bytes = (
        b'{"error":{"message":"The upstream service failed before sending a response.",'
        b'"type":"upstream_error","code":502}}'
    )
    assert [m for _, m in recorder.messages] == [
        {
            "type": "http.response.start",
            "status": 502,
            "headers": [
                (b"content-length", str(len(body_bytes)).encode()),
                (b"content-type", b"application/json"),
                (b"x-ratelimit-remaining-requests", b"3"),
            ],
        },
        {"type": "http.response.body", "body": body_bytes, "more_body": False},
    ]


@pytest.mark.anyio
@SPECS
async def test_an_error_after_the_first_event_propagates_unwrapped_and_closes_the_stream(
    spec: str,
) -> None:
    closed: list[bool] = []

    async def body() -> AsyncIterator[str]:
        try:
            yield "one"
            raise RuntimeError("upstream broke mid-stream")
        finally:
            closed.append(True)

    response = HeaderFirstEventSourceResponse(body(), ping=10)
    recorder = Recorder()
    with pytest.raises(RuntimeError, match="upstream broke mid-stream"):
        await call(response, http_scope(spec_version=spec), send=recorder)
    assert recorder.body == b"data: one\r\n\r\n"
    assert recorder.types == ["http.response.start", "http.response.body"]
    assert closed == [True]
