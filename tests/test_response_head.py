"""`HeaderFirstStreamingResponse` without a streamed body: HEAD requests and websocket denials."""

from __future__ import annotations

import inspect
from collections.abc import Generator

import pytest
from starlette.background import BackgroundTask

from header_first_stream import HeaderFirstStreamingResponse

from ._asgi import (
    END,
    TrackedBody,
    call,
    http_scope,
    resolver_of,
    sent,
    start,
    tracked,
    websocket_scope,
)
from ._expect import ERROR_500, SPECS, TEXT, plain_error


@pytest.mark.anyio
@SPECS
async def test_head_request_runs_the_resolver_but_never_iterates_the_body(spec: str) -> None:
    body = TrackedBody(b"a")
    calls: list[object] = []

    async def resolver(first: bytes | str | memoryview | None) -> dict[str, str]:
        calls.append(first)
        return {"x-late": "1"}

    response = HeaderFirstStreamingResponse(
        body, media_type="text/plain", header_resolver=resolver, peek_first_chunk=True
    )
    recorder = await call(response, http_scope("HEAD", spec_version=spec))
    assert sent(recorder) == [start(200, [TEXT, (b"x-late", b"1")]), END]
    assert calls == [None]
    assert (body.pulls, body.closes) == (0, 1)


@pytest.mark.anyio
async def test_head_request_closes_an_unstarted_sync_generator() -> None:
    def endless() -> Generator[bytes]:
        while True:  # pragma: no cover - never iterated
            yield b"x"

    generator = endless()
    response = HeaderFirstStreamingResponse(generator)
    recorder = await call(response, http_scope("HEAD"))
    assert sent(recorder) == [start(200, []), END]
    assert inspect.getgeneratorstate(generator) == inspect.GEN_CLOSED


@pytest.mark.anyio
async def test_websocket_denial_carries_the_resolver_headers() -> None:
    events: list[str] = []
    response = HeaderFirstStreamingResponse(
        tracked(events, b"denied", " by policy"),
        status_code=403,
        header_resolver=resolver_of({"x-reason": "policy"}),
        background=BackgroundTask(events.append, "background"),
    )
    recorder = await call(response, websocket_scope())
    assert sent(recorder) == [
        {
            "type": "websocket.http.response.start",
            "status": 403,
            "headers": [(b"x-reason", b"policy")],
        },
        {"type": "websocket.http.response.body", "body": b"denied", "more_body": True},
        {"type": "websocket.http.response.body", "body": b" by policy", "more_body": True},
        {"type": "websocket.http.response.body", "body": b"", "more_body": False},
    ]
    assert events == ["body entered", "body closed", "background"]


@pytest.mark.anyio
async def test_websocket_denial_with_a_failed_resolver_is_a_500_denial() -> None:
    response = HeaderFirstStreamingResponse(
        TrackedBody(b"a"), header_resolver=resolver_of({"x-bad": "\r"})
    )
    recorder = await call(response, websocket_scope())
    assert sent(recorder) == [
        {**message, "type": "websocket." + message["type"]}
        for message in plain_error(500, ERROR_500)
    ]
