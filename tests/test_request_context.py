"""Resolvers and a body's first step run in the request's context (tier 1, asyncio and trio).

Context variables the app sets while it handles a request (a request id, a tenant) are
visible to `HeaderFirstMiddleware`'s ``resolver``, to `HeaderFirstStreamingResponse`'s
``header_resolver``, and to the code of a body iterator up to its first chunk; and
``late_headers()``/``add_late_headers()`` without a request work there. A sync endpoint is
the exception: it runs in a worker thread on a copy of the context, so the variables it
sets stay in that thread (the late-headers store it adds to is shared, though).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextvars import ContextVar

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from header_first_stream import (
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
    add_late_headers,
    late_headers,
)
from header_first_stream._types import Chunk

from ._asgi import Recorder, call

pytestmark = pytest.mark.anyio

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="unset")


async def call_in_own_task(app: ASGIApp) -> Recorder:
    """Call ``app`` in a task of its own, as a server does: its variables stay there."""
    recorder = Recorder()
    async with anyio.create_task_group() as group:
        group.start_soon(call, app, None, None, recorder)
    assert REQUEST_ID.get() == "unset"
    return recorder


async def middleware_resolver(scope: Scope) -> dict[str, str]:
    # Also reaches the request's store without being given it.
    add_late_headers({"x-from-resolver-store": REQUEST_ID.get()})
    return {"x-resolver-saw": REQUEST_ID.get()}


async def test_a_middleware_resolver_sees_what_a_raw_asgi_app_set_before_its_head() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        REQUEST_ID.set("raw-1")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    recorder = await call_in_own_task(HeaderFirstMiddleware(app, resolver=middleware_resolver))
    assert recorder.headers == [
        (b"x-from-resolver-store", b"raw-1"),
        (b"x-resolver-saw", b"raw-1"),
    ]


async def test_a_middleware_resolver_and_the_first_step_of_a_stream_see_the_endpoints_vars() -> (
    None
):
    steps: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        # Starlette streams the body from a task of its own, started with a copy of the
        # endpoint's context; the head is still held, so headers added here go out.
        steps.append(REQUEST_ID.get())
        late_headers().add("x-first-step-saw", REQUEST_ID.get())
        yield b"one"
        yield b"two"

    async def endpoint(request: Request) -> Response:
        REQUEST_ID.set("stream-2")
        return StreamingResponse(chunks(), media_type="text/plain")

    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(HeaderFirstMiddleware, resolver=middleware_resolver)
    recorder = await call_in_own_task(app)
    assert steps == ["stream-2"]
    assert recorder.headers == [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"x-first-step-saw", b"stream-2"),
        (b"x-from-resolver-store", b"stream-2"),
        (b"x-resolver-saw", b"stream-2"),
    ]
    assert recorder.body == b"onetwo"


async def test_a_header_first_response_resolver_and_peeked_first_step_see_the_endpoints_vars() -> (
    None
):
    async def chunks() -> AsyncIterator[bytes]:
        # With peek_first_chunk=True this step runs before the head is built.
        add_late_headers({"x-first-step-saw": REQUEST_ID.get()})
        yield b"one"

    async def resolver(first: Chunk | None) -> dict[str, str]:
        return {"x-resolver-saw": REQUEST_ID.get()}

    async def endpoint(request: Request) -> Response:
        REQUEST_ID.set("hfsr-3")
        return HeaderFirstStreamingResponse(
            chunks(), media_type="text/plain", header_resolver=resolver, peek_first_chunk=True
        )

    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(HeaderFirstMiddleware)
    recorder = await call_in_own_task(app)
    assert recorder.headers == [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"x-first-step-saw", b"hfsr-3"),
        (b"x-resolver-saw", b"hfsr-3"),
    ]
    assert recorder.body == b"one"


async def test_a_sync_endpoints_vars_stay_in_its_thread_but_its_late_headers_go_out() -> None:
    def endpoint(request: Request) -> Response:
        REQUEST_ID.set("thread-4")  # set in the worker thread's copy of the context
        late_headers().add("x-from-thread", "yes")
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(HeaderFirstMiddleware, resolver=middleware_resolver)
    recorder = await call_in_own_task(app)
    assert recorder.headers == [
        (b"content-length", b"11"),
        (b"content-type", b"application/json"),
        (b"x-from-thread", b"yes"),
        (b"x-from-resolver-store", b"unset"),
        (b"x-resolver-saw", b"unset"),
    ]
