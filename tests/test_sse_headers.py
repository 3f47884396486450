"""`HeaderFirstEventSourceResponse`'s default headers and options, as sse-starlette's."""

from __future__ import annotations

from typing import Any

import pytest
from sse_starlette import EventSourceResponse

from header_first_stream import HeaderFirstEventSourceResponse

from ._asgi import call, events, http_scope
from ._expect import SSE_HEADERS

# --- headers and options ---------------------------------------------------------------


def test_default_headers_are_sse_starlettes() -> None:
    ours = HeaderFirstEventSourceResponse(events(), headers={"Connection": "close"})
    theirs = EventSourceResponse(events(), headers={"Connection": "close"})
    assert ours.raw_headers == SSE_HEADERS
    assert sorted(theirs.raw_headers) == sorted(SSE_HEADERS)


@pytest.mark.anyio
@pytest.mark.parametrize(("version", "connection"), [("1.0", True), ("1.1", True), ("2", False)])
async def test_connection_keep_alive_goes_out_over_http_1_only(
    version: str, connection: bool
) -> None:
    recorder = await call(
        HeaderFirstEventSourceResponse(events("a"), ping=0), http_scope(http_version=version)
    )
    assert ((b"connection", b"keep-alive") in recorder.headers) is connection
    assert recorder.headers == [h for h in SSE_HEADERS if connection or h[0] != b"connection"]


def test_the_apps_own_cache_control_is_kept_and_x_accel_buffering_is_always_no() -> None:
    response = HeaderFirstEventSourceResponse(
        events(),
        headers={"Cache-Control": "public, max-age=5", "X-Accel-Buffering": "yes", "x-a": "1"},
    )
    assert response.raw_headers == [
        (b"cache-control", b"public, max-age=5"),
        (b"x-a", b"1"),
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"connection", b"keep-alive"),
        (b"x-accel-buffering", b"no"),
    ]


def test_options_default_like_sse_starlette() -> None:
    ours = HeaderFirstEventSourceResponse(events())
    theirs = EventSourceResponse(events())
    assert (ours.ping_interval, ours.sep, ours.send_timeout) == (15, "\r\n", None)
    assert (theirs.ping_interval, theirs.sep, theirs.send_timeout) == (15, "\r\n", None)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"send_timeout": 0}, ValueError, r"send_timeout must be a positive number .*got 0"),
        ({"resolver_timeout": -1}, ValueError, r"resolver_timeout must be a positive"),
    ],
)
def test_invalid_header_first_options_are_refused_with_what_to_pass(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        HeaderFirstEventSourceResponse(events(), **options)
