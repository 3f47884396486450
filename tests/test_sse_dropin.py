"""`HeaderFirstEventSourceResponse` takes what `sse_starlette.EventSourceResponse` takes.

Code written for sse-starlette (positional calls, its callbacks, its constants, its
validation) works unchanged; each option is exercised here at the ASGI level.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message

from header_first_stream import HeaderFirstEventSourceResponse

from ._asgi import END, LOGGER, call, events, http_scope, receive_disconnect_after, sent

pytestmark = pytest.mark.anyio


def test_the_signature_is_sse_starlettes_then_the_header_first_options() -> None:
    ours = list(inspect.signature(HeaderFirstEventSourceResponse).parameters.values())
    theirs = list(inspect.signature(EventSourceResponse).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours[: len(theirs)]] == [
        (p.name, p.kind, p.default) for p in theirs
    ]
    assert [(p.name, p.kind) for p in ours[len(theirs) :]] == [
        (name, inspect.Parameter.KEYWORD_ONLY)
        for name in (
            "header_resolver",
            "resolver_timeout",
            "on_resolver_error",
            "peek_first_chunk",
            "early_error_handler",
            "end_on_shutdown",
        )
    ]


def test_a_positional_call_written_for_sse_starlette_sets_the_same_options() -> None:
    factory = lambda: ServerSentEvent(comment="hi")  # noqa: E731
    args: tuple[Any, ...] = (events(), 201, {"x-a": "1"}, "text/event-stream", None, 7, "\n")
    args += (factory, None, 3.0, None, None, 0, 5.0)
    ours, theirs = HeaderFirstEventSourceResponse(*args), EventSourceResponse(*args)
    for attribute in ("status_code", "ping_interval", "sep", "ping_message_factory"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert (ours.send_timeout, ours.cleanup_timeout) == (3.0, 5.0)


def test_the_class_constants_and_enable_compression_are_sse_starlettes() -> None:
    for name in ("DEFAULT_PING_INTERVAL", "DEFAULT_SEPARATOR", "DEFAULT_CLEANUP_TIMEOUT"):
        assert getattr(HeaderFirstEventSourceResponse, name) == getattr(EventSourceResponse, name)
    with pytest.raises(NotImplementedError, match="Compression is not supported for SSE"):
        HeaderFirstEventSourceResponse(events()).enable_compression()


@pytest.mark.parametrize(
    "options",
    [
        {"sep": "\t"},
        {"sep": ""},
        {"ping": "ten"},
        {"ping": -42},
        {"shutdown_grace_period": -1},
        {"cleanup_timeout": -1},
    ],
    ids=lambda options: repr(options),
)
def test_invalid_options_raise_what_sse_starlette_raises_at_construction(
    options: dict[str, Any],
) -> None:
    with pytest.raises(Exception) as theirs:
        EventSourceResponse(events(), **options)
    with pytest.raises(type(theirs.value)) as ours:
        HeaderFirstEventSourceResponse(events(), **options)
    assert str(ours.value) == str(theirs.value)


def test_a_bool_ping_is_taken_as_sse_starlette_takes_it() -> None:
    assert HeaderFirstEventSourceResponse(events(), ping=True).ping_interval is True
    assert EventSourceResponse(events(), ping=True).ping_interval is True


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
async def test_data_sender_callable_feeds_a_push_based_stream(spec: str) -> None:
    send_stream, receive_stream = anyio.create_memory_object_stream[dict[str, str]](10)

    async def push() -> None:
        async with send_stream:
            for n in range(3):
                await send_stream.send({"data": str(n)})

    async def content() -> AsyncIterator[dict[str, str]]:
        async with receive_stream:
            async for item in receive_stream:
                yield item

    async def limits() -> dict[str, str]:
        return {"x-ratelimit-remaining-requests": "9"}

    response = HeaderFirstEventSourceResponse(
        content(), data_sender_callable=push, ping=0, header_resolver=limits
    )
    with anyio.fail_after(5):
        recorder = await call(response, http_scope(spec_version=spec))
    assert (b"x-ratelimit-remaining-requests", b"9") in recorder.headers
    assert recorder.body == b"data: 0\r\n\r\ndata: 1\r\n\r\ndata: 2\r\n\r\n"
    assert sent(recorder)[-1] == END


async def test_data_sender_callable_is_not_started_on_head() -> None:
    started: list[str] = []

    async def push() -> None:
        started.append("started")  # pragma: no cover - HEAD starts no stream

    response = HeaderFirstEventSourceResponse(events("a"), data_sender_callable=push)
    recorder = await call(response, http_scope("HEAD"))
    assert started == []
    assert sent(recorder)[1:] == [END]


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
async def test_client_close_handler_callable_gets_the_disconnect_message(spec: str) -> None:
    heard: list[Message] = []

    async def on_close(message: Message) -> None:
        heard.append(message)

    async def endless() -> AsyncIterator[str]:
        while True:
            yield "tick"
            await anyio.sleep(0.01)

    response = HeaderFirstEventSourceResponse(
        endless(), client_close_handler_callable=on_close, ping=0
    )
    with anyio.fail_after(5):
        await call(response, http_scope(spec_version=spec), receive_disconnect_after(0.05))
    assert heard == [{"type": "http.disconnect"}]


async def test_send_timeout_bounds_heads_messages_as_in_sse_starlette() -> None:
    async def stuck(message: Message) -> None:
        await anyio.sleep_forever()

    response = HeaderFirstEventSourceResponse(events("a"), send_timeout=0.05)
    with anyio.fail_after(5), pytest.raises(SendTimeoutError):
        await response(http_scope("HEAD"), receive_disconnect_after(10), stuck)


async def test_cleanup_timeout_given_to_the_constructor_bounds_the_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    cleaned: list[str] = []

    async def slow_to_close() -> AsyncIterator[str]:
        try:
            yield "a"
            yield "never"  # pragma: no cover - the client is gone by then
        finally:
            try:
                await anyio.sleep(10)
            finally:
                cleaned.append("cut short")

    async def stuck_on_events(message: Message) -> None:
        if message["type"] == "http.response.body":
            await anyio.sleep_forever()  # a client that stopped reading, then leaves

    response = HeaderFirstEventSourceResponse(slow_to_close(), ping=0, cleanup_timeout=0.01)
    with anyio.fail_after(5):
        await response(http_scope(), receive_disconnect_after(0.05), stuck_on_events)
    assert cleaned == ["cut short"]
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER] == [
        ("WARNING", "closing the body iterator took over 0.01s")
    ]


@pytest.mark.parametrize(
    "option", ["ping_message_factory", "data_sender_callable", "client_close_handler_callable"]
)
def test_a_callback_that_is_not_callable_is_refused_at_construction(option: str) -> None:
    with pytest.raises(TypeError, match=f"^{option} must be callable, got int$"):
        options: dict[str, Any] = {option: 3}
        HeaderFirstEventSourceResponse(events(), **options)
