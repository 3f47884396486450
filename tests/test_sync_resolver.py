"""A resolver that is not async: a `TypeError` that says what to do, at construction when
that can be known, else at the first call; every async form works.

For the response classes' ``header_resolver=`` and `HeaderFirstMiddleware`'s
``resolver=``. Tier 1 (direct ASGI calls), asyncio and trio.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from header_first_stream import (
    HeaderFirstEventSourceResponse,
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
    HeaderSource,
)

from ._asgi import LOGGER, call, events, http_scope, words
from ._expect import SSE_HEADERS

QUOTA = {"x-quota": "41"}


# --- resolvers, sync and async, taking nothing (responses) or the scope (middleware) ----------


def get_headers(*scope: Scope) -> dict[str, str]:
    return QUOTA


async def fetch_headers(*scope: Scope) -> dict[str, str]:
    return QUOTA


def yield_headers(*scope: Scope) -> Iterator[dict[str, str]]:
    yield QUOTA


async def stream_headers(*scope: Scope) -> AsyncIterator[dict[str, str]]:
    yield QUOTA


class Limiter:
    def headers(self, *scope: Scope) -> dict[str, str]:
        return QUOTA

    async def fetch(self, *scope: Scope) -> dict[str, str]:
        return QUOTA


class AsyncResolver:
    async def __call__(self, *scope: Scope) -> dict[str, str]:
        return QUOTA


class SyncResolver:
    def __call__(self, *scope: Scope) -> dict[str, str]:
        return QUOTA


def traced(function: Callable[..., Awaitable[HeaderSource]]) -> Callable[..., Any]:
    """A decorator whose wrapper is a plain function returning the wrapped coroutine."""

    @functools.wraps(function)
    def wrapper(*args: Any) -> Awaitable[HeaderSource]:
        return function(*args)

    return wrapper


@traced
async def traced_headers(*scope: Scope) -> dict[str, str]:
    return QUOTA


# Known at construction: (resolver, what the message says of it).
PLAIN = (
    "get_headers() is a plain function, so awaiting what it returns fails on every request; "
    "declare it `async def get_headers(...)`"
)
NOT_ASYNC: dict[str, tuple[Any, str]] = {
    "a plain function": (get_headers, PLAIN),
    "a partial of a plain function": (functools.partial(get_headers), PLAIN),
    "a partial of a partial": (functools.partial(functools.partial(get_headers)), PLAIN),
    "a bound method": (
        Limiter().headers,
        "headers() is a plain function, so awaiting what it returns fails on every request; "
        "declare it `async def headers(...)`",
    ),
    "a generator function": (
        yield_headers,
        "yield_headers() is a generator function, so it returns no awaitable; return the "
        "headers from `async def yield_headers(...)` instead of yielding them",
    ),
    "an async generator function": (
        stream_headers,
        "stream_headers() is an async generator function, so it returns no awaitable; return "
        "the headers from `async def stream_headers(...)` instead of yielding them",
    ),
}

# Async however they are written: each sends ``x-quota: 41``.
ASYNC: dict[str, Any] = {
    "async def": fetch_headers,
    "a lambda returning a coroutine (the quick start's form)": lambda *scope: fetch_headers(),
    "a partial of an async function": functools.partial(fetch_headers),
    "a partial of a partial": functools.partial(functools.partial(fetch_headers)),
    "a bound async method": Limiter().fetch,
    "an object with an async __call__": AsyncResolver(),
    "a decorator's plain wrapper (functools.wraps)": traced_headers,
}

# Only their result shows it: the first call fails, saying what to do.
RETURNS_A_DICT: dict[str, Any] = {
    "a lambda returning a dict": lambda *scope: QUOTA,
    "an object with a plain __call__": SyncResolver(),
    "a decorator's wrapper of a plain function": traced(get_headers),  # type: ignore[arg-type]
}


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def raised(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The exceptions logged with the records, as ``Type: message``."""
    return [
        f"{type(r.exc_info[1]).__name__}: {r.exc_info[1]}"
        for r in caplog.records
        if r.name == LOGGER and r.exc_info is not None and r.exc_info[1] is not None
    ]


async def json_app(scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"data": []})(scope, receive, send)


JSON_HEADERS = [(b"content-length", b"11"), (b"content-type", b"application/json")]


# --- at construction --------------------------------------------------------------------


@pytest.mark.parametrize("case", NOT_ASYNC)
def test_a_response_refuses_a_resolver_known_not_to_be_async(case: str) -> None:
    resolver, reason = NOT_ASYNC[case]
    message = f"header_resolver must be an async callable: {reason}"
    with pytest.raises(TypeError) as streaming:
        HeaderFirstStreamingResponse(words(b"a"), header_resolver=resolver)
    with pytest.raises(TypeError) as sse:
        HeaderFirstEventSourceResponse(events("a"), header_resolver=resolver)
    assert str(streaming.value) == str(sse.value) == message


