"""`HeaderFirstEventSourceResponse` on real uvicorn servers (h11 and httptools), behind a
gateway that relays an upstream's events, read by httpx and httpx-sse.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass

import anyio
import anyio.to_thread
import httpx
import pytest
from httpx_sse import aconnect_sse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from header_first_stream import HeaderFirstEventSourceResponse, late_headers

from ._asgi import from_upstream_status
from ._expect import WAIT
from ._servers import serve

# --- real servers --------------------------------------------------------------------------


class State:
    """What the server threads report to the test thread: events and times, per request id.

    `dict.setdefault` and `threading.Event` are safe across threads.
    """

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self.times: dict[str, float] = {}

    def event(self, name: str) -> threading.Event:
        return self._events.setdefault(name, threading.Event())

    def mark(self, name: str) -> None:
        self.times[name] = time.monotonic()
        self.event(name).set()


async def wait_for(event: threading.Event) -> None:
    assert await anyio.to_thread.run_sync(event.wait, WAIT), f"not set within {WAIT}s"


RATE_LIMITS: Mapping[str, str | int] = {
    "x-ratelimit-limit-requests": 100,
    "x-ratelimit-remaining-requests": 0,
}


def upstream_app(state: State) -> Starlette:
    """An LLM-like upstream: rate-limits, streams tokens, or never answers."""

    async def limited(request: Request) -> Response:
        return JSONResponse(
            {"error": {"message": "Rate limit reached", "type": "requests"}},
            status_code=429,
            headers={"retry-after": "7"},
        )

    async def tokens(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f'data: {{"token": {i}}}\n\n'.encode()

        return Response(b"".join([chunk async for chunk in body()]), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/limited", limited),
            Route("/tokens", tokens),
            Route("/hang", Hang(state)),
        ]
    )


class Hang:
    """An ASGI app that answers nothing until its client (the gateway) leaves."""

    def __init__(self, state: State) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = scope["query_string"].decode()
        self.state.mark(f"upstream-started-{request_id}")
        while (await receive())["type"] != "http.disconnect":
            pass
        self.state.mark(f"upstream-disconnected-{request_id}")


def gateway_app(upstream: str, state: State) -> Starlette:
    """A gateway that relays an upstream's events through HeaderFirstEventSourceResponse."""

    async def rate_limits(first: object) -> Mapping[str, str | int]:
        return RATE_LIMITS

    async def chat(request: Request) -> Response:
        request_id = request.query_params["id"]
        late_headers(request).add("x-request-id", request_id)

        async def relay() -> AsyncIterator[object]:
            state.mark(f"gateway-started-{request_id}")
            try:
                async with httpx.AsyncClient(timeout=WAIT) as client:
                    path = request.query_params["upstream"]
                    url = f"{upstream}/{path}?{request_id}"
                    async with client.stream("GET", url) as answer:
                        answer.raise_for_status()
                        async for line in answer.aiter_lines():
                            if line.startswith("data: "):
                                yield {"data": line.removeprefix("data: "), "event": "token"}
            finally:
                state.mark(f"gateway-finally-{request_id}")

        return HeaderFirstEventSourceResponse(
            relay(),
            header_resolver=rate_limits,
            peek_first_chunk=True,
            early_error_handler=from_upstream_status,
        )

    async def slow(request: Request) -> Response:
        async def body() -> AsyncIterator[str]:
            yield "first"
            await anyio.sleep(0.6)
            yield "second"

        return HeaderFirstEventSourceResponse(body(), ping=0.1)

    return Starlette(routes=[Route("/chat", chat), Route("/slow", slow)])


@dataclass
class Servers:
    gateway: str
    state: State


UVICORNS = ["uvicorn-h11", "uvicorn-httptools"]


@pytest.fixture(scope="module", params=UVICORNS)
def servers(request: pytest.FixtureRequest) -> Iterator[Servers]:
    state = State()
    with (
        serve(upstream_app(state), "uvicorn-h11") as upstream,
        serve(gateway_app(upstream, state), str(request.param)) as gateway,
    ):
        yield Servers(gateway, state)


@pytest.mark.anyio
async def test_server_an_upstream_429_reaches_the_client_as_429_with_retry_after_and_limits(
    servers: Servers,
) -> None:
    request_id = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=WAIT) as client:
        answer = await client.get(
            f"{servers.gateway}/chat", params={"upstream": "limited", "id": request_id}
        )
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "7"
    assert answer.headers["x-ratelimit-limit-requests"] == "100"
    assert answer.headers["x-ratelimit-remaining-requests"] == "0"
    assert answer.headers["x-request-id"] == request_id
    assert answer.headers["content-type"] == "application/json"
    assert answer.content == (
        b'{"error":{"message":"rate limited upstream","type":"rate_limit","code":429}}'
    )
    await wait_for(servers.state.event(f"gateway-finally-{request_id}"))


@pytest.mark.anyio
async def test_server_an_httpx_sse_client_sees_every_event_and_the_late_headers(
    servers: Servers,
) -> None:
    request_id = uuid.uuid4().hex
    async with (
        httpx.AsyncClient(timeout=WAIT) as client,
        aconnect_sse(
            client, "GET", f"{servers.gateway}/chat?upstream=tokens&id={request_id}"
        ) as source,
    ):
        received = [(sse.event, sse.data) async for sse in source.aiter_sse()]
        headers = source.response.headers
        status = source.response.status_code
    assert status == 200
    assert received == [("token", f'{{"token": {i}}}') for i in range(5)]
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    assert headers["x-accel-buffering"] == "no"
    assert headers["x-request-id"] == request_id
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["connection"] == "keep-alive"  # HTTP/1.1, as sse-starlette sends it


@pytest.mark.anyio
async def test_server_pings_arrive_on_a_slow_stream(servers: Servers) -> None:
    lines: list[str] = []
    async with (
        httpx.AsyncClient(timeout=WAIT) as client,
        client.stream("GET", f"{servers.gateway}/slow") as answer,
    ):
        async for line in answer.aiter_lines():
            lines.append(line)
    lines = [line for line in lines if line]
    assert lines[0] == "data: first"
    assert lines[-1] == "data: second"
    pings = lines[1:-1]
    assert len(pings) >= 2  # 0.6 s of silence with a ping every 0.1 s
    assert all(line.startswith(": ping - ") for line in pings)


@pytest.mark.anyio
async def test_server_a_disconnect_before_the_first_event_closes_the_upstream_generator_at_once(
    servers: Servers,
) -> None:
    request_id = uuid.uuid4().hex
    state = servers.state
    host, port = servers.gateway.removeprefix("http://").split(":")
    stream = await anyio.connect_tcp(host, int(port))
    try:
        await stream.send(
            f"GET /chat?upstream=hang&id={request_id} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        )
        # The gateway's generator is now waiting for the upstream's first byte.
        await wait_for(state.event(f"upstream-started-{request_id}"))
    finally:
        closed_at = time.monotonic()
        await stream.aclose()
    await wait_for(state.event(f"gateway-finally-{request_id}"))
    elapsed = state.times[f"gateway-finally-{request_id}"] - closed_at
    assert elapsed < 0.1, f"the generator's finally ran {elapsed * 1000:.0f} ms after the close"
    # ... and the upstream sees its request abandoned: no tokens generated for nobody.
    await wait_for(state.event(f"upstream-disconnected-{request_id}"))
