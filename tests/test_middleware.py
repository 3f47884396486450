"""`HeaderFirstMiddleware` and `late_headers()`: direct ASGI calls record when and what is sent;
in-process clients check content of Starlette and FastAPI apps."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi import Request as FastAPIRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from header_first_stream import (
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
    LateHeaders,
    late_headers,
)
from header_first_stream._late import CURRENT, SCOPE_KEY

from ._asgi import Recorder, call, http_scope, receive_disconnect_after, websocket_scope

START: Message = {"type": "http.response.start", "status": 200, "headers": [(b"x-own", b"1")]}


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


def header_values(recorder: Recorder, name: bytes) -> list[bytes]:
    return [value for key, value in recorder.headers if key == name]


def no_current_store() -> bool:
    try:
        CURRENT.get()
    except LookupError:
        return True
    return False


# --- construction -------------------------------------------------------------------------


async def _noop_app(scope: Scope, receive: Receive, send: Send) -> None:
    pass  # pragma: no cover


def test_rejects_a_resolver_that_is_not_callable() -> None:
    with pytest.raises(TypeError, match="resolver must be an async callable taking the ASGI scope"):
        HeaderFirstMiddleware(_noop_app, resolver="x")  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_rejects_a_resolver_timeout_that_is_not_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="resolver_timeout must be a positive number"):
        HeaderFirstMiddleware(_noop_app, resolver_timeout=timeout)


def test_rejects_an_unknown_resolver_error_policy() -> None:
    with pytest.raises(ValueError, match="on_resolver_error must be 'error' or 'degrade'"):
        HeaderFirstMiddleware(_noop_app, on_resolver_error="ignore")  # type: ignore[arg-type]


# --- scopes it does not touch -------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "scope", [{"type": "lifespan", "asgi": {"version": "3.0"}}, websocket_scope()]
)
async def test_lifespan_and_websocket_scopes_pass_through_untouched(scope: Scope) -> None:
    seen: list[tuple[Scope, Receive, Send, bool]] = []

    async def app(inner_scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((inner_scope, receive, send, no_current_store()))

    async def receive() -> Message:
        raise AssertionError("unreachable")  # pragma: no cover

    recorder = Recorder()
    await HeaderFirstMiddleware(app)(scope, receive, recorder)
    assert len(seen) == 1
    assert seen[0][0] is scope
    assert seen[0][1] is receive
    assert seen[0][2] is recorder
    assert seen[0][3] is True  # no late-headers store for these scopes
    assert SCOPE_KEY not in scope


# --- holding the head ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_headers_added_between_start_and_first_body_are_in_the_head() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        late_headers().add("x-late", "after-start")
        await send(body(b"data"))

    recorder = await call(HeaderFirstMiddleware(app))
    assert recorder.types == ["http.response.start", "http.response.body"]
    assert recorder.status == 200
    assert recorder.headers == [(b"x-own", b"1"), (b"x-late", b"after-start")]
    assert recorder.body == b"data"


@pytest.mark.anyio
async def test_head_goes_out_with_the_first_body_and_later_chunks_are_not_buffered() -> None:
    recorder = Recorder()
    seen_by_app: list[list[str]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().add("x-late", 1)
        await send(START)
        seen_by_app.append(recorder.types)
        await send(body(b"first", more=True))
        seen_by_app.append(recorder.types)
        await send(body(b"second", more=True))
        seen_by_app.append(recorder.types)
        await send(body(b""))

    await call(HeaderFirstMiddleware(app), send=recorder)
    assert seen_by_app == [
        [],
        ["http.response.start", "http.response.body"],
        ["http.response.start", "http.response.body", "http.response.body"],
    ]
    assert recorder.headers == [(b"x-own", b"1"), (b"x-late", b"1")]
    assert recorder.body == b"firstsecond"


@pytest.mark.anyio
async def test_messages_are_passed_on_as_sent_and_the_start_unchanged_without_late_headers() -> (
    None
):
    sent = [START, body(b"a", more=True), body(b"b")]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        for message in sent:
            await send(message)

    recorder = await call(HeaderFirstMiddleware(app))
    assert [message for _, message in recorder.messages] == sent
    assert all(got is original for (_, got), original in zip(recorder.messages, sent, strict=True))


@pytest.mark.anyio
async def test_late_headers_replace_the_apps_own_headers_of_the_same_name_in_any_case() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().update([("X-Rate", 5), ("x-other", "o")])
        start = {
            "type": "http.response.start",
            "status": 201,
            "headers": [(b"X-Rate", b"own"), (b"content-type", b"text/plain"), (b"x-rate", b"2")],
        }
        await send(start)
        await send(body(b"ok"))

    recorder = await call(HeaderFirstMiddleware(app))
    assert recorder.status == 201
    assert recorder.headers == [
        (b"content-type", b"text/plain"),
        (b"x-rate", b"5"),
        (b"x-other", b"o"),
    ]


@pytest.mark.anyio
async def test_a_message_before_the_start_passes_through_at_once() -> None:
    debug: Message = {"type": "http.response.debug", "info": {}}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(debug)
        late_headers().add("x-late", "1")
        await send(START)
        await send(body(b""))

    recorder = await call(HeaderFirstMiddleware(app))
    assert recorder.messages[0][1] is debug
    assert recorder.types == ["http.response.debug", "http.response.start", "http.response.body"]
    assert header_values(recorder, b"x-late") == [b"1"]


@pytest.mark.anyio
async def test_a_second_start_is_passed_on_after_the_first_head_for_the_server_to_refuse() -> None:
    second: Message = {"type": "http.response.start", "status": 500, "headers": []}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        await send(second)

    recorder = await call(HeaderFirstMiddleware(app))
    assert [message for _, message in recorder.messages] == [START, second]


# --- how a response ends --------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_app_that_returns_after_its_start_gets_the_head_and_an_empty_final_body() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().add("x-late", "1")
        await send(START)

    recorder = await call(HeaderFirstMiddleware(app))
    assert [message for _, message in recorder.messages] == [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"x-own", b"1"), (b"x-late", b"1")],
        },
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]


@pytest.mark.anyio
async def test_an_app_that_sends_nothing_gets_nothing_sent() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().add("x-late", "1")

    recorder = await call(HeaderFirstMiddleware(app))
    assert recorder.messages == []


@pytest.mark.anyio
async def test_an_exception_before_the_head_propagates_and_nothing_is_sent() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        raise RuntimeError("upstream broke")

    recorder = Recorder()
    with pytest.raises(RuntimeError, match="upstream broke"):
        await call(HeaderFirstMiddleware(app), send=recorder)
    assert recorder.messages == []
    assert no_current_store()


@pytest.mark.anyio
async def test_an_exception_after_the_head_propagates_after_what_was_sent() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        late_headers().add("x-late", "1")
        await send(START)
        await send(body(b"part", more=True))
        raise RuntimeError("upstream broke mid-stream")

    recorder = Recorder()
    with pytest.raises(RuntimeError, match="upstream broke mid-stream"):
        await call(HeaderFirstMiddleware(app), send=recorder)
    assert recorder.types == ["http.response.start", "http.response.body"]
    assert header_values(recorder, b"x-late") == [b"1"]
    assert recorder.body == b"part"


@pytest.mark.anyio
async def test_starlettes_error_middleware_still_answers_500_when_the_endpoint_raises() -> None:
    async def endpoint(request: Request) -> Response:
        late_headers(request).add("x-late", "1")
        raise RuntimeError("endpoint broke")

    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(HeaderFirstMiddleware)
    recorder = Recorder()
    with pytest.raises(RuntimeError, match="endpoint broke"):
        await call(app, http_scope(), send=recorder)
    assert recorder.status == 500
    assert recorder.body == b"Internal Server Error"
    assert header_values(recorder, b"x-late") == []  # the error middleware's own response


@pytest.mark.anyio
async def test_a_disconnect_while_the_head_is_held_sends_nothing_and_leaks_nothing() -> None:
    closed = anyio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        try:
            await anyio.sleep_forever()
            yield b"never"  # pragma: no cover
        finally:
            closed.set()

    async def endpoint(request: Request) -> Response:
        late_headers().add("x-late", "1")
        return StreamingResponse(chunks())

    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(HeaderFirstMiddleware)
    scope = http_scope(spec_version="2.3")
    with anyio.fail_after(5):
        recorder = await call(app, scope, receive_disconnect_after(0.05))
    assert recorder.messages == []
    assert closed.is_set()
    assert no_current_store()
    store: LateHeaders = scope[SCOPE_KEY]
    assert store.sent is False  # never taken: no head went out


@pytest.mark.anyio
async def test_an_app_that_returns_on_disconnect_with_its_head_held_gets_no_final_body() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        assert (await receive())["type"] == "http.disconnect"

    with anyio.fail_after(5):
        recorder = await call(HeaderFirstMiddleware(app), None, receive_disconnect_after(0.01))
    assert recorder.messages == []


@pytest.mark.anyio
async def test_what_an_app_sends_after_a_disconnect_before_its_head_is_dropped() -> None:
    # More in tests/test_middleware_disconnect.py.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.disconnect"
        await send(START)
        await send(body(b"late"))

    with anyio.fail_after(5):
        recorder = await call(HeaderFirstMiddleware(app), None, receive_disconnect_after(0.01))
    assert recorder.messages == []


@pytest.mark.anyio
async def test_receive_messages_reach_the_app_unchanged() -> None:
    request: Message = {"type": "http.request", "body": b"payload", "more_body": False}

    async def receive() -> Message:
        return request

    async def app(scope: Scope, inner_receive: Receive, send: Send) -> None:
        message = await inner_receive()
        assert message is request
        await send(START)
        await send(body(message["body"]))

    recorder = await call(HeaderFirstMiddleware(app), None, receive)
    assert recorder.body == b"payload"


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
        assert late_headers().sent  # the response already took the late headers
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


# --- Starlette response classes, ASGI level -------------------------------------------------


def _starlette_app(endpoint: Any) -> Starlette:
    app = Starlette(routes=[Route("/", endpoint, methods=["GET", "HEAD"])])
    app.add_middleware(HeaderFirstMiddleware)
    return app


def _add_id(request: Request) -> None:
    late_headers(request).add("x-request-id", "req-1")
    late_headers().add("x-deep", "yes")


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.txt"
    path.write_bytes(b"file contents")
    return path


@pytest.mark.anyio
@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
@pytest.mark.parametrize(
    ("shape", "expected_body"),
    [
        ("json", b'{"ok":true}'),
        ("plain-text", b"plain"),
        ("streaming", b"ab"),
        ("file", b"file contents"),
        ("file-pathsend", b""),
    ],
)
async def test_every_starlette_response_class_carries_the_late_headers(
    shape: str, expected_body: bytes, spec_version: str, text_file: Path
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"a"
        late_headers().add("x-too-late", "1")
        yield b"b"

    async def endpoint(request: Request) -> Response:
        _add_id(request)
        if shape == "json":
            return JSONResponse({"ok": True})
        if shape == "plain-text":
            return PlainTextResponse("plain")
        if shape == "streaming":
            return StreamingResponse(chunks(), media_type="text/plain")
        return FileResponse(text_file)

    extensions: dict[str, Any] = {"http.response.pathsend": {}} if shape == "file-pathsend" else {}
    scope = http_scope(spec_version=spec_version, extensions=extensions)
    recorder = await call(_starlette_app(endpoint), scope)
    assert recorder.status == 200
    assert header_values(recorder, b"x-request-id") == [b"req-1"]
    assert header_values(recorder, b"x-deep") == [b"yes"]
    assert header_values(recorder, b"x-too-late") == []
    assert recorder.body == expected_body
    if shape == "file-pathsend":
        assert recorder.messages[-1][1] == {
            "type": "http.response.pathsend",
            "path": str(text_file),
        }


@pytest.mark.anyio
async def test_a_head_request_carries_the_late_headers() -> None:
    async def endpoint(request: Request) -> Response:
        _add_id(request)
        return JSONResponse({"ok": True})

    recorder = await call(_starlette_app(endpoint), http_scope(method="HEAD"))
    assert header_values(recorder, b"x-request-id") == [b"req-1"]
    assert header_values(recorder, b"content-length") == [b"11"]
    assert recorder.body == b'{"ok":true}'  # as Starlette sends it; the server drops it


# --- in-process content: sync endpoints in the thread pool, FastAPI -------------------------


def _sync_helper_deep_in_a_thread() -> None:
    late_headers().add("x-thread", "worker")


def sync_endpoint(request: Request) -> Response:
    _sync_helper_deep_in_a_thread()
    late_headers(request).add("x-request", "1")

    def sync_chunks() -> Iterator[bytes]:
        yield b"sync"

    return StreamingResponse(sync_chunks())


@pytest.mark.anyio
async def test_late_headers_without_a_request_work_in_sync_endpoints_in_the_thread_pool() -> None:
    app = Starlette(routes=[Route("/sync", sync_endpoint)])
    app.add_middleware(HeaderFirstMiddleware)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/sync")
    assert response.status_code == 200
    assert response.headers["x-thread"] == "worker"
    assert response.headers["x-request"] == "1"
    assert response.content == b"sync"


def _fastapi_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(HeaderFirstMiddleware)

    async def rate_limit(request: FastAPIRequest) -> None:
        late_headers(request).update(
            {"x-ratelimit-remaining-requests": 41, "x-ratelimit-limit-requests": 42}
        )

    def record_cost(tokens: int) -> None:
        late_headers().add("x-cost-tokens", tokens)

    @app.post("/v1/messages", dependencies=[Depends(rate_limit)])
    async def messages() -> dict[str, str]:
        record_cost(12)
        return {"type": "message"}

    @app.post("/v1/sync", dependencies=[Depends(rate_limit)])
    def sync_messages() -> dict[str, str]:
        record_cost(7)
        return {"type": "message"}

    @app.post("/v1/stream", dependencies=[Depends(rate_limit)])
    async def stream() -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            record_cost(3)  # before the first chunk: the head is still held
            yield "data: 1\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "cost", "content"),
    [
        ("/v1/messages", "12", b'{"type":"message"}'),
        ("/v1/sync", "7", b'{"type":"message"}'),
        ("/v1/stream", "3", b"data: 1\n\n"),
    ],
)
async def test_a_fastapi_dependency_and_a_deep_helper_both_reach_the_client(
    path: str, cost: str, content: bytes
) -> None:
    transport = httpx.ASGITransport(app=_fastapi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post(path, json={})
    assert response.status_code == 200
    assert response.headers["x-ratelimit-remaining-requests"] == "41"
    assert response.headers["x-ratelimit-limit-requests"] == "42"
    assert response.headers["x-cost-tokens"] == cost
    assert response.content == content


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


@pytest.mark.anyio
async def test_sse_starlettes_event_source_response_carries_the_late_headers() -> None:
    from sse_starlette import EventSourceResponse  # imported on use: it patches uvicorn

    async def events() -> AsyncIterator[dict[str, str]]:
        late_headers().add("x-in-generator", "1")  # the start is already held
        yield {"data": "hello"}

    async def endpoint(request: Request) -> Response:
        _add_id(request)
        return EventSourceResponse(events())

    with anyio.fail_after(5):
        recorder = await call(_starlette_app(endpoint), http_scope())
    assert recorder.status == 200
    assert header_values(recorder, b"x-request-id") == [b"req-1"]
    assert header_values(recorder, b"x-in-generator") == [b"1"]
    assert recorder.body == b"data: hello\r\n\r\n"