@pytest.mark.parametrize("case", NOT_ASYNC)
def test_the_middleware_refuses_a_resolver_known_not_to_be_async(case: str) -> None:
    resolver, reason = NOT_ASYNC[case]
    with pytest.raises(TypeError) as info:
        HeaderFirstMiddleware(json_app, resolver=resolver)
    assert str(info.value) == f"resolver must be an async callable taking the ASGI scope: {reason}"


def test_assigning_a_plain_function_later_is_refused_too() -> None:
    response = HeaderFirstStreamingResponse(words(b"a"), header_resolver=fetch_headers)
    middleware = HeaderFirstMiddleware(json_app, resolver=fetch_headers)
    with pytest.raises(TypeError) as for_response:
        response.header_resolver = get_headers
    with pytest.raises(TypeError) as for_middleware:
        middleware.resolver = get_headers
    assert str(for_response.value) == f"header_resolver must be an async callable: {PLAIN}"
    assert str(for_middleware.value) == (
        f"resolver must be an async callable taking the ASGI scope: {PLAIN}"
    )
    assert response.header_resolver is fetch_headers
    assert middleware.resolver is fetch_headers


# --- every async form works --------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("case", ASYNC)
async def test_every_async_form_sends_its_headers_from_both_response_classes(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    resolver = ASYNC[case]
    streaming = await call(HeaderFirstStreamingResponse(words(b"a"), header_resolver=resolver))
    sse = await call(HeaderFirstEventSourceResponse(events("a"), header_resolver=resolver))
    assert (streaming.status, streaming.headers, streaming.body) == (
        200,
        [(b"x-quota", b"41")],
        b"a",
    )
    assert (sse.status, sse.headers) == (200, [*SSE_HEADERS, (b"x-quota", b"41")])
    assert sse.body == b"data: a\r\n\r\n"
    assert records(caplog) == []


@pytest.mark.anyio
@pytest.mark.parametrize("case", ASYNC)
async def test_every_async_form_sends_its_headers_from_the_middleware(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = await call(HeaderFirstMiddleware(json_app, resolver=ASYNC[case]))
    assert recorder.status == 200
    assert recorder.headers == [*JSON_HEADERS, (b"x-quota", b"41")]
    assert records(caplog) == []


# --- at the first call -------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("case", RETURNS_A_DICT)
async def test_a_response_whose_resolver_returns_no_awaitable_fails_saying_what_to_do(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    resolver = RETURNS_A_DICT[case]
    scope = http_scope(path="/v1/chat")
    streaming = await call(
        HeaderFirstStreamingResponse(words(b"a"), header_resolver=resolver), scope
    )
    sse = await call(HeaderFirstEventSourceResponse(events("a"), header_resolver=resolver), scope)
    for recorder in (streaming, sse):
        assert recorder.status == 500
        assert recorder.body == b"Internal Server Error"
    assert records(caplog) == [("ERROR", "header resolver failed for /v1/chat")] * 2
    assert (
        raised(caplog)
        == ["TypeError: header_resolver returned dict, not an awaitable: declare it `async def`"]
        * 2
    )


@pytest.mark.anyio
@pytest.mark.parametrize("case", RETURNS_A_DICT)
async def test_the_middleware_whose_resolver_returns_no_awaitable_fails_saying_what_to_do(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    middleware = HeaderFirstMiddleware(json_app, resolver=RETURNS_A_DICT[case])
    recorder = await call(middleware, http_scope(path="/v1/models"))
    assert recorder.status == 500
    assert recorder.body == b"Internal Server Error"
    assert records(caplog) == [("ERROR", "header resolver failed for /v1/models")]
    assert raised(caplog) == [
        "TypeError: resolver returned dict, not an awaitable: declare it `async def`"
    ]


@pytest.mark.anyio
async def test_under_degrade_a_resolver_that_returns_no_awaitable_is_warned_each_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    middleware = HeaderFirstMiddleware(
        json_app,
        resolver=RETURNS_A_DICT["a lambda returning a dict"],
        on_resolver_error="degrade",
    )
    for _ in range(2):
        recorder = await call(middleware, http_scope(path="/v1/models"))
        assert (recorder.status, recorder.headers) == (200, JSON_HEADERS)
    warning = (
        "WARNING",
        "header resolver failed for /v1/models; sending the response without its headers",
    )
    assert records(caplog) == [warning, warning]
    assert (
        raised(caplog)
        == ["TypeError: resolver returned dict, not an awaitable: declare it `async def`"] * 2
    )
