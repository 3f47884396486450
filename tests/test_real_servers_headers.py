"""Tier 3: late headers, bodies and failures of `HeaderFirstStreamingResponse` behind real
ASGI servers, read by real clients.

Every test runs on uvicorn (h11 and httptools), hypercorn and granian, all on asyncio, and
on hypercorn's trio worker, so that the response also runs on trio behind a real server.
The clients are httpx (streaming), a raw socket whose bytes are parsed by `tests/_wire.py`
(so that nothing a client library does can hide what is on the wire) and, where
installed, curl.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.to_thread
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from header_first_stream import HeaderFirstStreamingResponse, late_headers

from ._asgi import failing_resolver
from ._expect import DEFAULT_502, WAIT
from ._server_apps import EndlessBody, _app, _late_after, _route
from ._servers import GRANIAN, HEAD_WITH_FIRST_CHUNK, SERVERS, TRIO_SERVERS, serve
from ._wire import ERROR_LINES, LATE_LINES, Wire, _exchange, _parse_head

pytestmark = pytest.mark.parametrize("server", [*SERVERS, *TRIO_SERVERS, GRANIAN])

HELD = 0.5
"""How long a test waits to see that nothing was sent yet."""


# What each server adds to a chunked keep-alive response, as sent on the wire.
SERVER_LINES = {
    "uvicorn-h11": [b"server: uvicorn", b"Transfer-Encoding: chunked"],
    "uvicorn-httptools": [b"server: uvicorn", b"transfer-encoding: chunked"],
    "hypercorn": [b"server: hypercorn-h11", b"Transfer-Encoding: chunked"],
    "hypercorn-trio": [b"server: hypercorn-h11", b"Transfer-Encoding: chunked"],
    "granian": [b"server: granian", b"transfer-encoding: chunked"],
}


# --- late headers in the head ---------------------------------------------------------


class LateHeaderApp:
    """An endpoint whose resolver completes 100 ms after the endpoint returned.

    The body waits for `gate`, which the test sets only once its client holds the
    response head: the head cannot have waited for the body. The gate stands before the
    first chunk (``gate_first``), or, behind a server that sends the head only with the
    first chunk (`HEAD_WITH_FIRST_CHUNK`), between the first and the second.
    """

    def __init__(self, *, gate_first: bool = True) -> None:
        self.gate_first = gate_first
        self.events: list[str] = []
        self.gate = threading.Event()

    @classmethod
    def behind(cls, server: str) -> LateHeaderApp:
        """The probe for ``server``: the gate as early as the server lets the head go out."""
        return cls(gate_first=server not in HEAD_WITH_FIRST_CHUNK)

    async def _wait(self) -> None:
        opened = await anyio.to_thread.run_sync(self.gate.wait, WAIT)
        self.events.append("gate passed" if opened else "gate timed out")

    async def endpoint(self, request: Request) -> Response:
        async def resolver() -> dict[str, int]:
            self.events.append("resolver started")
            headers = await _late_after(0.1)
            self.events.append("resolver returned")
            return headers

        async def chunks() -> AsyncIterator[bytes]:
            self.events.append("body pulled")
            if self.gate_first:
                await self._wait()
            yield b"first\n"
            if not self.gate_first:
                await self._wait()
            yield b"second\n"

        response = HeaderFirstStreamingResponse(
            chunks(), media_type="text/plain", headers={"x-own": "a"}, header_resolver=resolver
        )
        self.events.append("endpoint returned")
        return response

    def open_gate(self) -> None:
        self.events.append("client has head")
        self.gate.set()

    def assert_order(self) -> None:
        assert self.events[:3] == ["endpoint returned", "resolver started", "resolver returned"]
        assert sorted(self.events[3:5]) == ["body pulled", "client has head"]
        assert self.events[5:] == ["gate passed"]


@contextlib.contextmanager
def _streamed_to_httpx(probe: LateHeaderApp, server: str) -> Iterator[httpx.Response]:
    """``probe`` served by ``server``; its response as httpx streams it."""
    with (
        serve(_app(_route("/", probe.endpoint)), server) as url,
        httpx.Client(timeout=WAIT) as client,
        client.stream("GET", url + "/") as response,
    ):
        yield response


def test_late_headers_reach_httpx_before_the_body(server: str) -> None:
    probe = LateHeaderApp.behind(server)
    with _streamed_to_httpx(probe, server) as response:
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "100"
        assert response.headers["x-ratelimit-remaining-requests"] == "99"
        assert response.headers["x-own"] == "a"
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        probe.open_gate()
        assert response.read() == b"first\nsecond\n"
    probe.assert_order()


def test_late_headers_are_exact_lines_of_the_head_on_the_wire(server: str) -> None:
    probe = LateHeaderApp.behind(server)
    with serve(_app(_route("/", probe.endpoint)), server) as url, Wire(url) as wire:
        wire.send("GET", "/")
        # The whole head arrives while the body is still held at the gate.
        response = wire.read_head()
        probe.open_gate()
        wire.read_body(response)
    assert response.status == 200
    assert response.app_lines == [
        b"x-own: a",
        b"content-type: text/plain; charset=utf-8",
        *LATE_LINES,
    ]
    assert response.server_lines == SERVER_LINES[server]
    assert response.chunks == [b"first\n", b"second\n"]
    probe.assert_order()


def test_the_first_chunk_reaches_httpx_while_the_second_is_held(server: str) -> None:
    probe = LateHeaderApp(gate_first=False)
    with _streamed_to_httpx(probe, server) as response:
        assert response.status_code == 200
        assert response.headers["x-ratelimit-remaining-requests"] == "99"
        parts = response.iter_raw()
        received = next(parts)
        assert received == b"first\n"
        assert "gate passed" not in probe.events  # the second chunk is not produced yet
        probe.open_gate()
        received += b"".join(parts)
    assert received == b"first\nsecond\n"
    probe.assert_order()


def test_only_granian_holds_the_head_back_until_the_first_chunk(server: str) -> None:
    # uvicorn and hypercorn send the head on http.response.start; granian only with the
    # first body message, whatever the app does: behind it, a client of a slow stream
    # sees nothing, not even the head, until the first chunk.
    probe = LateHeaderApp(gate_first=True)
    with serve(_app(_route("/", probe.endpoint)), server) as url, Wire(url) as wire:
        wire.send("GET", "/")
        wire.sock.settimeout(HELD)
        with contextlib.suppress(TimeoutError):
            wire.receive_more()
        held = wire.received
        wire.sock.settimeout(WAIT)
        probe.open_gate()
        response = wire.read_response()
    assert (held == b"") == (server in HEAD_WITH_FIRST_CHUNK)
    assert response.status == 200
    assert response.app_lines == [
        b"x-own: a",
        b"content-type: text/plain; charset=utf-8",
        *LATE_LINES,
    ]
    assert response.chunks == [b"first\n", b"second\n"]
    assert probe.events[-1:] == ["gate passed"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_late_headers_in_the_head_curl_dumps(server: str) -> None:
    async def endpoint(request: Request) -> Response:
        async def chunks() -> AsyncIterator[str]:
            yield "data: one\n\n"
            yield "data: two\n\n"

        return HeaderFirstStreamingResponse(
            chunks(), media_type="text/event-stream", header_resolver=lambda: _late_after(0.1)
        )

    curl = shutil.which("curl")
    assert curl is not None
    with serve(_app(_route("/", endpoint)), server) as url:
        result = subprocess.run(
            [curl, "-sS", "-N", "-D", "-", "--max-time", str(WAIT), url + "/"],
            capture_output=True,
            timeout=WAIT * 2,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    # -D - writes the head, then the (de-chunked) body follows on stdout.
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    response = _parse_head(head)
    assert response.status == 200
    assert response.app_lines == [b"content-type: text/event-stream; charset=utf-8", *LATE_LINES]
    assert body == b"data: one\n\ndata: two\n\n"


# --- body --------------------------------------------------------------------------


CHUNKS = [f"{i:03d}:{'abcdefghij'[i % 10] * (i % 41)}\n".encode() for i in range(500)]


async def _many_chunks_endpoint(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in CHUNKS:
            yield chunk

    return HeaderFirstStreamingResponse(chunks(), header_resolver=lambda: _late_after(0.01))


def test_many_chunks_arrive_byte_exact_through_httpx(server: str) -> None:
    with (
        serve(_app(_route("/", _many_chunks_endpoint)), server) as url,
        httpx.Client(timeout=WAIT) as client,
        client.stream("GET", url + "/") as response,
    ):
        assert response.headers["x-ratelimit-remaining-requests"] == "99"
        body = b"".join(response.iter_bytes())
    assert body == b"".join(CHUNKS)


def test_many_chunks_arrive_one_http_chunk_each_in_order(server: str) -> None:
    with serve(_app(_route("/", _many_chunks_endpoint)), server) as url:
        response, _ = _exchange(url, "/")
    assert response.status == 200
    assert response.app_lines == LATE_LINES
    assert response.chunks == CHUNKS


# --- failures ----------------------------------------------------------------------


def test_failing_resolver_gives_a_500_that_leaks_nothing(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = EndlessBody()
    resolver = failing_resolver(RuntimeError("upstream said: secret-token-123"))

    async def endpoint(request: Request) -> Response:
        return HeaderFirstStreamingResponse(body, header_resolver=resolver)

    with serve(_app(_route("/fails", endpoint)), server) as url:
        response, received = _exchange(url, "/fails")
        with httpx.Client(timeout=WAIT) as client:
            through_httpx = client.get(url + "/fails")
    assert response.status == 500
    assert response.app_lines == ERROR_LINES
    assert response.body == b"Internal Server Error"
    assert b"secret" not in received
    assert through_httpx.status_code == 500
    assert through_httpx.content == b"Internal Server Error"
    assert body.pulls == 0
    assert body.closed.is_set()
    failures = [r for r in caplog.records if r.name == "header_first_stream"]
    assert [r.getMessage() for r in failures] == ["header resolver failed for /fails"] * 2
    assert all(r.exc_info is not None for r in failures)


@pytest.mark.parametrize("source", ["resolver", "own headers"])
def test_header_value_with_crlf_gives_a_500_without_the_injected_line(
    server: str, source: str
) -> None:
    evil = "ok\r\nx-injected: yes"

    async def resolver() -> dict[str, str]:
        return {"x-evil": evil} if source == "resolver" else {}

    async def endpoint(request: Request) -> Response:
        own = {"x-evil": evil} if source == "own headers" else None
        return HeaderFirstStreamingResponse(EndlessBody(), headers=own, header_resolver=resolver)

    with serve(_app(_route("/", endpoint)), server) as url:
        response, received = _exchange(url, "/")
    assert b"injected" not in received
    assert b"x-evil" not in received
    assert response.status == 500
    assert response.app_lines == ERROR_LINES
    assert response.body == b"Internal Server Error"


def test_a_body_failing_before_its_first_chunk_gives_a_502_or_the_handlers_answer(
    server: str, caplog: pytest.LogCaptureFixture
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
        serve(_app(_route("/default", default), _route("/handled", handled)), server) as url,
    ):
        first, received = _exchange(url, "/default")
        second, _ = _exchange(url, "/handled")
    assert first.status == 502
    assert first.app_lines == [
        f"content-length: {len(DEFAULT_502)}".encode(),
        b"content-type: application/json",
        b"x-request-id: req-1",
        b"x-ratelimit-remaining-requests: 41",
    ]
    assert first.body == DEFAULT_502
    assert b"10.0.0.7" not in received
    assert second.status == 429
    assert second.app_lines == [
        b"retry-after: 7",
        b"content-length: 24",
        b"content-type: application/json",
        b"x-ratelimit-remaining-requests: 41",
    ]
    assert second.body == b'{"error":"rate limited"}'
