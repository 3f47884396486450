"""`HeaderFirstMiddleware(expose_late_headers=True)`: late headers a browser's ``fetch()`` can read.

Tier 1 (direct ASGI calls, both backends) for what goes in the head, with and without
Starlette's `CORSMiddleware` on either side; tier 3 (uvicorn, hypercorn, real httpx
clients; hypercorn also on trio) for the documented stack.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from header_first_stream import HeaderFirstMiddleware, HeaderFirstStreamingResponse, late_headers

from ._asgi import call, http_scope
from ._servers import SERVERS, TRIO_SERVERS, serve

PAGE = "http://127.0.0.1:8001"
EXPOSE = b"access-control-expose-headers"
START: Message = {"type": "http.response.start", "status": 200, "headers": [(b"x-own", b"1")]}
END: Message = {"type": "http.response.body", "body": b"data", "more_body": False}


def cors_scope(path: str = "/") -> Scope:
    return http_scope(path=path, headers=[(b"host", b"testserver"), (b"origin", PAGE.encode())])


async def late_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Sends its head, then adds two late headers, then its body."""
    await send(START)
    late_headers().update({"X-RateLimit-Remaining": "4", "x-cost": "12"})
    await send(END)


LATE_APP_HEAD = [(b"x-own", b"1"), (b"x-ratelimit-remaining", b"4"), (b"x-cost", b"12")]
"""The head of `late_app` through the middleware, without exposed names."""


async def plain_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send(START)
    await send(END)


# --- the bare middleware ------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_cors_request_gets_the_names_of_the_late_headers_sent() -> None:
    recorder = await call(HeaderFirstMiddleware(late_app, expose_late_headers=True), cors_scope())
    assert recorder.headers == [
        *LATE_APP_HEAD,
        (EXPOSE, b"x-ratelimit-remaining, x-cost"),
    ]
    assert recorder.body == b"data"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("expose", "origin"), [(True, False), (False, True)], ids=["no origin", "by default"]
)
async def test_no_names_are_exposed_without_origin_nor_by_default(
    expose: bool, origin: bool
) -> None:
    scope = cors_scope() if origin else http_scope()
    recorder = await call(HeaderFirstMiddleware(late_app, expose_late_headers=expose), scope)
    assert recorder.headers == LATE_APP_HEAD


@pytest.mark.anyio
async def test_a_cors_request_without_late_headers_passes_the_head_on_unchanged() -> None:
    recorder = await call(HeaderFirstMiddleware(plain_app, expose_late_headers=True), cors_scope())
    assert recorder.head is START


@pytest.mark.anyio
async def test_the_resolvers_headers_are_exposed_too() -> None:
    async def resolver(scope: Scope) -> dict[str, str]:
        return {"x-request-cost": "0.02"}

    middleware = HeaderFirstMiddleware(late_app, resolver=resolver, expose_late_headers=True)
    recorder = await call(middleware, cors_scope())
    assert recorder.headers == [
        *LATE_APP_HEAD,
        (b"x-request-cost", b"0.02"),
        (EXPOSE, b"x-ratelimit-remaining, x-cost, x-request-cost"),
    ]


@pytest.mark.anyio
async def test_listed_names_keep_their_spelling_and_several_lines_become_one() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        own = [(EXPOSE, b"X-Request-Id, X-Cost"), (b"x-own", b"1"), (EXPOSE, b" etag ,")]
        await send({"type": "http.response.start", "status": 200, "headers": own})
        late_headers().update({"x-cost": "12", "x-ratelimit-remaining": "4"})
        await send(END)

    recorder = await call(HeaderFirstMiddleware(app, expose_late_headers=True), cors_scope())
    assert recorder.headers == [
        (b"x-own", b"1"),
        (b"x-cost", b"12"),
        (b"x-ratelimit-remaining", b"4"),
        (EXPOSE, b"X-Request-Id, X-Cost, etag, x-ratelimit-remaining"),
    ]


@pytest.mark.anyio
async def test_a_resolver_error_response_is_not_changed() -> None:
    async def resolver(scope: Scope) -> dict[str, str]:
        raise RuntimeError("limiter down")

    middleware = HeaderFirstMiddleware(late_app, resolver=resolver, expose_late_headers=True)
    recorder = await call(middleware, cors_scope())
    assert recorder.status == 500
    assert recorder.headers == [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"21"),
        (b"x-ratelimit-remaining", b"4"),
        (b"x-cost", b"12"),
    ]


# --- with a HeaderFirstStreamingResponse inside -------------------------------------------


