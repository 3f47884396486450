"""`HeaderFirstMiddleware` and the size limits of a head it changed, at the ASGI level.

Over a limit the middleware answers ``500`` in the app's place and stops the app: with a
resolver by cancelling the scope the app runs in, without one by raising `_Answered`
from the app's ``send`` (no cancel scope per request for a rare error). Every test runs
on asyncio and trio; those that depend on how an app reacts to a failed ``send`` run on
both ASGI disconnect paths (spec 2.3 and 2.4).
"""

from __future__ import annotations

import logging

import anyio
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from header_first_stream import HeaderFirstMiddleware, late_headers
from header_first_stream._types import HeaderSource

from ._asgi import call, http_scope

pytestmark = pytest.mark.anyio

SPECS = pytest.mark.parametrize("spec", ["2.3", "2.4"])

ERROR_500 = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", b"21"),
]

BIG = "v" * 9000


def error_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def middleware_app(endpoint_headers: dict[str, str] | None = None) -> Starlette:
    async def endpoint(request: object) -> Response:
        late_headers().update(endpoint_headers or {})
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", endpoint)])


async def test_the_middleware_refuses_an_oversized_late_header_with_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = HeaderFirstMiddleware(middleware_app({"x-id": "1", "x-big": BIG}))
    recorder = await call(app)
    assert recorder.status == 500
    assert recorder.headers == ERROR_500
    assert recorder.body == b"Internal Server Error"
    assert recorder.types == ["http.response.start", "http.response.body"]
    assert error_records(caplog) == ["response head too large for /"]


async def test_the_middleware_resolver_failure_with_oversized_late_headers_drops_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def resolver(scope: Scope) -> HeaderSource:
        raise RuntimeError("rate limiter down")

    app = HeaderFirstMiddleware(middleware_app({"x-big": BIG}), resolver=resolver)
    recorder = await call(app)
    assert recorder.status == 500
    assert recorder.headers == ERROR_500
    assert error_records(caplog) == [
        "header resolver failed for /",
        "response head too large for /",
    ]


@SPECS
@pytest.mark.parametrize("with_resolver", [False, True], ids=["no-resolver", "resolver"])
async def test_the_middleware_stops_an_endless_app_after_answering_an_oversized_head(
    spec: str, with_resolver: bool
) -> None:
    pulled: list[int] = []

    class Endless:  # not a generator: Starlette leaves those to the garbage collector
        def __aiter__(self) -> Endless:
            return self

        async def __anext__(self) -> bytes:
            pulled.append(1)
            return b"x"

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().add("x-big", BIG)
        await StreamingResponse(Endless())(scope, receive, send)

    async def resolver(scope: Scope) -> HeaderSource:
        return {}

    middleware = HeaderFirstMiddleware(app, resolver=resolver if with_resolver else None)
    with anyio.fail_after(5):
        recorder = await call(middleware, http_scope(spec_version=spec))
    assert recorder.status == 500
    assert recorder.headers == ERROR_500
    assert recorder.body == b"Internal Server Error"
    assert recorder.types == ["http.response.start", "http.response.body"]
    assert len(pulled) == 1


async def test_the_middleware_limits_are_class_attributes_too() -> None:
    app = HeaderFirstMiddleware(middleware_app({"x-big": BIG}))
    app.max_header_value_size = 10_000
    recorder = await call(app)
    assert recorder.status == 200
    assert (b"x-big", BIG.encode()) in recorder.headers


async def test_the_middleware_passes_a_head_it_did_not_change_unchecked() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("ok", headers={"x-big": BIG})(scope, receive, send)

    recorder = await call(HeaderFirstMiddleware(app))
    assert recorder.status == 200
    assert (b"x-big", BIG.encode()) in recorder.headers


async def test_an_app_that_sends_on_after_the_answer_is_stopped_again() -> None:
    sends: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().add("x-big", BIG)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.body", "body": b"a", "more_body": True})
        except anyio.get_cancelled_exc_class():
            sends.append("cancelled at the send after the answer")
            raise
        sends.append("not stopped")

    recorder = await call(HeaderFirstMiddleware(app))
    assert recorder.status == 500
    assert recorder.body == b"Internal Server Error"
    assert sends == ["cancelled at the send after the answer"]


async def test_an_app_that_sends_from_a_task_group_is_stopped_too() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().add("x-big", BIG)

        async def respond() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"a", "more_body": False})

        async with anyio.create_task_group() as group:
            group.start_soon(respond)

    recorder = await call(HeaderFirstMiddleware(app))
    assert recorder.status == 500
    assert recorder.headers == ERROR_500


async def test_another_error_of_an_app_in_a_task_group_still_propagates() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().add("x-big", BIG)

        async def respond() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"a", "more_body": False})

        async def fail() -> None:
            raise LookupError("the app's own error")

        async with anyio.create_task_group() as group:
            group.start_soon(respond)
            group.start_soon(fail)

    with pytest.raises(BaseExceptionGroup) as info:
        await call(HeaderFirstMiddleware(app))
    assert info.group_contains(LookupError)


async def test_an_oversized_head_of_an_app_that_returned_after_its_start_is_answered() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().add("x-big", BIG)
        await send({"type": "http.response.start", "status": 204, "headers": []})

    recorder = await call(HeaderFirstMiddleware(app))
    assert recorder.status == 500
    assert recorder.headers == ERROR_500
    assert recorder.body == b"Internal Server Error"
