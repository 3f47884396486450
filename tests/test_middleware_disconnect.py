"""`HeaderFirstMiddleware` and a client that leaves before the head went out.

The middleware does not own ``receive`` but sees every ``http.disconnect`` the app
receives: a running resolver is cancelled at once, no head is sent, and what the app still
sends is dropped (below ASGI spec 2.4) or refused with `OSError` (from 2.4 on, as a server
would). An app that never listens cannot tell the middleware: its resolver runs until it
returns, bounded by ``resolver_timeout`` (pinned below as the documented limit).

Tier 1 (recorded ASGI calls, asyncio and trio) and tier 3 (real servers, a raw socket that
closes while the resolver runs).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from header_first_stream import HeaderFirstMiddleware

from ._asgi import Recorder, http_scope, receive_disconnect_after
from ._servers import serve

LEAVE_AFTER = 0.05
"""When the recorded client leaves, in seconds after the app's first ``receive()``."""

BOUND = 1.0
"""How late after the disconnect the resolver may be cancelled (a loaded 2-core machine)."""

START: Message = {"type": "http.response.start", "status": 200, "headers": [(b"x-own", b"1")]}


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


class SlowResolver:
    """A resolver that sleeps ``seconds`` and records when it started and how it ended."""

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self.calls = 0
        self.started_at: float | None = None
        self.cancelled_at: float | None = None
        self.finished = False

    async def __call__(self, scope: Scope) -> dict[str, str]:
        self.calls += 1
        self.started_at = time.monotonic()
        try:
            await anyio.sleep(self.seconds)
        except anyio.get_cancelled_exc_class():
            self.cancelled_at = time.monotonic()
            raise
        self.finished = True
        return {"x-resolved": "1"}


