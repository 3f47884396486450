"""Each framework's streaming response behind `HeaderFirstMiddleware`, on a real server.

The body's first step adds a late header, yields its first chunk, then waits at a gate
that the test opens only once its client holds the head and the first chunk: the late
headers arrive in the head, and the stream is not buffered by the middleware. Except for
Django's sync iterators, which Django drains before it sends any body: pinned here too.

Servers: uvicorn (h11, asyncio) for every framework; hypercorn's trio worker for the
frameworks that run on trio (Starlette, FastAPI, Litestar, Falcon). Django and Quart run on
asyncio only (both drive asyncio directly).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio.to_thread
import falcon.asgi
import httpx
import pytest
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.http import HttpRequest, StreamingHttpResponse
from django.urls import clear_url_caches, path
from fastapi import Depends, FastAPI, Request
from litestar import Litestar, get
from litestar.response import Stream
from quart import Quart
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from header_first_stream import (
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
    add_late_headers,
    late_headers,
)

from ._servers import serve

WAIT = 5.0
HELD = 0.5  # how long a test waits to see that a head is *not* sent yet


class Gate:
    """The stream's second chunk waits here until the test opens it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.outcome: list[str] = []

    async def chunks(self) -> AsyncIterator[bytes]:
        late_headers().add("x-first-step", "yes")
        yield b"first\n"
        opened = await anyio.to_thread.run_sync(self.event.wait, WAIT)
        self.outcome.append("opened" if opened else "timed out")
        yield b"second\n"

    def sync_chunks(self) -> Iterator[bytes]:
        late_headers().add("x-first-step", "yes")
        yield b"first\n"
        self.outcome.append("opened" if self.event.wait(WAIT) else "timed out")
        late_headers().add("x-after-first-chunk", "still-in-time")
        yield b"second\n"


# --- one app per framework: /stream, whose handler also adds a header --------------------


def starlette_app(gate: Gate) -> ASGIApp:

    async def stream(request: StarletteRequest) -> StreamingResponse:
        add_late_headers({"x-handler": "starlette"})
        return StreamingResponse(gate.chunks(), media_type="text/plain")

    return HeaderFirstMiddleware(Starlette(routes=[Route("/stream", stream)]))


def fastapi_app(gate: Gate) -> ASGIApp:

    async def rate_limit(request: Request) -> None:
        late_headers(request).add("x-handler", "fastapi")

    app = FastAPI()
    app.add_middleware(HeaderFirstMiddleware)

    async def resolver(first: object) -> dict[str, str]:
        return {"x-resolver-saw": repr(first)}

    @app.get("/stream", dependencies=[Depends(rate_limit)])
    async def stream() -> HeaderFirstStreamingResponse:
        return HeaderFirstStreamingResponse(
            gate.chunks(), media_type="text/plain", header_resolver=resolver, peek_first_chunk=True
        )

    return app


def litestar_app(gate: Gate) -> ASGIApp:

    @get("/stream")
    async def stream() -> Stream:
        add_late_headers({"x-handler": "litestar"})
        return Stream(gate.chunks(), media_type="text/plain")

    return HeaderFirstMiddleware(Litestar(route_handlers=[stream]))


def quart_app(gate: Gate) -> ASGIApp:

    app = Quart(__name__)

    @app.get("/stream")
    async def stream() -> tuple[AsyncIterator[bytes], int, dict[str, str]]:
        add_late_headers({"x-handler": "quart"})
        return gate.chunks(), 200, {"content-type": "text/plain"}

    return HeaderFirstMiddleware(app)


def falcon_app(gate: Gate) -> ASGIApp:

    class StreamResource:
        async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
            add_late_headers({"x-handler": "falcon"})
            resp.content_type = "text/plain"
            resp.stream = gate.chunks()

    app = falcon.asgi.App()
    app.add_route("/stream", StreamResource())
    return HeaderFirstMiddleware(app)


