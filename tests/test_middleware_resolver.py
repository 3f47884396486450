"""`HeaderFirstMiddleware`'s app-level resolver: its headers win, its failures answer an
error response instead of the app's head.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
from starlette.types import Receive, Scope, Send

from header_first_stream import HeaderFirstMiddleware, late_headers

from ._asgi import START, body, call, http_scope, no_current_store

# --- the app-level resolver -----------------------------------------------------------------


@pytest.mark.anyio
async def test_the_resolver_gets_the_scope_and_wins_over_late_and_own_headers() -> None:
    seen: list[Scope] = []

    async def resolver(scope: Scope) -> list[tuple[str, str | int]]:
        seen.append(scope)
        return [("x-own", "resolver"), ("x-count", 3)]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().update({"x-own": "late", "x-late": "1"})
        await send(START)
        await send(body(b"ok"))

    scope = http_scope()
    recorder = await call(HeaderFirstMiddleware(app, resolver=resolver), scope)
    assert seen == [scope]
    assert recorder.headers == [(b"x-late", b"1"), (b"x-own", b"resolver"), (b"x-count", b"3")]
    assert recorder.body == b"ok"


@pytest.mark.anyio
async def test_late_headers_added_while_the_resolver_runs_still_go_out() -> None:
    async def resolver(scope: Scope) -> dict[str, str]:
        assert late_headers().add("x-added-by-resolver", "1") is True
        return {"x-resolved": "2"}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        await send(body(b""))

    recorder = await call(HeaderFirstMiddleware(app, resolver=resolver))
    assert recorder.headers == [
        (b"x-own", b"1"),
        (b"x-added-by-resolver", b"1"),
        (b"x-resolved", b"2"),
    ]


@pytest.mark.anyio
async def test_the_resolver_also_runs_for_an_app_that_returns_after_its_start() -> None:
    async def resolver(scope: Scope) -> dict[str, str]:
        return {"x-resolved": "1"}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)

    recorder = await call(HeaderFirstMiddleware(app, resolver=resolver, resolver_timeout=5))
    assert recorder.headers == [(b"x-own", b"1"), (b"x-resolved", b"1")]
    assert recorder.types == ["http.response.start", "http.response.body"]


async def _failing_resolver(scope: Scope) -> dict[str, str]:
    raise RuntimeError("rate-limit store down")


async def _slow_resolver(scope: Scope) -> dict[str, str]:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


async def _split_resolver(scope: Scope) -> dict[str, str]:
    return {"x-bad": "a\r\nset-cookie: stolen=1"}


async def _framing_resolver(scope: Scope) -> dict[str, int]:
    return {"content-length": 3}


def _streaming_app(finished: list[str]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().add("x-request-id", "r1")
        try:
            await send(START)
            for index in range(1000):
                await send(body(b"chunk", more=True))
                finished.append(f"sent chunk {index}")  # pragma: no cover
        finally:
            finished.append("app ended")

    return app


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("resolver", "status", "text", "logged"),
    [
        (_failing_resolver, 500, b"Internal Server Error", "header resolver failed for /p"),
        (_split_resolver, 500, b"Internal Server Error", "header resolver failed for /p"),
        (_framing_resolver, 500, b"Internal Server Error", "header resolver failed for /p"),
        (_slow_resolver, 504, b"Gateway Timeout", "header resolver timed out after 0.05s for /p"),
    ],
    ids=["raises", "control-character", "framing-header", "timeout"],
)
async def test_a_failing_resolver_gives_an_error_response_and_stops_the_app(
    resolver: Any, status: int, text: bytes, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    finished: list[str] = []
    middleware = HeaderFirstMiddleware(
        _streaming_app(finished), resolver=resolver, resolver_timeout=0.05
    )
    with caplog.at_level(logging.WARNING, logger="header_first_stream"), anyio.fail_after(5):
        recorder = await call(middleware, http_scope(path="/p"))
    assert [message for _, message in recorder.messages] == [
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(text)).encode()),
                (b"x-request-id", b"r1"),
            ],
        },
        {"type": "http.response.body", "body": text, "more_body": False},
    ]
    assert finished == ["app ended"]  # cancelled at its first body message
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("ERROR", logged)]
    assert no_current_store()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("resolver", "logged"),
    [
        (
            _failing_resolver,
            "header resolver failed for /p; sending the response without its headers",
        ),
        (
            _slow_resolver,
            "header resolver timed out after 0.05s for /p; "
            "sending the response without its headers",
        ),
    ],
    ids=["raises", "timeout"],
)
async def test_a_failing_resolver_with_degrade_sends_the_response_without_its_headers(
    resolver: Any, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().add("x-late", "1")
        await send(START)
        await send(body(b"ok"))

    middleware = HeaderFirstMiddleware(
        app, resolver=resolver, resolver_timeout=0.05, on_resolver_error="degrade"
    )
    with caplog.at_level(logging.WARNING, logger="header_first_stream"), anyio.fail_after(5):
        recorder = await call(middleware, http_scope(path="/p"))
    assert recorder.headers == [(b"x-own", b"1"), (b"x-late", b"1")]
    assert recorder.body == b"ok"
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", logged)]


@pytest.mark.anyio
async def test_a_failing_resolver_after_the_app_returned_gives_the_error_response() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)

    recorder = await call(HeaderFirstMiddleware(app, resolver=_failing_resolver))
    assert recorder.status == 500
    assert recorder.body == b"Internal Server Error"
    assert recorder.types == ["http.response.start", "http.response.body"]


@pytest.mark.anyio
async def test_what_a_cancelled_app_sends_in_shielded_clean_up_is_dropped() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        try:
            await send(body(b"first", more=True))
        finally:
            with anyio.CancelScope(shield=True):
                await send(body(b"goodbye"))

    recorder = await call(HeaderFirstMiddleware(app, resolver=_failing_resolver))
    assert recorder.types == ["http.response.start", "http.response.body"]
    assert recorder.status == 500
    assert recorder.body == b"Internal Server Error"


# --- a resolver that is not async -----------------------------------------------------------


def _plain_resolver(scope: Scope) -> dict[str, str]:
    return {"x-resolved": "1"}  # pragma: no cover - refused before any request


def test_a_plain_function_as_resolver_is_refused_at_construction() -> None:
    with pytest.raises(TypeError) as info:
        HeaderFirstMiddleware(_noop_app, resolver=_plain_resolver)  # type: ignore[arg-type]
    assert str(info.value) == (
        "resolver must be an async callable taking the ASGI scope: _plain_resolver() is a "
        "plain function, so awaiting what it returns fails on every request; declare it "
        "`async def _plain_resolver(...)`"
    )


async def _noop_app(scope: Scope, receive: Receive, send: Send) -> None:
    pass  # pragma: no cover


@pytest.mark.anyio
async def test_a_resolver_that_returns_no_awaitable_gives_500_saying_to_declare_it_async(
    caplog: pytest.LogCaptureFixture,
) -> None:
    finished: list[str] = []
    middleware = HeaderFirstMiddleware(
        _streaming_app(finished),
        resolver=lambda scope: {"x-resolved": "1"},  # type: ignore[arg-type,return-value]
    )
    with caplog.at_level(logging.WARNING, logger="header_first_stream"), anyio.fail_after(5):
        recorder = await call(middleware, http_scope(path="/p"))
    assert recorder.status == 500
    assert recorder.body == b"Internal Server Error"
    assert finished == ["app ended"]
    (record,) = caplog.records
    assert (record.levelname, record.getMessage()) == ("ERROR", "header resolver failed for /p")
    assert record.exc_info is not None
    error = record.exc_info[1]
    assert isinstance(error, TypeError)
    assert str(error) == "resolver returned dict, not an awaitable: declare it `async def`"