def listening_app(after_leaving: list[str]) -> ASGIApp:
    """A bare app that sends in one task and listens in another, which never cancels it."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def respond() -> None:
            await send(START)
            await send(body(b"first", more=True))  # the resolver runs inside this send
            try:
                await send(body(b"rest"))
            except OSError as exc:
                after_leaving.append(f"OSError: {exc}")
                return
            after_leaving.append("dropped")

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(respond)
            # A real server first gives the (empty) request body; each message is awaited.
            while (await receive())["type"] != "http.disconnect":
                pass

    return app


@pytest.mark.anyio
@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_a_disconnect_the_app_receives_cancels_the_running_resolver(
    spec_version: str,
) -> None:
    resolver = SlowResolver()
    after_leaving: list[str] = []
    app = HeaderFirstMiddleware(listening_app(after_leaving), resolver=resolver)
    recorder = Recorder()
    started = time.monotonic()
    with anyio.fail_after(5):
        await app(
            http_scope(spec_version=spec_version), receive_disconnect_after(LEAVE_AFTER), recorder
        )
    assert recorder.messages == []
    assert resolver.calls == 1
    assert resolver.finished is False
    assert resolver.cancelled_at is not None
    assert LEAVE_AFTER <= resolver.cancelled_at - started < LEAVE_AFTER + BOUND
    if spec_version == "2.4":
        assert after_leaving == [
            "OSError: the client disconnected before the response head was sent "
            "(the app received http.disconnect); stop sending"
        ]
    else:
        assert after_leaving == ["dropped"]


@pytest.mark.anyio
async def test_the_app_receives_the_disconnect_only_after_the_resolvers_send_returned() -> None:
    # So that an app which cancels its sending task on the disconnect cancels it in its
    # own code (its body generator), not inside our send.
    order: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def respond() -> None:
            await send(START)
            await send(body(b"first", more=True))  # the resolver runs inside this send
            order.append("send returned")

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(respond)
            assert (await receive())["type"] == "http.disconnect"
            order.append("disconnect received")

    recorder = Recorder()
    with anyio.fail_after(5):
        await HeaderFirstMiddleware(app, resolver=SlowResolver())(
            http_scope(), receive_disconnect_after(LEAVE_AFTER), recorder
        )
    assert order == ["send returned", "disconnect received"]
    assert recorder.messages == []


@pytest.mark.anyio
async def test_a_disconnect_before_the_head_means_the_resolver_is_never_called() -> None:
    resolver = SlowResolver()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.disconnect"
        await send(START)
        await send(body(b"late"))

    recorder = Recorder()
    with anyio.fail_after(5):
        await HeaderFirstMiddleware(app, resolver=resolver)(
            http_scope(), receive_disconnect_after(0.01), recorder
        )
    assert recorder.messages == []
    assert resolver.calls == 0


@pytest.mark.anyio
async def test_a_resolver_that_ends_without_noticing_the_disconnect_sends_no_head() -> None:
    # A resolver in a worker thread cannot be cancelled: it returns after the client left.
    returned: list[bool] = []

    async def resolver(scope: Scope) -> dict[str, str]:
        await anyio.to_thread.run_sync(time.sleep, 0.3)
        returned.append(True)
        return {"x-resolved": "1"}

    after_leaving: list[str] = []
    app = HeaderFirstMiddleware(listening_app(after_leaving), resolver=resolver)
    recorder = Recorder()
    with anyio.fail_after(5):
        await app(http_scope(), receive_disconnect_after(LEAVE_AFTER), recorder)
    assert returned == [True]
    assert recorder.messages == []
    assert after_leaving == ["dropped"]


@pytest.mark.anyio
@pytest.mark.parametrize("awaits_between_chunks", [True, False])
async def test_starlette_streaming_response_cancels_the_resolver_and_closes_its_generator(
    awaits_between_chunks: bool,
) -> None:
    # Starlette's class cancels its streaming task on a disconnect and never closes its
    # body iterator: if the cancellation landed in our send, the generator would be left,
    # suspended, to the garbage collector. It lands in the generator, which closes.
    resolver = SlowResolver()
    events: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        try:
            events.append("first")
            yield b"first"  # the middleware's resolver runs while this chunk is sent
            if awaits_between_chunks:
                await anyio.sleep(10)
            yield b"second"
            events.append("after the last chunk")
        finally:
            events.append("closed")

    async def endpoint(request: Request) -> Response:
        return StreamingResponse(chunks())

    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(HeaderFirstMiddleware, resolver=resolver)
    recorder = Recorder()
    started = time.monotonic()
    with anyio.fail_after(5):
        await app(http_scope(spec_version="2.3"), receive_disconnect_after(LEAVE_AFTER), recorder)
    assert recorder.messages == []
    if awaits_between_chunks:
        assert events == ["first", "closed"]  # cancelled in its sleep, inside the request
    else:
        assert events == ["first", "after the last chunk", "closed"]  # ran to its end
    assert resolver.cancelled_at is not None
    assert resolver.cancelled_at - started < LEAVE_AFTER + BOUND


@pytest.mark.anyio
async def test_an_app_that_never_listens_lets_the_resolver_finish() -> None:
    # The documented limit: JSONResponse never calls receive(), so the middleware cannot
    # know the client left; the resolver runs to its end and the head goes to the server.
    resolver = SlowResolver(seconds=0.2)

    async def endpoint(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/", endpoint)])
    app.add_middleware(HeaderFirstMiddleware, resolver=resolver)
    recorder = Recorder()
    with anyio.fail_after(5):
        await app(http_scope(), receive_disconnect_after(0.01), recorder)
    assert resolver.finished is True
    assert resolver.cancelled_at is None
    assert recorder.status == 200
    assert (b"x-resolved", b"1") in recorder.headers
    assert recorder.body == b'{"ok":true}'


# --- tier 3: a real server, a client that leaves -----------------------------------------


@pytest.mark.parametrize("server", ["uvicorn-httptools", "hypercorn", "hypercorn-trio"])
def test_a_client_that_leaves_cancels_the_resolver_on_a_real_server(server: str) -> None:
    cancelled = threading.Event()
    started = threading.Event()
    outcome: list[str] = []

    async def resolver(scope: Scope) -> dict[str, str]:
        started.set()
        try:
            await anyio.sleep(10)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        outcome.append("finished")  # pragma: no cover - the failure this test catches
        return {}  # pragma: no cover

    app = HeaderFirstMiddleware(listening_app(outcome), resolver=resolver)
    with serve(app, server) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert started.wait(5), "the resolver did not start"
            left_at = time.monotonic()
            sock.shutdown(socket.SHUT_WR)  # FIN; nothing was received
            sock.settimeout(5)
            assert cancelled.wait(5), "the resolver was not cancelled"
            assert time.monotonic() - left_at < BOUND + 1
            # Nothing of the response reaches the client: the server closes without a byte.
            assert sock.recv(65536) == b""
        deadline = time.monotonic() + 5
        while not outcome and time.monotonic() < deadline:
            time.sleep(0.01)
    assert outcome == ["dropped"]
