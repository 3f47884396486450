"""The LLM gateway example (examples/gateway): an upstream that refuses, fails or streams,
and a client that leaves, on real servers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from examples.gateway.demo import Running, running, serve
from examples.gateway.probes import PROBES, create_key, ratelimit_headers
from examples.gateway.upstream import OVERLOADED_HEADERS, OVERLOADED_MODEL, create_upstream_app
from header_first_stream import HeaderFirstStreamingResponse

from ._gateway import JSON, TIMEOUT, _headers, _post

# -- upstream errors ----------------------------------------------------------------------

_OVERLOADED_CASES = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, False),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, True),
    ("/v1/embeddings", {"input": "hi"}, False),
    ("/v1/responses", {"input": "hi"}, True),
    ("/v1/messages", {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}, False),
    ("/v1/messages", {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}, True),
]


@pytest.mark.parametrize(
    ("path", "body", "stream"),
    _OVERLOADED_CASES,
    ids=[
        f"{path.rsplit('/', 1)[1]}-{'stream' if s else 'sync'}" for path, _, s in _OVERLOADED_CASES
    ],
)
def test_an_upstream_429_reaches_the_client_with_its_status_and_headers(
    fixed: Running, path: str, body: dict[str, Any], stream: bool
) -> None:
    key = create_key(fixed.gateway_url, models=())
    request = {**body, "model": OVERLOADED_MODEL, "stream": stream}

    with (
        httpx.Client(timeout=TIMEOUT) as client,
        client.stream(
            "POST",
            fixed.gateway_url + path,
            headers={"authorization": f"Bearer {key}"},
            json=request,
        ) as response,
    ):
        head = dict(response.headers)
        content = response.read()

    assert response.status_code == 429
    assert {name: head[name] for name in OVERLOADED_HEADERS} == OVERLOADED_HEADERS
    assert ratelimit_headers(response.headers) == _headers(5999, 99999)
    assert head["content-type"] == JSON
    error = json.loads(content)
    if path == "/v1/messages":
        assert error["type"] == "error"
        assert error["error"]["type"] == "rate_limit_error"
    else:
        assert error["error"]["code"] == "rate_limit_exceeded"


def test_an_unreachable_upstream_gives_502_with_the_headers_not_200() -> None:
    # A port that was free a moment ago: connecting to it is refused.
    with serve(create_upstream_app()) as gone:
        pass
    with running(fix=True, upstream_url=gone) as servers:
        key = create_key(servers.gateway_url)
        stream = _post(servers.gateway_url + PROBES[1].path, key, PROBES[1].body)
        sync = _post(servers.gateway_url + PROBES[0].path, key, PROBES[0].body)

    assert (stream.status_code, sync.status_code) == (502, 502)
    assert ratelimit_headers(stream.headers) == _headers(5999, 99999)
    assert stream.json()["error"]["type"] == "upstream_error"
    assert sync.json()["error"]["type"] == "upstream_error"


def test_the_gateway_passes_each_chunk_on_before_the_upstream_sent_the_next() -> None:
    release = threading.Event()

    async def held_back() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        # Bounded: the test releases it at once; a failing test does not hang here.
        await anyio.to_thread.run_sync(release.wait, 10)
        yield b"data: [DONE]\n\n"

    async def chat(request: Request) -> StreamingResponse:
        return StreamingResponse(held_back(), media_type="text/event-stream")

    with _gateway_in_front_of(chat) as chat_stream, chat_stream() as response:
        chunks = response.iter_raw()
        first = b""
        while len(first) < len(b"data: one\n\n"):  # in case TCP splits it
            first += next(chunks)
        upstream_done_before_first = release.is_set()
        release.set()
        rest = b"".join(chunks)

    assert ratelimit_headers(response.headers) == _headers(5999, 99999)
    assert (first, upstream_done_before_first) == (b"data: one\n\n", False)
    assert rest == b"data: [DONE]\n\n"


def test_a_client_that_leaves_mid_stream_closes_the_upstream_stream() -> None:
    upstream_closed = threading.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            for _ in range(2000):  # 20 s at most
                yield b"data: {}\n\n"
                await anyio.sleep(0.01)
        finally:
            upstream_closed.set()

    async def chat(request: Request) -> HeaderFirstStreamingResponse:
        # The library's response closes its iterator as soon as the gateway hangs up.
        return HeaderFirstStreamingResponse(endless(), media_type="text/event-stream")

    with _gateway_in_front_of(chat) as chat_stream:
        with chat_stream() as response:
            first = next(response.iter_raw())
        # Leaving the block closed the connection with the body unread.
        closed_in_time = upstream_closed.wait(10)

    assert first.startswith(b"data: {}")
    assert closed_in_time


@contextlib.contextmanager
def _gateway_in_front_of(
    chat: Callable[[Request], Awaitable[Response]],
) -> Iterator[Callable[[], contextlib.AbstractContextManager[httpx.Response]]]:
    """Run a gateway in front of an upstream whose one route, the chat completions, is
    ``chat``; yield a function that opens the streaming chat probe through the gateway."""
    upstream = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    probe = PROBES[1]
    with (
        serve(upstream) as upstream_url,
        running(upstream_url=upstream_url) as servers,
        httpx.Client(timeout=TIMEOUT) as client,
    ):
        key = create_key(servers.gateway_url)
        yield functools.partial(
            client.stream,
            "POST",
            servers.gateway_url + probe.path,
            headers={"authorization": f"Bearer {key}"},
            json=probe.body,
        )
