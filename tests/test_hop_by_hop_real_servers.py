"""Tier 3: refused late names never reach the wire, over HTTP/1.1 and HTTP/2.

Every name of `REFUSED_LATE_HEADERS`, returned by a resolver of
`HeaderFirstStreamingResponse`, of `HeaderFirstEventSourceResponse` and of
`HeaderFirstMiddleware`, or added with `late_headers()`: the client gets the documented
response (``500``, or under ``"degrade"`` the stream without the resolver's headers) and
the head carries only what the server adds itself, compared with a control request.

HTTP/1.1: raw sockets on uvicorn (h11 and httptools) and hypercorn (asyncio and trio).
HTTP/2: hypercorn's h2c (prior knowledge, asyncio and trio), read through `h2` with its
inbound validation off, so that a connection-specific field would be seen.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import h2.exceptions
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Scope

from header_first_stream import (
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
    HeaderValidationError,
    late_headers,
)
from header_first_stream._headers import FRAMING_HEADERS, REFUSED_LATE_HEADERS
from header_first_stream._types import HeaderResolver, HeaderSource

from ._raw_http import Exchange, h2c_get, http1_get
from ._servers import H2C_SERVERS, SERVERS, TRIO_SERVERS, serve, served

HOSTILE = {
    "connection": "keep-alive, x-secret",
    "keep-alive": "timeout=5",
    "proxy-connection": "keep-alive",
    "upgrade": "websocket",
    "te": "gzip",
    "trailer": "x-cost",
    "host": "evil.example",
    "date": "Thu, 01 Jan 1970 00:00:00 GMT",
    "server": "gateway/1.0",
    "content-length": "3",
    "transfer-encoding": "gzip, chunked",
}
assert {name.encode() for name in HOSTILE} == set(REFUSED_LATE_HEADERS)

NAMES = sorted(HOSTILE)
VARYING = (b"date",)

ERROR_500 = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]


async def body() -> AsyncIterator[bytes]:
    yield b"hello"


def resolver_of(name: str) -> HeaderResolver:
    async def resolver() -> HeaderSource:
        return {"x-ok": "1", name: HOSTILE[name]}

    return resolver


def stream(request: Request) -> Response:
    name = request.path_params["name"]
    return HeaderFirstStreamingResponse(
        body(),
        media_type="text/plain",
        header_resolver=resolver_of(name),
        on_resolver_error=request.query_params.get("policy", "error"),  # type: ignore[arg-type]
    )


def events(request: Request) -> Response:
    from header_first_stream import HeaderFirstEventSourceResponse

    return HeaderFirstEventSourceResponse(
        body(), ping=0, header_resolver=resolver_of(request.path_params["name"])
    )


def added(request: Request) -> Response:
    name = request.path_params["name"]
    try:
        late_headers(request).add(name, HOSTILE[name])
    except HeaderValidationError as exc:
        return PlainTextResponse(f"refused: {exc}")
    return PlainTextResponse("accepted")  # pragma: no cover - the test fails on it


def control(request: Request) -> Response:
    return HeaderFirstStreamingResponse(body(), media_type="text/plain")


def json(request: Request) -> Response:
    return JSONResponse({"ok": True})


def plain_with_te(request: Request) -> Response:
    return PlainTextResponse("ok", headers={"te": "gzip"})


async def middleware_resolver(scope: Scope) -> HeaderSource:
    name = scope["path"].rsplit("/", 1)[1]
    return {"x-ok": "1", name: HOSTILE[name]}


APP = Starlette(
    routes=[
        Route("/stream/{name}", stream),
        Route("/events/{name}", events),
        Route("/added/{name}", added),
        Route("/control", control),
        Route("/json", json),
        Route("/plain-with-te", plain_with_te),
        Mount(
            "/middleware",
            HeaderFirstMiddleware(
                Starlette(routes=[Route("/{name}", json)]), resolver=middleware_resolver
            ),
        ),
    ]
)


http1 = served(APP, [*SERVERS, *TRIO_SERVERS])
h2c = served(APP, H2C_SERVERS)


def server_own(response: Exchange, control: Exchange, names: tuple[bytes, ...]) -> None:
    """The refused names in ``response`` are exactly those the server sent on ``control``."""
    for name in names:
        sent = response.values(name)
        expected = control.values(name)
        if name in VARYING:
            assert len(sent) == len(expected) == 1
        else:
            assert sent == expected, f"{name!r}: {sent} against the server's own {expected}"


REFUSED = tuple(REFUSED_LATE_HEADERS)
NOT_FRAMING = tuple(name for name in REFUSED if name not in FRAMING_HEADERS)
"""Refused names a ``500`` and a stream share; framing differs (one length, or chunked)."""


def hostile_line(name: str) -> bytes:
    """The header line the refused header would have been, lower-cased, with its CRLF."""
    return f"{name}: {HOSTILE[name]}\r\n".lower().encode()


def app_fields(response: Exchange, control: Exchange) -> list[tuple[bytes, bytes]]:
    """The header fields of ``response`` without those the server adds (per ``control``)."""
    own = {name for name, _ in control.headers} - {b"content-type"}
    return [(n, v) for n, v in response.headers if n not in own]


def degraded_stream(
    get: Callable[[str, str], Exchange], url: str, name: str
) -> tuple[Exchange, Exchange]:
    """The server's control response and the stream whose resolver returns the refused
    header ``name`` under the degrade policy, fetched with ``get``: the stream went out
    whole, with the head the control had."""
    control = get(url, "/control")
    response = get(url, f"/stream/{name}?policy=degrade")
    assert response.status == 200
    assert response.body == b"hello"
    assert response.without(*VARYING) == control.without(*VARYING)
    return control, response


# --- HTTP/1.1 -----------------------------------------------------------------------


def refused_with_a_500(url: str, path: str, control: Exchange, name: str) -> Exchange:
    """GET ``path`` over HTTP/1.1, whose resolver returns the refused header ``name``: the
    default 500, with the refused fields the server sends on its own (per ``control``) and
    no trace of the app's."""
    response = http1_get(url, path)
    assert response.status == 500, path
    assert response.body == b"Internal Server Error", path
    server_own(response, control, NOT_FRAMING)
    assert hostile_line(name) not in response.raw.lower(), path
    return response


