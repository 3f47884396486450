"""One head decision: the same rules give the same head on every path that sends one.

The paths: `HeaderFirstStreamingResponse`'s own, a subclass that overrides
``stream_response`` (its ``http.response.start`` held and decided for it), the first-chunk
peek, the SSE class, and `HeaderFirstMiddleware` around a plain Starlette
`StreamingResponse`. Each case gives every path the same own headers, late headers and
resolver outcome, and expects the same messages, exactly, and the same log records. The
rules (``docs/headers.md``): own headers, then late, then resolved, a later source
replacing a name; a failed resolver gives a ``500`` carrying the late headers; a head with
a value over ``max_header_value_size`` gives a ``500`` without them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Send

from header_first_stream import (
    HeaderFirstEventSourceResponse,
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
    late_headers,
)

from ._asgi import END, call, chunk, failing_resolver, http_scope, resolver_of, sent, start, words
from ._expect import ERROR_500, SPECS, logged, plain_error

pytestmark = pytest.mark.anyio

OWN = {"x-own": "own", "x-shared": "own"}
SMALL = ("x-shared", "late")
BIG = ("x-big", "a" * 9000)  # over the default max_header_value_size (8192)


class OwnFraming(HeaderFirstStreamingResponse):
    """Overrides ``stream_response``, as Starlette's own is written."""

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for item in self.body_iterator:
            await send(chunk(item.encode() if isinstance(item, str) else bytes(item)))
        await send(END)


Path = Callable[[Any], ASGIApp]
"""Builds the path's app from a header resolver (one for any arity: with the peek, it is
given the first chunk; in the middleware, the scope)."""

STREAMING_PATHS: dict[str, Path] = {
    "response": lambda resolver: HeaderFirstStreamingResponse(
        words(b"a"), headers=OWN, header_resolver=resolver
    ),
    "stream_response override": lambda resolver: OwnFraming(
        words(b"a"), headers=OWN, header_resolver=resolver
    ),
    "peek": lambda resolver: HeaderFirstStreamingResponse(
        words(b"a"), headers=OWN, header_resolver=resolver, peek_first_chunk=True
    ),
    "middleware": lambda resolver: HeaderFirstMiddleware(
        StreamingResponse(words(b"a"), headers=OWN), resolver=resolver
    ),
}

ERROR_PATHS: dict[str, Path] = {
    **STREAMING_PATHS,
    "sse": lambda resolver: HeaderFirstEventSourceResponse(
        words(b"data: a\r\n\r\n"), headers=OWN, header_resolver=resolver
    ),
    "sse peek": lambda resolver: HeaderFirstEventSourceResponse(
        words(b"data: a\r\n\r\n"), headers=OWN, header_resolver=resolver, peek_first_chunk=True
    ),
}


async def responses(
    paths: dict[str, Path], resolver: Any, late: list[tuple[str, str]], spec: str
) -> dict[str, list[Message]]:
    """What each path sends for one request whose store holds ``late``."""
    out: dict[str, list[Message]] = {}
    for name, build in paths.items():
        scope = http_scope(spec_version=spec)
        late_headers(scope).update(late)
        out[name] = sent(await call(build(resolver), scope))
    return out


def same_for_every_path(sent_by: dict[str, list[Message]], expected: list[Message]) -> None:
    differing = {name: messages for name, messages in sent_by.items() if messages != expected}
    assert differing == {}, f"expected on every path: {expected}"


@SPECS
async def test_a_failed_resolver_and_an_oversized_late_header_give_the_same_500_everywhere(
    spec: str, logs: pytest.LogCaptureFixture
) -> None:
    sent_by = await responses(
        ERROR_PATHS, failing_resolver(RuntimeError("limiter down")), [SMALL, BIG], spec
    )
    # Over a cap: the 500 carries no late header, neither the small one nor the big one.
    same_for_every_path(sent_by, plain_error(500, ERROR_500))
    assert logged(logs) == [
        ("ERROR", "header resolver failed for /"),
        ("ERROR", "response head too large for /"),
    ] * len(ERROR_PATHS)


@SPECS
async def test_a_failed_resolver_gives_the_same_500_with_the_late_headers_everywhere(
    spec: str, logs: pytest.LogCaptureFixture
) -> None:
    late = [SMALL, ("x-other", "2"), ("content-type", "application/json")]
    sent_by = await responses(
        ERROR_PATHS, failing_resolver(RuntimeError("limiter down")), late, spec
    )
    # The late headers go along, less a content-type that described the stream.
    expected = plain_error(500, ERROR_500, (b"x-shared", b"late"), (b"x-other", b"2"))
    same_for_every_path(sent_by, expected)
    assert logged(logs) == [("ERROR", "header resolver failed for /")] * len(ERROR_PATHS)


@SPECS
async def test_an_oversized_late_header_with_a_working_resolver_gives_the_same_500_everywhere(
    spec: str, logs: pytest.LogCaptureFixture
) -> None:
    sent_by = await responses(ERROR_PATHS, resolver_of({"x-r": "1"}), [SMALL, BIG], spec)
    same_for_every_path(sent_by, plain_error(500, ERROR_500))
    assert logged(logs) == [("ERROR", "response head too large for /")] * len(ERROR_PATHS)


@SPECS
async def test_own_late_and_resolved_headers_merge_in_the_same_order_everywhere(
    spec: str, logs: pytest.LogCaptureFixture
) -> None:
    resolved = {"x-resolved": "r", "x-late-only": "resolved"}
    late = [SMALL, ("x-late-only", "late"), ("x-late", "l")]
    sent_by = await responses(STREAMING_PATHS, resolver_of(resolved), late, spec)
    head = start(
        200,
        [
            (b"x-own", b"own"),
            (b"x-shared", b"late"),
            (b"x-late", b"l"),
            (b"x-resolved", b"r"),
            (b"x-late-only", b"resolved"),  # the later source wins, added after
        ],
    )
    same_for_every_path(sent_by, [head, chunk(b"a"), END])
    assert logged(logs) == []
