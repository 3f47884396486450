"""`add_late_headers`: the never-raising form for hook and library authors.

Direct ASGI calls (tier 1) record what is sent, on asyncio and trio.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from header_first_stream import (
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
    add_late_headers,
    late_headers,
)

from ._asgi import call, http_scope
from ._expect import run_python

pytestmark = pytest.mark.anyio

START: Message = {"type": "http.response.start", "status": 200, "headers": [(b"x-own", b"1")]}
END: Message = {"type": "http.response.body", "body": b"ok", "more_body": False}


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (r.levelname, r.getMessage()) for r in caplog.records if r.name == "header_first_stream"
    ]


async def test_without_a_request_it_adds_to_the_middlewares_store_and_returns_true() -> None:
    results: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[str, str | int] = {"x-rate": 41, "x-id": "abc"}
        results.append(add_late_headers(headers))
        await send(START)
        results.append(add_late_headers([("x-after-start", "yes")]))
        await send(END)

    recorder = await call(HeaderFirstMiddleware(app))
    assert results == [True, True]
    assert recorder.status == 200
    assert recorder.headers == [
        (b"x-own", b"1"),
        (b"x-rate", b"41"),
        (b"x-id", b"abc"),
        (b"x-after-start", b"yes"),
    ]
    assert recorder.body == b"ok"


@pytest.mark.parametrize("form", ["request", "scope"])
async def test_with_a_request_it_adds_to_that_requests_store_under_the_middleware(
    form: str,
) -> None:
    results: list[bool] = []

    async def endpoint(request: Request) -> Response:
        results.append(
            add_late_headers({"x-rate": 7}, request if form == "request" else request.scope)
        )
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(HeaderFirstMiddleware)
    recorder = await call(app)
    assert results == [True]
    assert recorder.headers == [
        (b"content-length", b"11"),
        (b"content-type", b"application/json"),
        (b"x-rate", b"7"),
    ]
    assert recorder.body == b'{"ok":true}'


async def test_with_a_request_and_no_middleware_a_header_first_response_sends_them() -> None:
    results: list[bool] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b"data"

    async def endpoint(request: Request) -> Response:
        results.append(add_late_headers({"x-rate": 7}, request))
        return HeaderFirstStreamingResponse(chunks(), media_type="text/plain")

    recorder = await call(Starlette(routes=[Route("/", endpoint)]))
    assert results == [True]
    assert recorder.headers == [(b"content-type", b"text/plain; charset=utf-8"), (b"x-rate", b"7")]
    assert recorder.body == b"data"


async def test_without_middleware_or_request_it_returns_false_and_the_response_is_unchanged() -> (
    None
):
    results: list[bool] = []

    async def endpoint(request: Request) -> Response:
        results.append(add_late_headers({"x-rate": 7}))
        return JSONResponse({"ok": True})

    recorder = await call(Starlette(routes=[Route("/", endpoint)]))
    assert results == [False]
    assert recorder.status == 200
    assert recorder.headers == [(b"content-length", b"11"), (b"content-type", b"application/json")]
    assert recorder.body == b'{"ok":true}'


def test_without_middleware_it_warns_once_per_process_saying_what_to_install() -> None:
    # A fresh process: the one WARNING is per process, so this one must not have logged it.
    script = (
        "import logging\n"
        "from header_first_stream import add_late_headers\n"
        "logging.basicConfig(format='%(levelname)s %(name)s %(message)s')\n"
        "results = [add_late_headers({'x-a': 1}) for _ in range(3)]\n"
        "assert results == [False, False, False], results\n"
    )
    result = run_python(script)
    assert result.stderr.splitlines() == [
        "WARNING header_first_stream add_late_headers() was called outside a request handled "
        "by HeaderFirstMiddleware, so its headers are not sent (logged once per process); "
        "add the middleware: app.add_middleware(HeaderFirstMiddleware), or "
        "header_first_stream.install_middleware(app) from code that runs after start-up"
    ]


@pytest.mark.parametrize(
    ("headers", "kept", "logged"),
    [
        (
            {"x-good": "1", "x-evil": "a\r\nx-injected: 1", "x-also-good": 2},
            [(b"x-good", b"1"), (b"x-also-good", b"2")],
            [
                "late header dropped for /hook: invalid header value for 'x-evil': contains "
                "'\\r' (header values may not contain control characters)"
            ],
        ),
        (
            [("bad name", "1"), ("x-good", "1"), ("content-length", "5"), ("x-f", 1.5)],
            [(b"x-good", b"1")],
            [
                "late header dropped for /hook: invalid header name 'bad name' (header names "
                "must be RFC 9110 tokens: letters, digits and !#$%&'*+-.^_`|~)",
                "late header dropped for /hook: invalid late header 'content-length' (the "
                "server frames the body: late headers may not set content-length or "
                "transfer-encoding)",
                "late header dropped for /hook: invalid header value for 'x-f': float "
                "(header values must be str or int)",
            ],
        ),
        (
            [("x-good", "1"), ("x-lonely",)],
            [(b"x-good", b"1")],
            [
                "late header dropped for /hook: invalid header entry ('x-lonely',) "
                "(expected a (name, value) pair)"
            ],
        ),
        (
            "x-not-a-mapping: 1",
            [],
            ["late headers dropped for /hook: got str (pass a mapping or (name, value) pairs)"],
        ),
        (
            None,
            [],
            [
                "late headers dropped for /hook: got NoneType "
                "(pass a mapping or (name, value) pairs)"
            ],
        ),
    ],
)
async def test_invalid_headers_are_dropped_with_a_warning_naming_them_and_valid_ones_go(
    headers: Any,
    kept: list[tuple[bytes, bytes]],
    logged: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    results: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        results.append(add_late_headers(headers))
        await send(START)
        await send(END)

    with caplog.at_level(logging.WARNING, logger="header_first_stream"):
        recorder = await call(HeaderFirstMiddleware(app), http_scope(path="/hook"))
    assert results == [False]
    assert recorder.status == 200
    assert recorder.headers == [(b"x-own", b"1"), *kept]
    assert warnings_of(caplog) == [("WARNING", message) for message in logged]


async def test_after_the_head_went_out_it_returns_false_and_warns_instead_of_raising(
    caplog: pytest.LogCaptureFixture,
) -> None:
    results: list[bool] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first"
        results.append(add_late_headers({"x-too-late": "1"}))
        yield b"second"

    async def endpoint(request: Request) -> Response:
        return StreamingResponse(chunks())

    app = Starlette(routes=[Route("/stream", endpoint)])
    app.add_middleware(HeaderFirstMiddleware)
    with caplog.at_level(logging.WARNING, logger="header_first_stream"):
        recorder = await call(app, http_scope(path="/stream"))
    assert results == [False]
    assert recorder.headers == []
    assert recorder.body == b"firstsecond"
    assert warnings_of(caplog) == [
        (
            "WARNING",
            "late headers ['x-too-late'] for /stream were added after the response head was "
            "sent and are not sent; add them before the response starts",
        )
    ]


async def test_a_request_that_is_not_a_request_returns_false_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="header_first_stream"):
        assert add_late_headers({"x-a": 1}, "GET /") is False  # type: ignore[arg-type]
    assert warnings_of(caplog) == [
        (
            "WARNING",
            "add_late_headers() got request='GET /', which is neither an ASGI scope nor has "
            "one; its headers are not sent (pass the Request, its scope, or nothing)",
        )
    ]


async def test_the_strict_form_still_raises_where_the_safe_form_returns_false() -> None:
    with pytest.raises(LookupError, match="needs HeaderFirstMiddleware around the app"):
        late_headers()
