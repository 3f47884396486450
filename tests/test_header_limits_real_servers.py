"""Tier 3: oversized heads and a resolver's stray cancellation, behind real servers.

An oversized late value is answered with a clean ``500`` over HTTP/1.1 (uvicorn h11 and
httptools, hypercorn asyncio and trio) and HTTP/2 (hypercorn h2c, asyncio and trio),
instead of a head that proxies and HTTP/2 clients refuse. A resolver that raises a stray
cancellation gets the package's own ``500`` and a log line, not the server's improvised
one; a client that leaves while the resolver runs still cancels it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import AsyncIterator

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from header_first_stream import HeaderFirstMiddleware, HeaderFirstStreamingResponse, late_headers
from header_first_stream._types import HeaderSource

from ._asgi import stray_cancellation
from ._raw_http import WAIT, h2c_get, http1_get
from ._servers import H2C_SERVERS, SERVERS, TRIO_SERVERS, serve, served

ERROR_500 = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]
SERVER_OWN = (b"date", b"server", b"connection")
BIG = "v" * 100_000


async def body() -> AsyncIterator[bytes]:
    yield b"hello"


def big_late_value(request: Request) -> Response:
    late_headers(request).update({"x-request-id": "r1", "x-debug": BIG})
    return HeaderFirstStreamingResponse(body(), media_type="text/plain")


def json(request: Request) -> Response:
    late_headers(request).update({"x-request-id": "r1", "x-debug": BIG})
    return JSONResponse({"ok": True})


def stray(request: Request) -> Response:
    return HeaderFirstStreamingResponse(body(), header_resolver=stray_cancellation)


class Hanging:
    """A resolver that hangs until cancelled, recording that it was."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()

    async def __call__(self) -> HeaderSource:
        self.started.set()
        try:
            await anyio.sleep_forever()
        finally:
            self.cancelled.set()
        raise AssertionError("unreachable")  # pragma: no cover


HANGING = Hanging()


def hanging(request: Request) -> Response:
    return HeaderFirstStreamingResponse(body(), header_resolver=HANGING)


APP = Starlette(
    routes=[
        Route("/big", big_late_value),
        Route("/stray", stray),
        Route("/hanging", hanging),
        Mount("/middleware", HeaderFirstMiddleware(Starlette(routes=[Route("/", json)]))),
    ]
)


http1 = served(APP, [*SERVERS, *TRIO_SERVERS])
h2c = served(APP, H2C_SERVERS)


@pytest.mark.parametrize("path", ["/big", "/middleware/"])
def test_an_oversized_late_value_gives_a_clean_500_over_http1(
    http1: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    response = http1_get(http1, path)
    assert response.status == 500
    assert response.without(*SERVER_OWN) == ERROR_500
    assert response.body == b"Internal Server Error"
    assert len(response.raw) < 1000
    records = [r for r in caplog.records if r.name == "header_first_stream"]
    assert [r.getMessage() for r in records] == [f"response head too large for {path}"]


@pytest.mark.parametrize("path", ["/big", "/middleware/"])
def test_an_oversized_late_value_gives_a_clean_500_over_http2(h2c: str, path: str) -> None:
    response = h2c_get(h2c, path)
    assert response.events[-1] == "StreamEnded"
    assert response.status == 500
    assert response.without(*SERVER_OWN) == ERROR_500
    assert response.body == b"Internal Server Error"


def test_a_stray_cancellation_from_the_resolver_gives_the_packages_500_and_a_log(
    http1: str, caplog: pytest.LogCaptureFixture
) -> None:
    response = http1_get(http1, "/stray")
    assert response.status == 500
    assert response.without(*SERVER_OWN) == ERROR_500
    assert response.body == b"Internal Server Error"
    records = [r for r in caplog.records if r.name == "header_first_stream"]
    assert [r.getMessage() for r in records] == ["header resolver failed for /stray"]


def test_a_client_that_leaves_while_the_resolver_hangs_still_cancels_it(http1: str) -> None:
    HANGING.started.clear()
    HANGING.cancelled.clear()
    port = int(http1.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"GET /hanging HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert HANGING.started.wait(WAIT)
    assert HANGING.cancelled.wait(WAIT)


@pytest.mark.parametrize("server", ["uvicorn-httptools"])
def test_on_uvicorn_a_future_cancelled_by_another_task_is_a_logged_resolver_failure(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The bug report's case, asyncio only: the resolver awaits a future another task
    # cancelled. Before, the app returned without a response and uvicorn improvised one.
    async def resolver() -> HeaderSource:
        future: asyncio.Future[HeaderSource] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.cancel)
        return await future

    def endpoint(request: Request) -> Response:
        return HeaderFirstStreamingResponse(
            body(), header_resolver=resolver, on_resolver_error="degrade"
        )

    app = Starlette(routes=[Route("/", endpoint)])
    with serve(app, server) as url:
        response = http1_get(url, "/")
    assert response.status == 200
    assert response.body == b"hello"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "header resolver failed for /; sending the response without its headers"
    ]
