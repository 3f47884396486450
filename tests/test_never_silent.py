"""Never silent: a late header added through any of our APIs reaches the client, or the add
says it will not (``False``), or a WARNING names it by the end of the request.

Per API: the request-bound store (``late_headers(request)``), the scope-bound store
(``late_headers(scope)``) and ``add_late_headers(headers, request)``. Tier 1 (direct ASGI
calls), asyncio and trio. "By the end of the request" is checked with the garbage collector
off: the WARNING may not wait for a collection.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from header_first_stream import (
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
    add_late_headers,
    late_headers,
)
from header_first_stream import _late as late_module

from ._asgi import (
    LOGGER,
    call,
    hanging_resolver,
    http_scope,
    receive_disconnect_after,
    receive_nothing,
    words,
)

pytestmark = pytest.mark.anyio

Add = Callable[[Request], bool]
"""One way of adding ``x-quota: 41`` to the request's response; returns what the add did."""

ADDS: dict[str, Add] = {
    "request-bound store": lambda request: late_headers(request).add("x-quota", 41),
    "scope-bound store": lambda request: late_headers(request.scope).add("x-quota", 41),
    "add_late_headers": lambda request: add_late_headers({"x-quota": 41}, request),
}

JSON_HEADERS = [(b"content-length", b"11"), (b"content-type", b"application/json")]

NEVER_SENT = (
    "late headers ['x-quota'] for /v1/models were never sent: no response head took them "
    "(return a HeaderFirstStreamingResponse, or add HeaderFirstMiddleware around the app "
    "for any response class)"
)
TOO_LATE = (
    "late headers ['x-quota'] for /v1/chat were added after the response head was sent and "
    "are not sent; add them before the response starts"
)
ENDED_WITHOUT_HEAD = (
    "late headers ['x-quota'] for /v1/models were never sent: the request ended before a "
    "response head went out (the app raised, or sent no response)"
)


def records(logs: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in logs.records if r.name == LOGGER]


@contextmanager
def no_garbage_collection() -> Iterator[None]:
    """The garbage collector off: what is logged here is logged without a collection."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def models_app(add: Add, results: list[bool], *, middleware: bool = False) -> Starlette:
    """``GET /v1/models``: adds ``x-quota`` with ``add``, returns Starlette's JSONResponse."""

    async def models(request: Request) -> Response:
        results.append(add(request))
        return JSONResponse({"data": []})

    app = Starlette(routes=[Route("/v1/models", models)])
    if middleware:
        app.add_middleware(HeaderFirstMiddleware)
    return app


# --- no middleware, a response that is not ours ----------------------------------------------


@pytest.mark.parametrize("api", ADDS)
async def test_without_the_middleware_a_warning_names_the_header_by_the_end_of_the_request(
    api: str, logs: pytest.LogCaptureFixture
) -> None:
    results: list[bool] = []
    app = models_app(ADDS[api], results)
    with no_garbage_collection():
        # The scope is the call's alone: the server drops it when the request ends.
        recorder = await call(app, http_scope(path="/v1/models"))
        assert records(logs) == [("WARNING", NEVER_SENT)]
    assert results == [True]  # the store cannot know yet that no head will take it
    assert recorder.status == 200
    assert recorder.headers == JSON_HEADERS
    assert recorder.body == b'{"data":[]}'


async def test_a_fastapi_dependency_without_the_middleware_is_named_by_the_end_of_the_request(
    logs: pytest.LogCaptureFixture,
) -> None:
    async def rate_limit(request: Request) -> None:
        late_headers(request).add("x-quota", 41)

    app = FastAPI()

    @app.get("/v1/models", dependencies=[Depends(rate_limit)])
    async def models() -> dict[str, list[str]]:
        return {"data": []}

    with no_garbage_collection():
        recorder = await call(app, http_scope(path="/v1/models"))
        assert records(logs) == [("WARNING", NEVER_SENT)]
    assert recorder.headers == JSON_HEADERS


