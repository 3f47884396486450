"""The subclass contract: Starlette's extension points, with the late headers.

A subclass of `HeaderFirstStreamingResponse` may override what it may override on
Starlette's `StreamingResponse`; each hook below is exercised by a subclass.
"""

from __future__ import annotations

import logging

import anyio
import pytest
from starlette.types import Message, Receive, Send

from header_first_stream import HeaderFirstStreamingResponse

from ._asgi import (
    END,
    LOGGER,
    call,
    chunk,
    http_scope,
    receive_disconnect_after,
    scope_with_request_id,
    sent,
    start,
    websocket_scope,
    words,
)
from ._expect import SPECS

pytestmark = pytest.mark.anyio


class LengthPrefixed(HeaderFirstStreamingResponse):
    """Custom framing, as seen in the wild: each chunk sent with its length before it."""

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": 207, "headers": [(b"x-framing", b"lp")]}
        )
        async for item in self.body_iterator:
            data = bytes(item) if isinstance(item, bytes | memoryview) else item.encode()
            await send(chunk(b"%d:%s" % (len(data), data)))
        await send(END)


async def limits() -> dict[str, str | int]:
    return {"x-ratelimit-remaining-requests": 41}


@SPECS
async def test_an_overridden_stream_response_sends_its_head_with_the_late_headers(
    spec: str,
) -> None:
    scope = scope_with_request_id("r1", spec_version=spec)
    response = LengthPrefixed(words(b"ab", b"c"), header_resolver=limits)
    recorder = await call(response, scope)
    assert sent(recorder) == [
        start(
            207,
            [
                (b"x-framing", b"lp"),
                (b"x-request-id", b"r1"),
                (b"x-ratelimit-remaining-requests", b"41"),
            ],
        ),
        chunk(b"2:ab"),
        chunk(b"1:c"),
        END,
    ]


@SPECS
async def test_an_overridden_stream_response_waits_for_the_resolver_before_its_head(
    spec: str,
) -> None:
    async def slow() -> dict[str, str]:
        await anyio.sleep(0.2)
        return {"x-a": "1"}

    response = LengthPrefixed(words(b"a"), header_resolver=slow)
    recorder = await call(response, http_scope(spec_version=spec))
    assert recorder.messages[0][0] >= 0.2
    assert recorder.headers == [(b"x-framing", b"lp"), (b"x-a", b"1")]


@SPECS
async def test_a_failing_resolver_stops_the_override_and_sends_the_error_instead(
    spec: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)

    async def fails() -> dict[str, str]:
        raise RuntimeError("limiter down")

    response = LengthPrefixed(words(b"a"), header_resolver=fails)
    recorder = await call(response, http_scope(spec_version=spec))
    assert sent(recorder) == [
        start(
            500,
            [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")],
        ),
        chunk(b"Internal Server Error", more=False),
    ]
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        "header resolver failed for /"
    ]


async def test_an_overridden_stream_response_with_an_invalid_own_header_gives_a_500() -> None:
    class BadHead(HeaderFirstStreamingResponse):
        async def stream_response(self, send: Send) -> None:
            await send(start(200, [(b"x-bad", b"a\r\nx-injected: 1")]))
            await send(END)  # pragma: no cover - stopped by the error response

    recorder = await call(BadHead(words()), http_scope())
    assert recorder.status == 500
    assert all(b"injected" not in value for _, value in recorder.headers)


@SPECS
async def test_a_client_leaving_while_the_override_waits_for_its_head_gets_nothing(
    spec: str,
) -> None:
    async def slow() -> dict[str, str]:
        await anyio.sleep(10)
        return {}  # pragma: no cover

    with anyio.fail_after(5):
        recorder = await call(
            LengthPrefixed(words(b"a"), header_resolver=slow),
            http_scope(spec_version=spec),
            receive_disconnect_after(0.05),
        )
    assert sent(recorder) == []


def test_peek_with_an_overridden_stream_response_is_refused_at_construction() -> None:
    with pytest.raises(TypeError, match=r"LengthPrefixed overrides stream_response\(\)"):
        LengthPrefixed(words(), peek_first_chunk=True)


class CountingListener(HeaderFirstStreamingResponse):
    """Overrides Starlette's `listen_for_disconnect`, as a subclass may."""

    heard: list[Message]

    async def listen_for_disconnect(self, receive: Receive) -> None:
        self.heard = []
        while True:
            message = await receive()
            self.heard.append(message)
            if message["type"] == "http.disconnect":
                return


@SPECS
async def test_an_overridden_listen_for_disconnect_is_what_the_listener_waits_on(
    spec: str,
) -> None:
    async def slow() -> dict[str, str]:
        await anyio.sleep(10)
        return {}  # pragma: no cover

    response = CountingListener(words(b"a"), header_resolver=slow)
    with anyio.fail_after(5):
        recorder = await call(response, http_scope(spec_version=spec), receive_disconnect_after(0))
    assert response.heard == [{"type": "http.disconnect"}]
    assert sent(recorder) == []


async def test_set_cookie_and_init_headers_work_as_in_starlette() -> None:
    class WithDefaults(HeaderFirstStreamingResponse):
        def init_headers(self, headers: object = None) -> None:
            super().init_headers({"x-default": "1"})

    response = WithDefaults(words(b"a"), header_resolver=limits)
    response.set_cookie("session", "s1")
    recorder = await call(response, http_scope())
    assert recorder.headers == [
        (b"x-default", b"1"),
        (b"set-cookie", b"session=s1; Path=/; SameSite=lax"),
        (b"x-ratelimit-remaining-requests", b"41"),
    ]


async def test_an_override_on_a_websocket_denial_passes_other_messages_unprefixed() -> None:
    class Debugging(HeaderFirstStreamingResponse):
        async def stream_response(self, send: Send) -> None:
            await send({"type": "http.response.debug", "info": {}})
            await send(start(403, []))
            await send(chunk(b"no", more=False))

    recorder = await call(Debugging(words()), websocket_scope())
    assert sent(recorder) == [
        {"type": "http.response.debug", "info": {}},
        {"type": "websocket.http.response.start", "status": 403, "headers": []},
        {"type": "websocket.http.response.body", "body": b"no", "more_body": False},
    ]
