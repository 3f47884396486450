"""The variants every benchmark compares, each built as an endpoint would build it.

A variant's factory takes the number of chunks and returns an ASGI app that, on every
call, creates a fresh body generator and a fresh response object, as a real endpoint
does per request. Byte variants stream `CHUNK`; SSE variants stream `EVENT_DATA`, which
they encode into an SSE event themselves (that encoding is part of their cost).

The SSE response and the middleware are looked up at run time: a variant whose class
cannot be imported is reported as "not available" instead of failing the run.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio.lowlevel
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import header_first_stream
from header_first_stream import HeaderFirstStreamingResponse, HeaderResolver

CHUNK = b'data: {"token": "hello"}\n\n'
EVENT_DATA = '{"token": "hello"}'
HEADERS = {"x-request-id": "bench"}

_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"x-request-id", b"bench")],
}
_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}

Body = Callable[[int, Any], AsyncIterator[Any]]
"""Makes a response body from a chunk count and the item to repeat."""

AppFactory = Callable[[int, Body], ASGIApp]
"""Makes the variant's ASGI app from a chunk count and the body to stream."""


@dataclass(frozen=True)
class Variant:
    """One thing to measure: a key for the data, a label for the report."""

    key: str
    label: str
    make: AppFactory | None
    missing: str = ""

    @property
    def available(self) -> bool:
        return self.make is not None


async def chunks(count: int, item: Any) -> AsyncIterator[Any]:
    """The body: ``count`` times ``item``, with no await in between (a no-op upstream)."""
    for _ in range(count):
        yield item


async def upstream_chunks(count: int, item: Any) -> AsyncIterator[Any]:
    """The body of a real upstream: one event-loop pass before every chunk."""
    for _ in range(count):
        await anyio.lowlevel.checkpoint()
        yield item


async def noop_resolver() -> Mapping[str, str]:
    """A header resolver that costs nothing but its call."""
    return {}


def _raw(count: int, body: Body = chunks) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(_START)
        async for chunk in body(count, CHUNK):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send(_END)

    return app


def _starlette(count: int, body: Body = chunks) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = StreamingResponse(body(count, CHUNK), headers=HEADERS, media_type="text/plain")
        await response(scope, receive, send)

    return app


def ours(count: int, body: Body = chunks, resolver: HeaderResolver = noop_resolver) -> ASGIApp:
    """The variant `OURS`; `benchmarks.e2e` serves it with other resolvers too."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = HeaderFirstStreamingResponse(
            body(count, CHUNK),
            headers=HEADERS,
            media_type="text/plain",
            header_resolver=resolver,
        )
        await response(scope, receive, send)

    return app


def _ours_no_resolver(count: int, body: Body = chunks) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = HeaderFirstStreamingResponse(
            body(count, CHUNK), headers=HEADERS, media_type="text/plain"
        )
        await response(scope, receive, send)

    return app


# Both SSE responses ping every 15 s (sse-starlette's default): the ping machinery runs,
# no ping is due within a benchmark.
PING_SECONDS = 15


def _sse_starlette() -> AppFactory | str:
    try:
        module = importlib.import_module("sse_starlette")
    except ImportError as exc:
        return f"sse-starlette is not installed ({exc})"
    cls: Any = module.EventSourceResponse

    def make(count: int, body: Body = chunks) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            response = cls(body(count, EVENT_DATA), headers=HEADERS, ping=PING_SECONDS)
            await response(scope, receive, send)

        return app

    return make


def find_public(name: str, module: str) -> Any:
    """``header_first_stream.<name>``, else ``header_first_stream.<module>.<name>``, else None."""
    try:
        # The package may import some names lazily, raising ImportError without an extra.
        found = getattr(header_first_stream, name, None)
        if found is not None:
            return found
        return getattr(importlib.import_module(f"header_first_stream.{module}"), name, None)
    except ImportError:
        return None


def _ours_sse(ping: float = PING_SECONDS) -> AppFactory | str:
    cls = find_public("HeaderFirstEventSourceResponse", "_sse")
    if cls is None:
        return "HeaderFirstEventSourceResponse is not importable"
    options: dict[str, Any] = {"headers": HEADERS, "header_resolver": noop_resolver}
    if "ping" in inspect.signature(cls).parameters:
        options["ping"] = ping

    def make(count: int, body: Body = chunks) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            response = cls(body(count, EVENT_DATA), **options)
            await response(scope, receive, send)

        return app

    return make


def _middleware() -> AppFactory | str:
    cls = find_public("HeaderFirstMiddleware", "_middleware")
    if cls is None:
        return "HeaderFirstMiddleware is not importable"

    def make(count: int, body: Body = chunks) -> ASGIApp:
        return cls(_starlette(count, body))  # type: ignore[no-any-return]

    return make


def _variant(key: str, label: str, found: AppFactory | str) -> Variant:
    if isinstance(found, str):
        return Variant(key, label, None, found)
    return Variant(key, label, found)


RAW = "raw"
STARLETTE = "starlette"
OURS = "ours"
OURS_NO_RESOLVER = "ours-no-resolver"
SSE_STARLETTE = "sse-starlette"
OURS_SSE = "ours-sse"
OURS_SSE_NO_PING = "ours-sse-no-ping"
MIDDLEWARE = "middleware"


def variants() -> list[Variant]:
    """Every variant, in report order; the unavailable ones carry the reason."""
    return [
        Variant(RAW, "raw ASGI app (floor)", _raw),
        Variant(STARLETTE, "Starlette `StreamingResponse`", _starlette),
        _variant(SSE_STARLETTE, "sse-starlette `EventSourceResponse` (pings on)", _sse_starlette()),
        Variant(OURS, "`HeaderFirstStreamingResponse`, no-op resolver", ours),
        Variant(OURS_NO_RESOLVER, "`HeaderFirstStreamingResponse`, no resolver", _ours_no_resolver),
        _variant(
            OURS_SSE, "`HeaderFirstEventSourceResponse`, no-op resolver, pings on", _ours_sse()
        ),
        _variant(
            OURS_SSE_NO_PING,
            "`HeaderFirstEventSourceResponse`, no-op resolver, pings off",
            _ours_sse(ping=0),
        ),
        _variant(
            MIDDLEWARE,
            "`HeaderFirstMiddleware` around Starlette `StreamingResponse`",
            _middleware(),
        ),
    ]


def http_scope(
    method: str = "GET", path: str = "/", spec_version: str = "2.3", **extra: Any
) -> Scope:
    """A fresh HTTP scope, as a server gives one per request; ``extra`` adds or replaces keys.

    The tests build theirs with it too (`tests._asgi`).
    """
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 12345),
        "server": ("127.0.0.1", 80),
    }
    scope.update(extra)
    return scope