@pytest.mark.parametrize("name", NAMES)
def test_a_refused_resolver_header_gives_a_500_and_never_reaches_http1(
    http1: str, name: str
) -> None:
    control = http1_get(http1, "/control")
    response = refused_with_a_500(http1, f"/stream/{name}", control, name)
    assert [(n, v) for n, v in response.headers if n.startswith(b"content-")] == ERROR_500


@pytest.mark.parametrize("name", NAMES)
def test_under_degrade_the_stream_goes_out_without_the_refused_header(
    http1: str, name: str
) -> None:
    control, response = degraded_stream(http1_get, http1, name)
    server_own(response, control, REFUSED)
    assert hostile_line(name) not in response.raw.lower()


@pytest.mark.parametrize("name", ["connection", "upgrade", "server", "te"])
def test_the_sse_resolver_and_the_middleware_resolver_refuse_them_too(
    http1: str, name: str
) -> None:
    control = http1_get(http1, "/json")
    for path in (f"/events/{name}", f"/middleware/{name}"):
        refused_with_a_500(http1, path, control, name)


@pytest.mark.parametrize("name", NAMES)
def test_late_headers_refuse_them_when_added(http1: str, name: str) -> None:
    response = http1_get(http1, f"/added/{name}")
    assert response.status == 200
    reason = REFUSED_LATE_HEADERS[name.encode()]
    assert response.body == f"refused: invalid late header {name!r} ({reason})".encode()
    assert hostile_line(name) not in response.raw.lower()


# --- HTTP/2 (h2c) -------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_a_refused_resolver_header_gives_a_clean_500_over_http2(h2c: str, name: str) -> None:
    control = h2c_get(h2c, "/control")
    response = h2c_get(h2c, f"/stream/{name}")
    assert response.events[-1] == "StreamEnded"
    assert response.status == 500
    assert response.body == b"Internal Server Error"
    assert app_fields(response, control) == ERROR_500
    server_own(response, control, NOT_FRAMING)


@pytest.mark.parametrize("name", NAMES)
def test_under_degrade_an_http2_stream_carries_no_connection_specific_field(
    h2c: str, name: str
) -> None:
    _, response = degraded_stream(h2c_get, h2c, name)
    assert response.events[-1] == "StreamEnded"
    for field in (b"connection", b"keep-alive", b"proxy-connection", b"upgrade", b"te"):
        assert response.values(field) == []


@pytest.mark.parametrize("name", ["te", "trailer", "host"])
def test_the_middleware_resolver_over_http2(h2c: str, name: str) -> None:
    response = h2c_get(h2c, f"/middleware/{name}")
    assert response.events[-1] == "StreamEnded"
    assert response.status == 500
    assert response.values(name.encode()) == []
    assert response.body == b"Internal Server Error"


def test_why_te_is_refused_a_plain_response_carrying_it_breaks_over_http2(h2c: str) -> None:
    # Not this package's response: Starlette's, with `te: gzip` in its own head. Hypercorn's
    # h2 refuses the HEADERS frame, yet the body still goes out: the client sees DATA
    # before HEADERS, a protocol error.
    with pytest.raises(h2.exceptions.ProtocolError, match="cannot receive data before headers"):
        h2c_get(h2c, "/plain-with-te")


# --- the documented way to send your own `server` ------------------------------------


def own_server(request: Request) -> Response:
    return HeaderFirstStreamingResponse(body(), headers={"server": "gateway/1.0"})


@pytest.mark.parametrize("server", ["uvicorn-h11", "uvicorn-httptools"])
def test_an_own_server_header_is_the_only_one_once_the_servers_is_off(server: str) -> None:
    app = Starlette(routes=[Route("/", own_server)])
    with serve(app, server) as url:
        duplicated = http1_get(url, "/")
    with serve(app, server, server_header=False) as url:
        single = http1_get(url, "/")
    # Why a late `server` is refused: by default the server adds its own beside it.
    assert duplicated.values(b"server") == [b"uvicorn", b"gateway/1.0"]
    assert single.values(b"server") == [b"gateway/1.0"]
    assert single.body == b"hello"
