"""`HeaderFirstMiddleware` holds the app's head until the first body, and passes every
other message on as sent; direct ASGI calls record when and what is sent.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from header_first_stream import HeaderFirstMiddleware, LateHeaders, late_headers
from header_first_stream._late import SCOPE_KEY

from ._asgi import (
    START,
    Recorder,
    body,
    call,
    header_values,
    http_scope,
    no_current_store,
    receive_disconnect_after,
    wait_until,
    websocket_scope,
)

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


async def _resolver(scope: Scope) -> dict[str, str]:
    return {}  # pragma: no cover


def test_resolver_options_read_back_as_given_and_are_validated_when_assigned() -> None:
    middleware = HeaderFirstMiddleware(
        _noop_app, resolver=_resolver, resolver_timeout=2.5, on_resolver_error="degrade"
    )
    options = (middleware.resolver, middleware.resolver_timeout, middleware.on_resolver_error)
    assert options == (_resolver, 2.5, "degrade")
    default = HeaderFirstMiddleware(_noop_app)
    assert (default.resolver, default.resolver_timeout, default.on_resolver_error) == (
        None,
        None,
        "error",
    )
    middleware.resolver = None
    assert middleware.resolver is None
    with pytest.raises(
        TypeError, match=r"^resolver must be an async callable taking the ASGI scope, got int$"
    ):
        middleware.resolver = 1


def test_the_resolver_options_are_attributes_of_the_class_too() -> None:
    for name in ("resolver", "resolver_timeout", "on_resolver_error"):
        assert hasattr(HeaderFirstMiddleware, name), name


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


async def _sends_nothing(scope: Scope, receive: Receive, send: Send) -> None:
    late_headers().add("x-late", "1")


async def _client_leaves(scope: Scope, receive: Receive, send: Send) -> None:
    late_headers().add("x-late", "1")
    await send(START)
    assert (await receive())["type"] == "http.disconnect"


async def _responds(scope: Scope, receive: Receive, send: Send) -> None:
    late_headers().add("x-late", "1")
    await send(START)
    await send(body(b"ok"))


async def _idles_past_the_hold(scope: Scope, receive: Receive, send: Send) -> None:
    await send(START)
    await anyio.sleep(0.05)  # the hold (0.01 s) sends the head meanwhile
    await send(body(b"ok"))


@pytest.mark.anyio
@pytest.mark.parametrize("app", [_sends_nothing, _client_leaves, _responds, _idles_past_the_hold])
async def test_nothing_of_a_request_outlives_its_call_without_the_garbage_collector(
    app: ASGIApp,
) -> None:
    # Nothing of a request refers back to itself once the middleware is done with it, so
    # it is freed by reference counting when its call ends (its scope and late-header
    # store with it), however its head went or did not go.
    recorder = Recorder()
    freed = weakref.ref(recorder)  # the server's send: the request's own objects hold it
    gc.disable()
    try:
        with anyio.fail_after(5):
            await HeaderFirstMiddleware(app, head_hold_timeout=0.01)(
                http_scope(), receive_disconnect_after(0), recorder
            )
        del recorder
        # At once, or (trio) once the loop ran a dropped timer's deferred start.
        await wait_until(lambda: freed() is None, 1)
    finally:
        gc.enable()


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
