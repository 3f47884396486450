"""Tier-1 helpers: call an ASGI app directly and record every message it sends, with its time.

Starlette's TestClient and httpx's ASGITransport buffer the body, so only these recordings
can show *when* a message went out.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import httpx
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope

from benchmarks._apps import http_scope as http_scope
from header_first_stream import late_headers
from header_first_stream._late import CURRENT
from header_first_stream._types import HeaderSource


def scope_with_request_id(request_id: str, **scope: Any) -> Scope:
    """An `http_scope` (of the arguments ``scope``) whose late-header store already holds
    ``x-request-id: request_id``, as if a middleware before the app had added it."""
    built = http_scope(**scope)
    late_headers(built).add("x-request-id", request_id)
    return built


def websocket_scope(path: str = "/ws") -> Scope:
    return {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
    }


class Recorder:
    """An ASGI `send` that records (seconds since creation, message) pairs.

    With ``disconnected=True`` it behaves as a spec-2.4 server whose client left:
    every send raises OSError.
    """

    def __init__(self, *, disconnected: bool = False) -> None:
        self.start = time.monotonic()
        self.messages: list[tuple[float, Message]] = []
        self.disconnected = disconnected

    async def __call__(self, message: Message) -> None:
        if self.disconnected:
            raise OSError("connection closed")
        self.messages.append((time.monotonic() - self.start, message))

    @property
    def types(self) -> list[str]:
        return [message["type"] for _, message in self.messages]

    @property
    def head(self) -> Message:
        starts = [m for _, m in self.messages if m["type"].endswith("http.response.start")]
        assert len(starts) == 1, f"expected exactly one response start, got {len(starts)}"
        return starts[0]

    @property
    def status(self) -> int:
        return int(self.head["status"])

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.head["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(
            bytes(m.get("body", b"")) for _, m in self.messages if m["type"].endswith("body")
        )


def receive_nothing() -> Receive:
    """A `receive` whose client never sends anything more and never leaves."""

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    return receive


def receive_disconnect_after(seconds: float) -> Receive:
    """A `receive` whose client leaves ``seconds`` after the first call.

    Like a server's, it keeps its state across calls that were cancelled: the disconnect
    happens at the same moment however often ``receive()`` is called.
    """
    deadline: float | None = None

    async def receive() -> Message:
        nonlocal deadline
        if deadline is None:
            deadline = anyio.current_time() + seconds
        await anyio.sleep(max(0.0, deadline - anyio.current_time()))
        return {"type": "http.disconnect"}

    return receive


async def call(
    app: ASGIApp,
    scope: Scope | None = None,
    receive: Receive | None = None,
    send: Recorder | None = None,
) -> Recorder:
    """Call ``app`` once and return the recorder of what it sent."""
    recorder = send if send is not None else Recorder()
    await app(scope or http_scope(), receive or receive_nothing(), recorder)
    return recorder


# Shared expectations of the tier-1 tests.

LOGGER = "header_first_stream"


def start(status: int, headers: list[tuple[bytes, bytes]]) -> Message:
    """An ``http.response.start`` message as this package sends it."""
    return {"type": "http.response.start", "status": status, "headers": headers}


def chunk(body: bytes, more: bool = True) -> Message:
    """An ``http.response.body`` message."""
    return {"type": "http.response.body", "body": body, "more_body": more}


END = chunk(b"", more=False)


def sent(recorder: Recorder) -> list[Message]:
    """The messages a recorder saw, without their times."""
    return [message for _, message in recorder.messages]


async def wait_until(condition: Callable[[], bool], seconds: float) -> None:
    """Poll ``condition`` until it holds; fail after ``seconds``.

    For effects that no event announces (a generator's ``finally``, a log line).
    """
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but the condition
            await anyio.sleep(0.01)


# Bodies, clients, resolvers and handlers shared by the tier-1 tests.


async def tracked(events: list[str], *chunks: bytes | str) -> AsyncGenerator[bytes | str]:
    """An async generator that records being entered and closed.

    Its ``finally`` awaits before recording: closing must happen in a shielded scope
    for "closed" to be recorded after a cancellation.
    """
    events.append("body entered")
    try:
        for item in chunks:
            yield item
    finally:
        await anyio.lowlevel.checkpoint()
        events.append("body closed")


class TrackedBody:
    """An async iterator (not a generator) that counts pulls and ``aclose()`` calls."""

    def __init__(
        self,
        *chunks: bytes | str,
        error: Exception | None = None,
        close_error: Exception | None = None,
        close_delay: float = 0.0,
    ) -> None:
        self.chunks = list(chunks)
        self.error = error
        self.close_error = close_error
        self.close_delay = close_delay
        self.pulls = 0
        self.closes = 0

    def __aiter__(self) -> TrackedBody:
        return self

    async def __anext__(self) -> bytes | str:
        self.pulls += 1
        if self.chunks:
            return self.chunks.pop(0)
        if self.error is not None:
            raise self.error
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closes += 1
        if self.close_delay:
            await anyio.sleep(self.close_delay)
        if self.close_error is not None:
            raise self.close_error


class BlockingClient(Recorder):
    """A client that stops reading: sends after the first ``accept`` block forever.

    `stalled` is set once a send blocks; `disconnect_when_stalled` is a spec-2.3
    ``receive`` whose client leaves then, so no test depends on the machine's speed.
    """

    def __init__(self, accept: int) -> None:
        super().__init__()
        self.accept = accept
        self.stalled = anyio.Event()

    async def __call__(self, message: Message) -> None:
        if len(self.messages) >= self.accept:
            self.stalled.set()
            await anyio.sleep_forever()
        await super().__call__(message)

    async def disconnect_when_stalled(self) -> Message:
        await self.stalled.wait()
        return {"type": "http.disconnect"}


class LeavingClient(Recorder):
    """A spec-2.4 server whose client left after ``accept`` messages: send raises OSError."""

    def __init__(self, accept: int) -> None:
        super().__init__()
        self.accept = accept

    async def __call__(self, message: Message) -> None:
        if len(self.messages) >= self.accept:
            raise OSError("connection reset by peer")
        await super().__call__(message)


def resolver_of(headers: Any, *, waits: bool = False) -> Any:
    """A header resolver that returns ``headers``; with ``waits``, after 10 ms (as a resolver
    doing I/O), so that the response's listener runs meanwhile."""

    async def resolver(*first: object) -> Any:  # with or without peek_first_chunk
        if waits:
            await anyio.sleep(0.01)
        return headers

    return resolver


def failing_resolver(error: BaseException) -> Any:
    """A header resolver that raises ``error``."""

    async def resolver(*first: object) -> Any:
        raise error

    return resolver


async def never_resolves(*first: object) -> Any:
    """A header resolver that never returns: only its response's ``resolver_timeout`` ends it."""
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


class FakeUvicornServer:
    """What sse-starlette and we look for: a SIGTERM handler bound to a ``should_exit``
    (installed by the ``uvicorn_like`` fixture)."""

    def __init__(self) -> None:
        self.should_exit = False

    def handle_exit(self, sig: int, frame: object) -> None:  # pragma: no cover - not called
        self.should_exit = True


async def stale_cancellation() -> BaseException:
    """A cancellation caught in a cancel scope that has exited since: no longer anyone's."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.lowlevel.checkpoint()
        except anyio.get_cancelled_exc_class() as exc:
            caught = exc
            raise
    assert scope.cancelled_caught
    return caught


async def stray_cancellation(*args: object) -> HeaderSource:
    """A header resolver that raises a stray cancellation (`stale_cancellation`)."""
    raise await stale_cancellation()


async def hanging_resolver(*args: object) -> HeaderSource:
    """A header resolver (of a response or the middleware) that never returns."""
    await anyio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


async def words(*items: bytes) -> AsyncIterator[bytes]:
    """An async generator of ``items``, as an app's byte stream."""
    for item in items:
        yield item


async def events(*items: object) -> AsyncIterator[object]:
    """An async generator of ``items``, as an app's event source."""
    for item in items:
        yield item


def from_upstream_status(exc: Exception) -> Response | None:
    """An app's `early_error_handler`: forward an upstream's status and retry-after."""
    if isinstance(exc, httpx.HTTPStatusError):
        return JSONResponse(
            {"error": {"message": "rate limited upstream", "type": "rate_limit", "code": 429}},
            status_code=exc.response.status_code,
            headers={"retry-after": exc.response.headers["retry-after"]},
        )
    return None  # pragma: no cover


# The middleware's tests: an app's own messages, and what reached the client.

START: Message = {"type": "http.response.start", "status": 200, "headers": [(b"x-own", b"1")]}


def body(data: bytes, more: bool = False) -> Message:
    """An ``http.response.body`` message as an app sends it (the last one by default)."""
    return {"type": "http.response.body", "body": data, "more_body": more}


def header_values(recorder: Recorder, name: bytes) -> list[bytes]:
    """Every value of header ``name`` in the head the recorder saw."""
    return [value for key, value in recorder.headers if key == name]


def no_current_store() -> bool:
    """Whether the context variable of `late_headers()` is unset here."""
    try:
        CURRENT.get()
    except LookupError:
        return True
    return False
