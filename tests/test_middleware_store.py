"""`late_headers()`: the request's store in the scope and the context variable, with and
without `HeaderFirstMiddleware`, and headers added too late.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from header_first_stream import HeaderFirstMiddleware, HeaderFirstStreamingResponse, late_headers
from header_first_stream._late import SCOPE_KEY

from ._asgi import START, body, call, header_values, http_scope, no_current_store

# --- headers added too late -----------------------------------------------------------------


@pytest.mark.anyio
async def test_headers_added_after_the_head_are_not_sent_and_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    results: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        results.append(late_headers().add("x-early", "1"))
        await send(START)
        await send(body(b"a", more=True))
        results.append(late_headers().add("x-too-late", "2"))
        await send(body(b"b"))

    with caplog.at_level(logging.WARNING, logger="header_first_stream"):
        recorder = await call(HeaderFirstMiddleware(app), http_scope(path="/v1/chat"))
    assert results == [True, False]
    assert recorder.headers == [(b"x-own", b"1"), (b"x-early", b"1")]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "late headers ['x-too-late'] for /v1/chat were added after the response head was "
            "sent and are not sent; add them before the response starts",
        )
    ]


# --- the request's store and the context variable -------------------------------------------


@pytest.mark.anyio
async def test_the_store_lives_in_the_scope_and_is_shared_by_copies_tasks_and_the_context() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        copy = {**scope, "path": "/elsewhere"}
        assert late_headers(copy) is late_headers() is late_headers(scope) is scope[SCOPE_KEY]
        late_headers(copy).add("x-from-copy", "1")

        async def child() -> None:
            late_headers().add("x-from-task", "2")

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(child)
        await send(START)
        await send(body(b""))

    scope = http_scope()
    recorder = await call(HeaderFirstMiddleware(app), scope)
    assert recorder.headers == [(b"x-own", b"1"), (b"x-from-copy", b"1"), (b"x-from-task", b"2")]
    assert no_current_store()


@pytest.mark.anyio
async def test_a_store_already_in_the_scope_is_reused() -> None:
    scope = http_scope()
    store = late_headers(scope)
    store.add("x-before-middleware", "1")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert late_headers() is store
        await send(START)
        await send(body(b""))

    recorder = await call(HeaderFirstMiddleware(app), scope)
    assert header_values(recorder, b"x-before-middleware") == [b"1"]


@pytest.mark.anyio
async def test_the_context_variable_is_set_only_during_the_request() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert late_headers() is scope[SCOPE_KEY]

    with pytest.raises(LookupError, match="needs HeaderFirstMiddleware around the app"):
        late_headers()
    await call(HeaderFirstMiddleware(app))
    with pytest.raises(LookupError, match="needs HeaderFirstMiddleware around the app"):
        late_headers()


@pytest.mark.anyio
async def test_nested_middlewares_send_the_headers_once() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().add("x-late", "1")
        await send(START)
        await send(body(b""))

    recorder = await call(HeaderFirstMiddleware(HeaderFirstMiddleware(app)))
    assert recorder.headers == [(b"x-own", b"1"), (b"x-late", b"1")]


# --- around HeaderFirstStreamingResponse ----------------------------------------------------


@pytest.mark.anyio
async def test_a_header_first_streaming_response_inside_keeps_its_own_merge_order() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"x"

    async def resolver() -> dict[str, str]:
        return {"x-shared": "from-response-resolver"}

    async def endpoint(request: Request) -> Response:
        late_headers().update({"x-shared": "from-late", "x-late": "1"})
        return HeaderFirstStreamingResponse(
            chunks(), headers={"x-own": "o"}, header_resolver=resolver
        )

    async def app_resolver(scope: Scope) -> dict[str, str]:
        # The response took the late headers into its head; the store stays open until
        # the outermost holder, the middleware, sends it.
        assert not late_headers().sent
        return {"x-app": "a"}

    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(HeaderFirstMiddleware, resolver=app_resolver)
    recorder = await call(app, http_scope())
    assert recorder.status == 200
    assert sorted(recorder.headers) == [
        (b"x-app", b"a"),
        (b"x-late", b"1"),
        (b"x-own", b"o"),
        (b"x-shared", b"from-response-resolver"),
    ]
    assert recorder.body == b"x"


# --- late_headers without the middleware ----------------------------------------------------


def test_items_lists_the_headers_added_so_far_as_text() -> None:
    store = late_headers(http_scope())
    assert store.add("X-RateLimit-Remaining", 7) is True
    assert store.update({"x-id": " abc "}) is True
    assert store.items() == [("x-ratelimit-remaining", "7"), ("x-id", "abc")]
    assert store.sent is False


@pytest.mark.anyio
async def test_a_response_finds_late_headers_by_scope_without_the_middleware() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"x"

    with_store = http_scope()
    late_headers(with_store).add("x-late", "1")
    recorder = await call(HeaderFirstStreamingResponse(chunks()), with_store)
    assert recorder.headers == [(b"x-late", b"1")]

    recorder = await call(HeaderFirstStreamingResponse(chunks()), http_scope())
    assert recorder.headers == []
    assert recorder.body == b"x"
