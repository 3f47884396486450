"""Request-scoped late headers (`_late.py`): finding the store, adding, and what is sent."""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator

import anyio
import pytest
from starlette.requests import Request
from starlette.types import Scope

from header_first_stream import HeaderFirstStreamingResponse, HeaderValidationError, LateHeaders
from header_first_stream import late_headers as late_headers_of
from header_first_stream._late import CURRENT, SCOPE_KEY, take_late_headers

from ._asgi import LOGGER, Recorder, call, http_scope


def test_store_is_found_from_a_request_and_from_its_scope() -> None:
    scope = http_scope(path="/v1/chat/completions")
    from_request = late_headers_of(Request(scope))
    assert isinstance(from_request, LateHeaders)
    assert scope[SCOPE_KEY] is from_request
    assert late_headers_of(scope) is from_request
    assert late_headers_of(Request(scope)) is from_request


def test_store_is_created_for_a_scope_without_a_path() -> None:
    scope: Scope = {"type": "http"}
    store = late_headers_of(scope)
    assert scope[SCOPE_KEY] is store
    assert store.items() == []
    assert not store.sent


def test_without_a_request_and_without_the_middleware_is_a_lookup_error() -> None:
    with pytest.raises(LookupError) as info:
        contextvars.Context().run(late_headers_of)
    assert str(info.value) == (
        "late_headers() without a request needs HeaderFirstMiddleware around the app; "
        "add the middleware, or pass the Request or ASGI scope"
    )
    with pytest.raises(LookupError):
        contextvars.Context().run(late_headers_of, None)


def test_without_a_request_returns_the_store_set_for_the_current_context() -> None:
    store = LateHeaders("/p")

    def handler() -> LateHeaders:
        CURRENT.set(store)
        return late_headers_of()

    assert contextvars.Context().run(handler) is store


def test_add_and_update_merge_and_render_like_response_headers() -> None:
    store = LateHeaders()
    assert store.add("X-Request-Id", "a")
    assert store.add("x-remaining", 5999)
    assert store.update({"x-request-id": "b", "x-cost": "0.01"})
    assert store.update([("set-cookie", "a=1"), ("set-cookie", "b=2")])
    assert store.items() == [
        ("x-remaining", "5999"),
        ("x-request-id", "b"),
        ("x-cost", "0.01"),
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
    ]
    assert not store.sent
    assert store.take() == [
        (b"x-remaining", b"5999"),
        (b"x-request-id", b"b"),
        (b"x-cost", b"0.01"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]
    assert store.sent


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("x-a", "1\r\nx-injected: 1", "invalid header value for 'x-a': contains '\\r'"),
        ("x a", "1", "invalid header name 'x a'"),
        ("content-length", "1", "invalid late header 'content-length'"),
    ],
)
def test_invalid_additions_raise_and_change_nothing(name: str, value: str, message: str) -> None:
    store = LateHeaders()
    store.add("x-kept", "1")
    with pytest.raises(HeaderValidationError) as info:
        store.add(name, value)
    assert str(info.value).startswith(message)
    assert store.items() == [("x-kept", "1")]


def test_adding_after_the_head_was_sent_returns_false_and_warns_naming_the_header(
    logs: pytest.LogCaptureFixture,
) -> None:
    store = late_headers_of(http_scope(path="/v1/messages"))
    store.add("x-early", "1")
    assert store.take() == [(b"x-early", b"1")]
    assert store.add("X-Too-Late", "1") is False
    assert store.update([("x-also-late", "2"), ("x-third", 3)]) is False
    assert store.items() == [("x-early", "1")]
    assert [(r.levelname, r.getMessage()) for r in logs.records if r.name == LOGGER] == [
        (
            "WARNING",
            "late headers ['x-too-late'] for /v1/messages were added after the response "
            "head was sent and are not sent; add them before the response starts",
        ),
        (
            "WARNING",
            "late headers ['x-also-late', 'x-third'] for /v1/messages were added after the "
            "response head was sent and are not sent; add them before the response starts",
        ),
    ]


def test_take_from_a_scope_without_a_store_is_empty_and_allocates_no_store() -> None:
    scope = http_scope()
    assert take_late_headers(scope) == ([], [])
    assert not isinstance(scope[SCOPE_KEY], LateHeaders)  # a marker: the head went out
    assert late_headers_of(scope).sent  # a store asked for later knows it


# --- with HeaderFirstStreamingResponse -------------------------------------------------


@pytest.mark.anyio
async def test_headers_added_by_the_resolver_or_before_it_are_sent_later_ones_warned(
    logs: pytest.LogCaptureFixture,
) -> None:
    scope = http_scope(path="/p")
    late_headers_of(scope).add("x-from-endpoint", "1")
    added_late: list[bool] = []

    async def resolver() -> dict[str, str]:
        late_headers_of(scope).add("x-from-resolver", "2")
        return {"x-resolved": "3"}

    async def body() -> AsyncIterator[bytes]:
        added_late.append(late_headers_of(scope).add("x-from-body", "4"))
        yield b"a"

    recorder = await call(HeaderFirstStreamingResponse(body(), header_resolver=resolver), scope)
    assert recorder.headers == [
        (b"x-from-endpoint", b"1"),
        (b"x-from-resolver", b"2"),
        (b"x-resolved", b"3"),
    ]
    assert recorder.body == b"a"
    assert added_late == [False]
    assert [r.getMessage() for r in logs.records if r.levelname == "WARNING"] == [
        "late headers ['x-from-body'] for /p were added after the response head was sent "
        "and are not sent; add them before the response starts"
    ]


@pytest.mark.anyio
async def test_two_requests_in_flight_each_send_only_their_own_late_headers() -> None:
    recorders: dict[str, Recorder] = {}

    async def handle(name: str, delay: float) -> None:
        scope = http_scope(path=f"/{name}")
        late_headers_of(scope).add("x-request", name)

        async def resolver() -> dict[str, str]:
            await anyio.sleep(delay)
            late_headers_of(scope).add("x-resolved-for", name)
            return {}

        response = HeaderFirstStreamingResponse([name.encode()], header_resolver=resolver)
        recorders[name] = await call(response, scope)

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(handle, "first", 0.05)
        task_group.start_soon(handle, "second", 0.01)

    for name in ("first", "second"):
        assert recorders[name].headers == [
            (b"x-request", name.encode()),
            (b"x-resolved-for", name.encode()),
        ]
        assert recorders[name].body == name.encode()
