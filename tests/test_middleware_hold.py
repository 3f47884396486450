"""`HeaderFirstMiddleware` holds an idle stream's head for ``head_hold_timeout`` at most.

A stream that sends its head and then nothing (long polling, a quiet SSE channel, a slow
first token) gets its head when the hold expires, with the late headers added until then;
headers added later are refused (``False``, a WARNING naming them). A response of ours,
which decided its head with the late headers itself, is not held at all. Tier 1 records the
messages; tier 3 reads an idle stream's head from real servers with a raw socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from header_first_stream import (
    HeaderFirstEventSourceResponse,
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
    late_headers,
)

from ._asgi import START, Recorder, body, http_scope, receive_nothing, resolver_of, sent
from ._expect import WAIT, logged
from ._raw_http import http1_head_only
from ._servers import serve

HOLD = 0.05
"""The hold of the tier-1 tests, in seconds: short, as only its expiry is waited for."""


class HeadWatcher(Recorder):
    """Records like `Recorder`, and sets `head_out` when the head went out."""

    def __init__(self) -> None:
        super().__init__()
        self.head_out = anyio.Event()

    async def __call__(self, message: Message) -> None:
        await super().__call__(message)
        if message["type"] == "http.response.start":
            self.head_out.set()


async def run_beside(app: ASGIApp, recorder: HeadWatcher, then: anyio.Event) -> None:
    """Run ``app`` until the head went out, set ``then``, and wait for the app to return."""
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as group:

            async def respond() -> None:
                await app(http_scope(), receive_nothing(), recorder)

            group.start_soon(respond)
            await recorder.head_out.wait()
            then.set()


# --- an idle stream's head --------------------------------------------------------------


@pytest.mark.anyio
async def test_an_idle_streams_head_goes_out_when_the_hold_expires_with_the_late_headers(
    logs: pytest.LogCaptureFixture,
) -> None:
    head_seen = anyio.Event()
    added_late: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().add("x-before-start", "1")
        await send(START)
        late_headers().add("x-while-held", "1")
        await head_seen.wait()  # idle: no body until the client saw the head
        added_late.append(late_headers().add("x-too-late", "1"))
        await send(body(b"data"))

    recorder = HeadWatcher()
    await run_beside(HeaderFirstMiddleware(app, head_hold_timeout=HOLD), recorder, head_seen)
    assert recorder.messages[0][0] >= HOLD  # held until the hold expired, no longer
    assert sent(recorder) == [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"x-own", b"1"), (b"x-before-start", b"1"), (b"x-while-held", b"1")],
        },
        body(b"data"),
    ]
    assert added_late == [False]
    assert logged(logs) == [
        (
            "WARNING",
            "late headers ['x-too-late'] for / were added after the response head was sent "
            "and are not sent; add them before the response starts",
        )
    ]


@pytest.mark.anyio
async def test_an_app_that_returns_after_its_head_went_out_on_expiry_gets_a_final_body() -> None:
    head_seen = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        await head_seen.wait()

    recorder = HeadWatcher()
    await run_beside(HeaderFirstMiddleware(app, head_hold_timeout=HOLD), recorder, head_seen)
    assert sent(recorder) == [START, body(b"")]


@pytest.mark.anyio
async def test_a_stream_that_ends_after_expiry_is_passed_on_and_not_ended_twice() -> None:
    head_seen = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        await head_seen.wait()
        await send(body(b"a", more=True))
        await send(body(b"b"))

    recorder = HeadWatcher()
    await run_beside(HeaderFirstMiddleware(app, head_hold_timeout=HOLD), recorder, head_seen)
    assert sent(recorder) == [START, body(b"a", more=True), body(b"b")]


# --- a head of ours is not held ---------------------------------------------------------


async def idle_until(event: anyio.Event) -> AsyncIterator[bytes]:
    await event.wait()
    yield b"data: late\r\n\r\n"


class OwnFraming(HeaderFirstStreamingResponse):
    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for item in self.body_iterator:
            await send(body(item.encode() if isinstance(item, str) else bytes(item), more=True))
        await send(body(b""))


OURS: dict[str, Callable[[AsyncIterator[bytes]], ASGIApp]] = {
    "HeaderFirstStreamingResponse": lambda idle: HeaderFirstStreamingResponse(idle),
    "with a resolver": lambda idle: HeaderFirstStreamingResponse(
        idle, header_resolver=resolver_of({"x-resolved": "1"})
    ),
    "stream_response override": lambda idle: OwnFraming(idle),
    "HeaderFirstEventSourceResponse": lambda idle: HeaderFirstEventSourceResponse(idle, ping=0),
}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", OURS)
async def test_a_head_our_response_decided_passes_at_once_however_long_the_hold(
    kind: str,
) -> None:
    # `None` holds a head until the first body message: only "ours decided it" lets it go.
    head_seen = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers(scope).add("x-late", "1")
        await OURS[kind](idle_until(head_seen))(scope, receive, send)

    recorder = HeadWatcher()
    await run_beside(HeaderFirstMiddleware(app, head_hold_timeout=None), recorder, head_seen)
    assert sent(recorder)[0]["type"] == "http.response.start"
    assert (b"x-late", b"1") in recorder.headers
    assert sent(recorder)[1] == body(b"data: late\r\n\r\n", more=True)


# --- tier 3: real servers ---------------------------------------------------------------

REAL_HOLD = 0.2
"""The hold on real servers, in seconds."""


async def quiet() -> AsyncIterator[bytes]:
    await anyio.sleep(WAIT)  # quiet for longer than the client waits for the head
    yield b"never read"


async def idle_stream(request: Request) -> Response:
    late_headers(request).add("x-late", "1")
    return StreamingResponse(quiet(), media_type="text/event-stream")


@pytest.fixture(scope="module", params=["uvicorn-h11", "hypercorn-trio"])
def idle_server(request: pytest.FixtureRequest) -> Iterator[str]:
    app = HeaderFirstMiddleware(
        Starlette(routes=[Route("/idle", idle_stream)]), head_hold_timeout=REAL_HOLD
    )
    with serve(app, request.param) as url:
        yield url


def test_a_real_servers_client_reads_an_idle_streams_head_once_the_hold_expired(
    idle_server: str,
) -> None:
    head, took = http1_head_only(idle_server, "/idle", within=REAL_HOLD + WAIT / 2)
    assert took >= REAL_HOLD
    assert head.status == 200
    assert head.without(b"date", b"server") == [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"x-late", b"1"),
        (b"transfer-encoding", b"chunked"),
    ]