def django_app(gate: Gate, *, sync: bool = False) -> ASGIApp:

    if not settings.configured:  # once per process; only this module uses Django here
        settings.configure(ALLOWED_HOSTS=["127.0.0.1"], ROOT_URLCONF=__name__)

    async def stream(request: HttpRequest) -> StreamingHttpResponse:
        add_late_headers({"x-handler": "django"})
        body = gate.sync_chunks() if sync else gate.chunks()
        return StreamingHttpResponse(body, content_type="text/plain")

    urlpatterns[:] = [path("stream", stream)]
    clear_url_caches()
    return HeaderFirstMiddleware(get_asgi_application())


urlpatterns: list[Any] = []  # Django's ROOT_URLCONF is this module; django_app fills it

ON_TRIO: dict[str, Callable[[Gate], ASGIApp]] = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "litestar": litestar_app,
    "falcon": falcon_app,
}
ASYNCIO_ONLY: dict[str, Callable[[Gate], ASGIApp]] = {"quart": quart_app, "django": django_app}

CASES = [
    *[
        pytest.param(name, server, id=f"{name}-{server}")
        for name in ON_TRIO
        for server in ["uvicorn-h11", "hypercorn-trio"]
    ],
    *[pytest.param(name, "uvicorn-h11", id=f"{name}-uvicorn-h11") for name in ASYNCIO_ONLY],
]

EXTRA = {"fastapi": {"x-resolver-saw": "b'first\\n'"}}


@pytest.mark.parametrize(("framework", "server"), CASES)
def test_late_headers_in_the_head_and_the_stream_unbuffered(framework: str, server: str) -> None:
    gate = Gate()
    app = {**ON_TRIO, **ASYNCIO_ONLY}[framework](gate)
    with (
        serve(app, server) as url,
        httpx.Client(timeout=WAIT) as client,
        client.stream("GET", url + "/stream") as response,
    ):
        # The head is here while the stream waits at the gate.
        assert response.status_code == 200
        assert response.headers.get_list("x-handler") == [framework]
        assert response.headers.get_list("x-first-step") == ["yes"]
        for name, value in EXTRA.get(framework, {}).items():
            assert response.headers.get_list(name) == [value]
        parts = response.iter_raw()
        received = next(parts)
        assert received == b"first\n"  # the first chunk too, before the gate opens
        assert gate.outcome == []
        gate.event.set()
        received += b"".join(parts)
    assert received == b"first\nsecond\n"
    assert gate.outcome == ["opened"]


@pytest.mark.parametrize("framework", list(ASYNCIO_ONLY))
# Their failure leaves coroutines never awaited behind, in the server's thread.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_django_and_quart_do_not_run_on_trio(framework: str) -> None:
    gate = Gate()
    gate.event.set()
    app = ASYNCIO_ONLY[framework](gate)
    with serve(app, "hypercorn-trio") as url, httpx.Client(timeout=WAIT) as client:
        response = client.get(url + "/stream")
    assert response.status_code == 500
    assert gate.outcome == []  # the view never ran to its stream


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
def test_django_drains_a_sync_iterator_before_the_head_so_every_header_of_it_goes_out() -> None:
    gate = Gate()
    app = django_app(gate, sync=True)
    with serve(app, "uvicorn-h11") as url, httpx.Client(timeout=WAIT) as client:
        head_arrived = threading.Event()
        result: list[httpx.Response] = []

        def request() -> None:
            with client.stream("GET", url + "/stream") as response:
                head_arrived.set()
                response.read()
                result.append(response)

        thread = threading.Thread(target=request, daemon=True)
        thread.start()
        # Nothing arrives while the iterator waits after its first chunk: Django drains it.
        assert not head_arrived.wait(HELD)
        gate.event.set()
        thread.join(WAIT)
    assert gate.outcome == ["opened"]
    [response] = result
    assert response.status_code == 200
    assert response.headers.get_list("x-handler") == ["django"]
    assert response.headers.get_list("x-first-step") == ["yes"]
    assert response.headers.get_list("x-after-first-chunk") == ["still-in-time"]
    assert response.content == b"first\nsecond\n"