async def _stream_endpoint(request: Request) -> Response:
    late_headers(request).add("x-request-id", "r-1")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"

    async def resolver() -> dict[str, str]:
        return {"x-ratelimit-remaining-requests": "9"}

    return HeaderFirstStreamingResponse(
        chunks(), media_type="text/event-stream", header_resolver=resolver
    )


def _gateway(*, cors_outside: bool, expose_headers: tuple[str, ...]) -> ASGIApp:
    """A Starlette app with both middlewares; the first in the list is the outermost."""
    cors = Middleware(CORSMiddleware, allow_origins=[PAGE], expose_headers=list(expose_headers))
    header_first = Middleware(HeaderFirstMiddleware, expose_late_headers=True)
    stack = [cors, header_first] if cors_outside else [header_first, cors]
    return Starlette(routes=[Route("/", _stream_endpoint)], middleware=stack)


@pytest.mark.anyio
async def test_the_headers_an_inner_streaming_response_sent_are_exposed_once() -> None:
    app = _gateway(cors_outside=False, expose_headers=())
    recorder = await call(app, cors_scope())
    assert recorder.headers == [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"x-request-id", b"r-1"),
        (b"x-ratelimit-remaining-requests", b"9"),
        (b"access-control-allow-origin", PAGE.encode()),
        (b"vary", b"Origin"),
        (EXPOSE, b"x-request-id, x-ratelimit-remaining-requests"),
    ]
    assert recorder.body == b"data: 1\n\n"


@pytest.mark.anyio
async def test_outside_cors_middleware_the_names_merge_with_its_list() -> None:
    # The documented order: HeaderFirstMiddleware outside (first in `middleware=`).
    app = _gateway(cors_outside=False, expose_headers=("X-Trace", "X-Request-Id"))
    recorder = await call(app, cors_scope())
    assert [value for name, value in recorder.headers if name == EXPOSE] == [
        b"X-Trace, X-Request-Id, x-ratelimit-remaining-requests"
    ]


@pytest.mark.anyio
async def test_inside_cors_middleware_its_static_list_replaces_the_names() -> None:
    # The other order: CORSMiddleware sets its own list over the merged one.
    app = _gateway(cors_outside=True, expose_headers=("X-Trace",))
    recorder = await call(app, cors_scope())
    assert [value for name, value in recorder.headers if name == EXPOSE] == [b"X-Trace"]


@pytest.mark.anyio
async def test_inside_cors_middleware_without_a_list_the_names_survive() -> None:
    app = _gateway(cors_outside=True, expose_headers=())
    recorder = await call(app, cors_scope())
    assert [value for name, value in recorder.headers if name == EXPOSE] == [
        b"x-request-id, x-ratelimit-remaining-requests"
    ]


@pytest.mark.anyio
async def test_a_request_without_origin_through_cors_middleware_gets_no_exposed_names() -> None:
    recorder = await call(_gateway(cors_outside=False, expose_headers=("X-Trace",)))
    assert recorder.headers == [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"x-request-id", b"r-1"),
        (b"x-ratelimit-remaining-requests", b"9"),
        (b"vary", b"Origin"),
    ]


# --- tier 3: the documented stack on real servers -----------------------------------------


def _json_endpoint(request: Request) -> Response:
    late_headers(request).update({"x-ratelimit-remaining-tokens": "90"})
    return JSONResponse({"ok": True})


@pytest.mark.parametrize("server", SERVERS + TRIO_SERVERS)
def test_a_real_server_sends_the_exposed_names_to_a_cors_client(server: str) -> None:
    app = Starlette(
        routes=[Route("/stream", _stream_endpoint), Route("/json", _json_endpoint)],
        middleware=[
            Middleware(HeaderFirstMiddleware, expose_late_headers=True),
            Middleware(CORSMiddleware, allow_origins=[PAGE], expose_headers=["X-Trace"]),
        ],
    )
    with serve(app, server) as url, httpx.Client(base_url=url, timeout=10) as client:
        with client.stream("GET", "/stream", headers={"origin": PAGE}) as stream:
            head = stream.headers
            data = stream.read()
        json_response = client.get("/json", headers={"origin": PAGE})
        same_origin = client.get("/json")
    assert head.get_list("access-control-expose-headers") == [
        "X-Trace, x-request-id, x-ratelimit-remaining-requests"
    ]
    assert head["access-control-allow-origin"] == PAGE
    assert head["x-ratelimit-remaining-requests"] == "9"
    assert data == b"data: 1\n\n"
    assert json_response.headers.get_list("access-control-expose-headers") == [
        "X-Trace, x-ratelimit-remaining-tokens"
    ]
    assert json_response.json() == {"ok": True}
    assert "access-control-expose-headers" not in same_origin.headers
    assert same_origin.headers["x-ratelimit-remaining-tokens"] == "90"
