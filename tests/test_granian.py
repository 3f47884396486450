"""Tier 3 on granian: the core behaviours of `HeaderFirstStreamingResponse` behind the Rust
ASGI server (embedded, on asyncio; granian does not run apps on trio).

The same checks as tests/test_real_servers.py runs on uvicorn and hypercorn, for what
matters most: late headers in the head (on the wire and through httpx), a client that
leaves while the head is held back or mid-stream, HEAD, and errors before the first byte
(a failing resolver, a body failing before its first chunk).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from header_first_stream import HeaderFirstStreamingResponse, late_headers

from ._expect import WAIT
from ._servers import (
    ERROR_LINES,
    LATE_LINES,
    EndlessBody,
    EndlessStream,
    Wire,
    _app,
    _exchange,
    _late_after,
    _no_errors_logged,
    _recording,
    _route,
    serve,
)

SERVER = "granian"

HELD = 0.5
"""How long a test waits to see that nothing was sent yet."""

GRANIAN_LINES = [b"server: granian", b"transfer-encoding: chunked"]
"""What granian adds to a chunked keep-alive response, as sent on the wire (and a date)."""

DEFAULT_502_BODY = (
    b'{"error":{"message":"The upstream service failed before sending a response.",'
    b'"type":"upstream_error","code":502}}'
)


class GatedStream:
    """An endpoint whose resolver takes 100 ms and whose body waits at a gate.

    With ``gate_first``, the gate is before the first chunk; otherwise between the first
    and the second.
    """

    def __init__(self, *, gate_first: bool) -> None:
        self.gate_first = gate_first
        self.gate = threading.Event()
        self.outcome: list[str] = []

    async def _wait(self) -> None:
        opened = await anyio.to_thread.run_sync(self.gate.wait, WAIT)
        self.outcome.append("opened" if opened else "timed out")

    async def endpoint(self, request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            if self.gate_first:
                await self._wait()
            yield b"first\n"
            if not self.gate_first:
                await self._wait()
            yield b"second\n"

        return HeaderFirstStreamingResponse(
            chunks(),
            media_type="text/plain",
            headers={"x-own": "a"},
            header_resolver=lambda: _late_after(0.1),
        )


def test_late_headers_reach_httpx_with_the_first_chunk_and_the_rest_streams() -> None:
    probe = GatedStream(gate_first=False)
    with (
        serve(_app(_route("/", probe.endpoint)), SERVER) as url,
        httpx.Client(timeout=WAIT) as client,
        client.stream("GET", url + "/") as response,
    ):
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "100"
        assert response.headers["x-ratelimit-remaining-requests"] == "99"
        assert response.headers["x-own"] == "a"
        parts = response.iter_raw()
        received = next(parts)
        assert received == b"first\n"
        assert probe.outcome == []  # the second chunk is not produced yet
        probe.gate.set()
        received += b"".join(parts)
    assert received == b"first\nsecond\n"
    assert probe.outcome == ["opened"]


def test_late_headers_are_exact_lines_of_the_head_on_the_wire() -> None:
    probe = GatedStream(gate_first=False)
    with serve(_app(_route("/", probe.endpoint)), SERVER) as url, Wire(url) as wire:
        wire.send("GET", "/")
        response = wire.read_head()  # while the second chunk is held at the gate
        probe.gate.set()
        wire.read_body(response)
    assert response.status == 200
    assert response.app_lines == [
        b"x-own: a",
        b"content-type: text/plain; charset=utf-8",
        *LATE_LINES,
    ]
    assert response.server_lines == GRANIAN_LINES
    assert response.chunks == [b"first\n", b"second\n"]


def test_granian_sends_the_head_only_with_the_first_body_message() -> None:
    # Unlike uvicorn and hypercorn, which send the head on http.response.start: a client
    # of a slow stream sees nothing, not even the head, until the first chunk.
    probe = GatedStream(gate_first=True)
    with serve(_app(_route("/", probe.endpoint)), SERVER) as url, Wire(url) as wire:
        wire.send("GET", "/")
        wire.sock.settimeout(HELD)
        with pytest.raises(TimeoutError):
            wire.receive_more()
        assert wire.received == b""
        wire.sock.settimeout(WAIT)
        probe.gate.set()
        response = wire.read_response()
    assert response.status == 200
    assert response.app_lines == [
        b"x-own: a",
        b"content-type: text/plain; charset=utf-8",
        *LATE_LINES,
    ]
    assert response.chunks == [b"first\n", b"second\n"]
    assert probe.outcome == ["opened"]


def test_disconnect_while_resolving_cancels_the_resolver_and_sends_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = EndlessBody()
    resolver_started = threading.Event()
    resolver_cancelled = threading.Event()
    sent: list[str] = []

    async def resolver() -> dict[str, str]:
        resolver_started.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            resolver_cancelled.set()
            raise
        return {"x-never": "sent"}  # pragma: no cover

    async def endpoint(request: Request) -> Response:
        return HeaderFirstStreamingResponse(body, header_resolver=resolver)

    with serve(_recording(_app(_route("/", endpoint)), sent), SERVER) as url:
        with Wire(url) as wire:
            wire.send("GET", "/")
            assert resolver_started.wait(WAIT)
        assert resolver_cancelled.wait(WAIT), "the resolver was not cancelled"
        assert body.closed.wait(WAIT), "the body iterator was not closed"
    assert body.pulls == 0
    assert sent == []
    _no_errors_logged(caplog)


@pytest.mark.parametrize("kind", ["async generator", "sync generator", "async iterator"])
def test_disconnect_mid_stream_closes_the_body(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    stream = EndlessStream(kind)

    async def endpoint(request: Request) -> Response:
        return HeaderFirstStreamingResponse(
            stream.body(), header_resolver=lambda: _late_after(0.01)
        )

    with serve(_app(_route("/", endpoint)), SERVER) as url:
        with Wire(url) as wire:
            wire.send("GET", "/")
            assert wire.read_head().app_lines == LATE_LINES
            while b"chunk 3\n" not in wire.received:
                wire.receive_more()
        assert stream.finished.wait(WAIT), f"the {kind} was not closed"
    assert stream.exits in ([], ["GeneratorExit"], ["CancelledError"])
    _no_errors_logged(caplog)


def test_head_on_an_endless_stream_returns_the_late_headers_and_no_body() -> None:
    body = EndlessBody()

    async def endless(request: Request) -> Response:
        return HeaderFirstStreamingResponse(body, header_resolver=lambda: _late_after(0.01))

    async def plain(request: Request) -> Response:
        return PlainTextResponse("next")

    with (
        serve(_app(_route("/", endless), _route("/next", plain)), SERVER) as url,
        Wire(url) as wire,
    ):
        wire.send("HEAD", "/")
        head = wire.read_head()
        assert body.closed.wait(WAIT)
        # Had any body followed the HEAD response's head, it would stand before this status.
        wire.send("GET", "/next")
        after = wire.read_response()
    assert head.status == 200
    assert head.app_lines == LATE_LINES
    assert body.pulls == 0
    assert after.status == 200
    assert after.body == b"next"


def test_failing_resolver_gives_a_500_that_leaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    body = EndlessBody()

    async def resolver() -> dict[str, str]:
        raise RuntimeError("upstream said: secret-token-123")

    async def endpoint(request: Request) -> Response:
        return HeaderFirstStreamingResponse(body, header_resolver=resolver)

    with serve(_app(_route("/fails", endpoint)), SERVER) as url:
        response, received = _exchange(url, "/fails")
    assert response.status == 500
    assert response.app_lines == ERROR_LINES
    assert response.body == b"Internal Server Error"
    assert b"secret" not in received
    assert body.pulls == 0
    assert body.closed.is_set()
    failures = [r for r in caplog.records if r.name == "header_first_stream"]
    assert [r.getMessage() for r in failures] == ["header resolver failed for /fails"]


def test_a_body_failing_before_its_first_chunk_gives_a_502_or_the_handlers_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def failing() -> AsyncIterator[bytes]:
        raise RuntimeError("connection refused by 10.0.0.7:8443 (internal detail)")
        yield b"never"  # pragma: no cover

    async def resolver(first: object) -> dict[str, int]:
        return {"x-ratelimit-remaining-requests": 41}

    def rate_limited(exc: Exception) -> Response:
        return JSONResponse(
            {"error": "rate limited"}, status_code=429, headers={"retry-after": "7"}
        )

    async def default(request: Request) -> Response:
        late_headers(request).add("x-request-id", "req-1")
        return HeaderFirstStreamingResponse(
            failing(),
            media_type="text/event-stream",
            header_resolver=resolver,
            peek_first_chunk=True,
        )

    async def handled(request: Request) -> Response:
        return HeaderFirstStreamingResponse(
            failing(),
            header_resolver=resolver,
            peek_first_chunk=True,
            early_error_handler=rate_limited,
        )

    with (
        caplog.at_level(logging.ERROR, logger="header_first_stream"),
        serve(_app(_route("/default", default), _route("/handled", handled)), SERVER) as url,
    ):
        first, received = _exchange(url, "/default")
        second, _ = _exchange(url, "/handled")
    assert first.status == 502
    assert first.app_lines == [
        f"content-length: {len(DEFAULT_502_BODY)}".encode(),
        b"content-type: application/json",
        b"x-request-id: req-1",
        b"x-ratelimit-remaining-requests: 41",
    ]
    assert first.body == DEFAULT_502_BODY
    assert b"10.0.0.7" not in received
    assert second.status == 429
    assert second.app_lines == [
        b"retry-after: 7",
        b"content-length: 24",
        b"content-type: application/json",
        b"x-ratelimit-remaining-requests: 41",
    ]
    assert second.body == b'{"error":"rate limited"}'


def test_granian_advertises_spec_2_3() -> None:
    # Below 2.4: the response runs its disconnect listener, as on uvicorn and hypercorn.
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen.append(scope["asgi"]["spec_version"])
        await PlainTextResponse("ok")(scope, receive, send)

    with serve(app, SERVER) as url, httpx.Client(timeout=WAIT) as client:
        assert client.get(url + "/").text == "ok"
    assert seen == ["2.3"]