async def test_add_late_headers_without_a_request_or_the_middleware_says_false_at_once(
    logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a fresh process: the WARNING is logged once per process.
    monkeypatch.setattr(late_module, "_missing_middleware_warned", False)
    results: list[bool] = []
    app = models_app(lambda request: add_late_headers({"x-quota": 41}), results)
    recorder = await call(app, http_scope(path="/v1/models"))
    assert results == [False]
    assert recorder.headers == JSON_HEADERS
    assert records(logs) == [
        (
            "WARNING",
            "add_late_headers() was called outside a request handled by HeaderFirstMiddleware, "
            "so its headers are not sent (logged once per process); add the middleware: "
            "app.add_middleware(HeaderFirstMiddleware), or "
            "header_first_stream.install_middleware(app) from code that runs after start-up",
        )
    ]


# --- behind the middleware -----------------------------------------------------------------


@pytest.mark.parametrize("api", ADDS)
async def test_behind_the_middleware_the_header_reaches_the_client(
    api: str, logs: pytest.LogCaptureFixture
) -> None:
    results: list[bool] = []
    app = models_app(ADDS[api], results, middleware=True)
    with no_garbage_collection():
        recorder = await call(app, http_scope(path="/v1/models"))
    gc.collect()
    assert results == [True]
    assert recorder.headers == [*JSON_HEADERS, (b"x-quota", b"41")]
    assert records(logs) == []


# Who sends the head the add comes after: Starlette's class behind the middleware (which
# holds its head until the first body message), or ours with no middleware.
AFTER_THE_HEAD = {
    "behind the middleware": (StreamingResponse, True),
    "our response without it": (HeaderFirstStreamingResponse, False),
}


@pytest.mark.parametrize("setup", AFTER_THE_HEAD)
@pytest.mark.parametrize("api", ADDS)
async def test_an_add_after_the_head_says_false_and_is_logged(
    api: str, setup: str, logs: pytest.LogCaptureFixture
) -> None:
    response_class, with_middleware = AFTER_THE_HEAD[setup]
    results: list[bool] = []

    async def endpoint(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first"
            results.append(ADDS[api](request))
            yield b"second"

        return response_class(chunks())

    app = Starlette(routes=[Route("/v1/chat", endpoint)])
    if with_middleware:
        app.add_middleware(HeaderFirstMiddleware)
    recorder = await call(app, http_scope(path="/v1/chat"))
    assert results == [False]
    assert recorder.headers == []
    assert recorder.body == b"firstsecond"
    assert records(logs) == [("WARNING", TOO_LATE)]


# --- a request that ends without a head --------------------------------------------------


async def test_behind_the_middleware_an_app_that_raises_before_its_head_is_named_at_its_end(
    logs: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers(scope).add("x-quota", 41)
        raise RuntimeError("upstream down")

    scope = http_scope(path="/v1/models")  # kept: the WARNING may not wait for the scope
    with pytest.raises(RuntimeError, match="upstream down"):
        await call(HeaderFirstMiddleware(app), scope)
    assert records(logs) == [("WARNING", ENDED_WITHOUT_HEAD)]
    assert late_headers(scope).sent is False  # no head took them
    del scope
    gc.collect()
    assert records(logs) == [("WARNING", ENDED_WITHOUT_HEAD)]  # named once


async def test_behind_nested_middlewares_an_app_that_sends_nothing_is_named_once(
    logs: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().add("x-quota", 41)

    scope = http_scope(path="/v1/models")
    recorder = await call(HeaderFirstMiddleware(HeaderFirstMiddleware(app)), scope)
    assert recorder.messages == []
    assert records(logs) == [("WARNING", ENDED_WITHOUT_HEAD)]
    del scope
    gc.collect()
    assert records(logs) == [("WARNING", ENDED_WITHOUT_HEAD)]


async def test_behind_the_middleware_a_client_that_left_before_the_head_logs_nothing(
    logs: pytest.LogCaptureFixture,
) -> None:
    # Nothing at all was sent to that client: its headers are not what went missing.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers(scope).add("x-quota", 41)
        await receive()  # the client leaves
        await JSONResponse({"data": []})(scope, receive, send)

    recorder = await call(
        HeaderFirstMiddleware(app), http_scope(path="/v1/models"), receive_disconnect_after(0.01)
    )
    gc.collect()
    assert recorder.messages == []
    assert records(logs) == []


async def test_our_response_whose_client_left_before_the_head_logs_nothing(
    logs: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers(scope).add("x-quota", 41)
        response = HeaderFirstStreamingResponse(words(b"a"), header_resolver=hanging_resolver)
        await response(scope, receive, send)

    for spec in ("2.3", "2.4"):
        scope = http_scope(path="/v1/models", spec_version=spec)
        recorder = await call(app, scope, receive_disconnect_after(0.01))
        assert recorder.messages == []
        assert late_headers(scope).sent is False  # no head took them
    del scope
    gc.collect()
    assert records(logs) == []


async def test_our_response_behind_the_middleware_whose_client_left_logs_nothing(
    logs: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().add("x-quota", 41)
        response = HeaderFirstStreamingResponse(words(b"a"), header_resolver=hanging_resolver)
        await response(scope, receive, send)

    recorder = await call(
        HeaderFirstMiddleware(app),
        http_scope(path="/v1/models", spec_version="2.4"),
        receive_disconnect_after(0.01),
    )
    gc.collect()
    assert recorder.messages == []
    assert records(logs) == []


async def test_a_header_our_response_sent_is_not_reported_when_the_scope_is_freed(
    logs: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers(scope).add("x-quota", 41)
        await HeaderFirstStreamingResponse(words(b"a"))(scope, receive, send)

    with no_garbage_collection():
        recorder = await call(app, http_scope(path="/v1/models"), receive_nothing())
    gc.collect()
    assert recorder.headers == [(b"x-quota", b"41")]
    assert records(logs) == []
