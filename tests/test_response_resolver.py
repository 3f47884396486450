"""`HeaderFirstStreamingResponse`: the head waits for the resolver; its failures; the options.

Called directly as an ASGI app, every message recorded: only these recordings can show
*when* a message went out (test clients buffer).
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from header_first_stream import (
    HeaderFirstEventSourceResponse,
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
    late_headers,
)

from ._asgi import (
    END,
    Recorder,
    TrackedBody,
    call,
    chunk,
    failing_resolver,
    http_scope,
    never_resolves,
    resolver_of,
    scope_with_request_id,
    sent,
    start,
    tracked,
)
from ._expect import ERROR_500, SPECS, TEXT, logged, logged_exception, plain_error

pytestmark = pytest.mark.anyio

# --- ordering and timing -------------------------------------------------------------


@SPECS
async def test_head_waits_for_a_slow_resolver_and_carries_its_headers(spec: str) -> None:
    recorder = Recorder()
    events: list[str] = []
    returned_at: list[float] = []

    async def resolver() -> dict[str, str | int]:
        events.append("resolver started")
        await anyio.sleep(0.2)
        returned_at.append(time.monotonic() - recorder.start)
        events.append("resolver returned")
        return {"x-ratelimit-remaining-requests": 5999, "x-request-id": "abc"}

    response = HeaderFirstStreamingResponse(
        tracked(events, b"a", "b"), media_type="text/plain", header_resolver=resolver
    )
    await call(response, http_scope(spec_version=spec), send=recorder)

    assert sent(recorder) == [
        start(
            200,
            [
                TEXT,
                (b"x-ratelimit-remaining-requests", b"5999"),
                (b"x-request-id", b"abc"),
            ],
        ),
        chunk(b"a"),
        chunk(b"b"),
        END,
    ]
    assert events == ["resolver started", "resolver returned", "body entered", "body closed"]
    assert all(at >= returned_at[0] for at, _ in recorder.messages)
    assert recorder.messages[0][0] >= 0.2


@SPECS
async def test_merge_order_is_own_then_late_store_then_resolver(spec: str) -> None:
    scope = http_scope(spec_version=spec)
    store = late_headers(scope)
    store.add("X-Shared", "late")
    store.add("x-late-only", 1)
    store.update({"x-both": "late"})
    resolver = resolver_of(
        [("X-Both", "resolver"), ("set-cookie", "a=1"), ("set-cookie", "b=2"), ("x-n", 0)]
    )
    response = HeaderFirstStreamingResponse(
        TrackedBody(b"x"),
        headers={"x-own": "own", "x-shared": "own", "x-both": "own", "set-cookie": "own=1"},
        header_resolver=resolver,
    )
    recorder = await call(response, scope)

    assert recorder.headers == [
        (b"x-own", b"own"),
        (b"set-cookie", b"own=1"),  # never replaced: each set-cookie is its own cookie
        (b"x-shared", b"late"),
        (b"x-late-only", b"1"),
        (b"x-both", b"resolver"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"x-n", b"0"),
    ]
    assert recorder.body == b"x"
    assert store.sent


@SPECS
async def test_resolver_may_replace_content_type(spec: str) -> None:
    response = HeaderFirstStreamingResponse(
        TrackedBody(b"x"),
        media_type="text/plain",
        header_resolver=resolver_of({"Content-Type": "text/event-stream"}),
    )
    recorder = await call(response, http_scope(spec_version=spec))
    assert recorder.headers == [(b"content-type", b"text/event-stream")]


async def test_peeked_str_chunk_reaches_the_resolver_as_str_and_the_client_encoded() -> None:
    seen: list[object] = []

    async def resolver(first: bytes | str | memoryview | None) -> dict[str, str]:
        seen.append(first)
        return {}

    response = HeaderFirstStreamingResponse(
        TrackedBody("héllo", "wörld"), header_resolver=resolver, peek_first_chunk=True
    )
    recorder = await call(response)
    assert seen == ["héllo"]
    assert sent(recorder) == [
        start(200, []),
        chunk("héllo".encode()),
        chunk("wörld".encode()),
        END,
    ]


@SPECS
async def test_peek_without_a_resolver_streams_normally(spec: str) -> None:
    events: list[str] = []
    response = HeaderFirstStreamingResponse(tracked(events, b"a", b"b"), peek_first_chunk=True)
    recorder = await call(response, http_scope(spec_version=spec))
    assert sent(recorder) == [start(200, []), chunk(b"a"), chunk(b"b"), END]
    assert events == ["body entered", "body closed"]


# --- resolver failures ---------------------------------------------------------------


@SPECS
async def test_resolver_exception_gives_500_without_its_text_and_is_logged_with_the_path(
    spec: str, logs: pytest.LogCaptureFixture
) -> None:
    error = RuntimeError("upstream key sk-secret-123 rejected")
    body = TrackedBody(b"never")
    response = HeaderFirstStreamingResponse(body, header_resolver=failing_resolver(error))
    scope = scope_with_request_id("req-1", path="/v1/chat/completions", spec_version=spec)
    recorder = await call(response, scope)

    assert sent(recorder) == plain_error(500, ERROR_500, (b"x-request-id", b"req-1"))
    assert b"sk-secret" not in recorder.body
    assert logged(logs) == [("ERROR", "header resolver failed for /v1/chat/completions")]
    assert logged_exception(logs, "header resolver failed for /v1/chat/completions") is error
    assert (body.pulls, body.closes) == (0, 1)


@SPECS
async def test_resolver_timeout_gives_504(spec: str, logs: pytest.LogCaptureFixture) -> None:
    body = TrackedBody(b"never")
    response = HeaderFirstStreamingResponse(
        body, header_resolver=never_resolves, resolver_timeout=0.05
    )
    recorder = await call(response, http_scope(path="/p", spec_version=spec))

    assert sent(recorder) == plain_error(504, b"Gateway Timeout")
    assert logged(logs) == [("ERROR", "header resolver timed out after 0.05s for /p")]
    assert (body.pulls, body.closes) == (0, 1)


async def test_resolver_that_returns_within_its_timeout_is_used() -> None:
    async def resolver() -> dict[str, str]:
        await anyio.sleep(0.01)
        return {"x-late": "1"}

    response = HeaderFirstStreamingResponse(
        TrackedBody(b"a"), header_resolver=resolver, resolver_timeout=10
    )
    recorder = await call(response)
    assert sent(recorder) == [start(200, [(b"x-late", b"1")]), chunk(b"a"), END]


@SPECS
async def test_degrade_streams_without_resolver_headers_and_warns(
    spec: str, logs: pytest.LogCaptureFixture
) -> None:
    scope = scope_with_request_id("req-1", path="/p", spec_version=spec)
    response = HeaderFirstStreamingResponse(
        TrackedBody(b"a", b"b"),
        headers={"x-own": "1"},
        header_resolver=failing_resolver(RuntimeError("limiter down")),
        on_resolver_error="degrade",
    )
    recorder = await call(response, scope)

    assert sent(recorder) == [
        start(200, [(b"x-own", b"1"), (b"x-request-id", b"req-1")]),
        chunk(b"a"),
        chunk(b"b"),
        END,
    ]
    message = "header resolver failed for /p; sending the response without its headers"
    assert logged(logs) == [("WARNING", message)]
    assert isinstance(logged_exception(logs, message), RuntimeError)


async def test_degrade_on_timeout_streams_without_resolver_headers_and_warns(
    logs: pytest.LogCaptureFixture,
) -> None:
    response = HeaderFirstStreamingResponse(
        TrackedBody(b"a"),
        header_resolver=never_resolves,
        resolver_timeout=0.05,
        on_resolver_error="degrade",
    )
    recorder = await call(response, http_scope(path="/p"))

    assert sent(recorder) == [start(200, []), chunk(b"a"), END]
    assert logged(logs) == [
        (
            "WARNING",
            "header resolver timed out after 0.05s for /p; "
            "sending the response without its headers",
        )
    ]


INVALID_RESOLVER_HEADERS = [
    pytest.param({"x-bad": "a\r\nx-injected: 1"}, "for 'x-bad': contains '\\r'", id="crlf"),
    pytest.param({"x-bad": "a\nb"}, "for 'x-bad': contains '\\n'", id="lf"),
    pytest.param({"x-bad": "a\x00b"}, "for 'x-bad': contains '\\x00'", id="nul"),
    pytest.param({"x-bad": "a\x7fb"}, "for 'x-bad': contains '\\x7f'", id="del"),
    pytest.param({"x bad": "v"}, "invalid header name 'x bad'", id="space-in-name"),
    pytest.param({"x:bad": "v"}, "invalid header name 'x:bad'", id="colon-in-name"),
    pytest.param({"": "v"}, "invalid header name ''", id="empty-name"),
    pytest.param({"x-bad": "€"}, "'€' is not latin-1", id="not-latin-1"),
    pytest.param({"content-length": "5"}, "invalid late header 'content-length'", id="cl"),
    pytest.param(
        {"Transfer-Encoding": "chunked"}, "invalid late header 'Transfer-Encoding'", id="te"
    ),
    pytest.param({"x-bad": 1.5}, "float (header values must be str or int)", id="float"),
    pytest.param({"x-bad": True}, "bool (header values must be str or int)", id="bool"),
    pytest.param({"x-bad": None}, "NoneType (header values must be str or int)", id="none"),
    pytest.param("x-bad: 1", "invalid headers: str", id="str"),
    pytest.param([("x-a", "1", "extra")], "invalid header entry ('x-a', '1', 'extra')", id="3"),
    pytest.param([(1, "v")], "invalid header name 1: int (header names", id="int-name"),
]


@pytest.mark.parametrize(("headers", "reason"), INVALID_RESOLVER_HEADERS)
async def test_invalid_resolver_header_gives_500_and_never_a_head_with_it(
    headers: Any, reason: str, logs: pytest.LogCaptureFixture
) -> None:
    body = TrackedBody(b"never")
    response = HeaderFirstStreamingResponse(body, header_resolver=resolver_of(headers))
    recorder = await call(response, http_scope(path="/p"))

    assert sent(recorder) == plain_error(500, ERROR_500)
    error = logged_exception(logs, "header resolver failed for /p")
    assert error is not None
    assert type(error).__name__ == "HeaderValidationError"
    assert reason in str(error)
    assert (body.pulls, body.closes) == (0, 1)


async def test_invalid_resolver_header_under_degrade_streams_without_it(
    logs: pytest.LogCaptureFixture,
) -> None:
    response = HeaderFirstStreamingResponse(
        TrackedBody(b"a"),
        header_resolver=resolver_of({"x-good": "1", "x-bad": "a\r\nb"}),
        on_resolver_error="degrade",
    )
    recorder = await call(response, http_scope(path="/p"))
    assert sent(recorder) == [start(200, []), chunk(b"a"), END]
    assert [level for level, _ in logged(logs)] == ["WARNING"]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param({"x-own": "a\r\nb"}, "for 'x-own': contains '\\r'", id="crlf"),
        pytest.param({"x-own": "a\tb\x01"}, "for 'x-own': contains '\\x01'", id="soh"),
        pytest.param({"x own": "v"}, "invalid header name 'x own'", id="name"),
    ],
)
async def test_invalid_own_header_gives_500(
    headers: dict[str, str], reason: str, logs: pytest.LogCaptureFixture
) -> None:
    scope = scope_with_request_id("req-1", path="/p")
    body = TrackedBody(b"never")
    response = HeaderFirstStreamingResponse(
        body, headers=headers, header_resolver=resolver_of({"x-late": "1"})
    )
    recorder = await call(response, scope)

    assert sent(recorder) == plain_error(500, ERROR_500, (b"x-request-id", b"req-1"))
    assert reason in str(logged_exception(logs, "invalid response header for /p"))
    assert (body.pulls, body.closes) == (0, 1)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"header_resolver": "x"}, TypeError, "header_resolver must be an async callable, got str"),
        (
            {"resolver_timeout": 0},
            ValueError,
            "resolver_timeout must be a positive number of seconds or None, got 0",
        ),
        ({"resolver_timeout": -1.5}, ValueError, "got -1.5"),
        ({"resolver_timeout": float("nan")}, ValueError, "got nan"),
        (
            {"on_resolver_error": "ignore"},
            ValueError,
            "on_resolver_error must be 'error' or 'degrade', got 'ignore'",
        ),
        (
            {"early_error_handler": 42},
            TypeError,
            "early_error_handler must be a callable taking the exception, got int",
        ),
        (
            {"early_error_handler": lambda exc: None},
            ValueError,
            "early_error_handler needs peek_first_chunk=True",
        ),
    ],
)
def test_constructor_rejects_bad_options(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        HeaderFirstStreamingResponse(iter([b"x"]), **options)
    assert message in str(info.value)


@pytest.mark.parametrize("cls", [HeaderFirstStreamingResponse, HeaderFirstEventSourceResponse])
def test_resolver_options_read_back_as_given_and_are_validated_when_assigned(
    cls: type[HeaderFirstStreamingResponse],
) -> None:
    resolver = resolver_of({"x-late": "1"})
    response = cls(
        iter([]), header_resolver=resolver, resolver_timeout=2.5, on_resolver_error="degrade"
    )
    assert (response.header_resolver, response.resolver_timeout, response.on_resolver_error) == (
        resolver,
        2.5,
        "degrade",
    )
    default = cls(iter([]))
    assert (default.header_resolver, default.resolver_timeout, default.on_resolver_error) == (
        None,
        None,
        "error",
    )
    other = resolver_of({})
    response.header_resolver, response.resolver_timeout, response.on_resolver_error = (
        other,
        1,
        "error",
    )
    assert (response.header_resolver, response.resolver_timeout, response.on_resolver_error) == (
        other,
        1,
        "error",
    )
    with pytest.raises(ValueError, match=r"^resolver_timeout must be a positive number"):
        response.resolver_timeout = 0
    with pytest.raises(ValueError, match=r"^on_resolver_error must be 'error' or 'degrade'"):
        response.on_resolver_error = "ignore"
    with pytest.raises(TypeError, match=r"^header_resolver must be an async callable, got str$"):
        response.header_resolver = "x"
    assert response.resolver_timeout == 1  # a refused value changes nothing


@pytest.mark.parametrize("cls", [HeaderFirstStreamingResponse, HeaderFirstEventSourceResponse])
def test_the_resolver_options_are_attributes_of_the_class_too(
    cls: type[HeaderFirstStreamingResponse],
) -> None:
    # As Starlette's `media_type`: introspection (hasattr, IDEs, doc tools) finds them.
    for name in ("header_resolver", "resolver_timeout", "on_resolver_error"):
        assert hasattr(cls, name), name


# --- a resolver that is not async -----------------------------------------------------


def get_headers() -> dict[str, str]:
    return {"x-late": "1"}  # pragma: no cover - refused before any request


class Limiter:
    def headers_for(self) -> dict[str, str]:
        return {"x-late": "1"}  # pragma: no cover - refused before any request


@pytest.mark.parametrize("cls", [HeaderFirstStreamingResponse, HeaderFirstEventSourceResponse])
@pytest.mark.parametrize(
    ("resolver", "name"), [(get_headers, "get_headers"), (Limiter().headers_for, "headers_for")]
)
def test_a_plain_function_as_resolver_is_refused_at_construction(
    cls: type[HeaderFirstStreamingResponse], resolver: Any, name: str
) -> None:
    with pytest.raises(TypeError) as info:
        cls(iter([]), header_resolver=resolver)
    assert str(info.value) == (
        f"header_resolver must be an async callable: {name}() is a plain function, so "
        f"awaiting what it returns fails on every request; declare it `async def {name}(...)`"
    )


async def test_a_lambda_that_returns_a_coroutine_is_a_resolver() -> None:
    resolver = resolver_of({"x-late": "1"})
    response = HeaderFirstStreamingResponse(
        iter([b"ok"]), media_type="text/plain", header_resolver=lambda: resolver()
    )
    recorder = await call(response)
    assert recorder.headers == [TEXT, (b"x-late", b"1")]
    assert recorder.body == b"ok"


@pytest.mark.parametrize("policy", ["error", "degrade"])
async def test_a_resolver_that_returns_no_awaitable_fails_saying_to_declare_it_async(
    policy: Any, logs: pytest.LogCaptureFixture
) -> None:
    body = TrackedBody(b"ok")
    response = HeaderFirstStreamingResponse(
        body,
        media_type="text/plain",
        header_resolver=lambda: {"x-late": "1"},  # type: ignore[arg-type]
        on_resolver_error=policy,
    )
    recorder = await call(response, http_scope(path="/p"))
    if policy == "error":
        assert sent(recorder) == plain_error(500, ERROR_500)
        assert (body.pulls, body.closes) == (0, 1)
        message = "header resolver failed for /p"
    else:
        assert recorder.headers == [TEXT]
        assert recorder.body == b"ok"
        message = "header resolver failed for /p; sending the response without its headers"
    error = logged_exception(logs, message)
    assert isinstance(error, TypeError)
    assert str(error) == "header_resolver returned dict, not an awaitable: declare it `async def`"


def test_constructor_keeps_starlette_positional_order() -> None:
    task = BackgroundTask(lambda: None)
    response = HeaderFirstStreamingResponse(iter([]), 201, {"x-a": "1"}, "text/plain", task)
    assert isinstance(response, StreamingResponse)
    assert response.status_code == 201
    assert response.raw_headers == [(b"x-a", b"1"), TEXT]
    assert response.background is task
    assert response.cleanup_timeout == 30.0


def test_the_resolver_options_read_on_the_class_are_their_descriptors() -> None:
    # Documentation tools and `help()` read the attributes on the class: they get the
    # descriptor (with its field), not an error; an instance reads the value it was given.
    for cls in (HeaderFirstStreamingResponse, HeaderFirstMiddleware):
        option = cls.resolver_timeout
        assert type(option).__name__ == "Option" and option.field == "timeout"
    response = HeaderFirstStreamingResponse(iter([b""]), resolver_timeout=2.5)
    assert response.resolver_timeout == 2.5
