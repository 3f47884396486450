"""Tier-3 helpers: real ASGI servers on 127.0.0.1, on an ephemeral port, in a thread, and a
raw HTTP/1.1 client that shows what is on the wire.

Start-up and shut-down waits are bounded; a server that does not come up in time fails
the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._expect import WAIT

STARTUP_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 10.0

SERVERS = ["uvicorn-h11", "uvicorn-httptools", "hypercorn"]
"""The servers every tier-3 test runs on (all on asyncio)."""

TRIO_SERVERS = ["hypercorn-trio"]
"""Hypercorn's trio worker: the same server with the app running on trio; `serve` takes it."""


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    # uvicorn's own default: a burst of connections (the isolation test opens 200 at
    # once on a loaded machine) must queue, not overflow into resets.
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def _uvicorn(app: ASGIApp, http: str, sock: socket.socket, **config: Any) -> Iterator[None]:
    import uvicorn

    # Defaults that a test may override (lifespan="on" to run the app's start-up).
    options: dict[str, Any] = {"lifespan": "off", "log_level": "warning", **config}
    server = uvicorn.Server(uvicorn.Config(app, http=http, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn ({http}) did not start within {STARTUP_TIMEOUT}s")
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT)


@contextlib.contextmanager
def _hypercorn(app: ASGIApp, sock: socket.socket, **options: Any) -> Iterator[None]:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    port = sock.getsockname()[1]
    # Hypercorn takes the descriptor over and closes it on shut-down.
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    for name, value in options.items():
        setattr(config, name, value)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started = threading.Event()

    async def main() -> None:
        async def trigger() -> None:
            started.set()
            await stop.wait()

        await serve(app, config, shutdown_trigger=trigger)  # type: ignore[arg-type]

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not started.wait(STARTUP_TIMEOUT):
        raise RuntimeError(f"hypercorn did not start within {STARTUP_TIMEOUT}s")
    # The trigger starts just before the listener accepts; wait until it does.
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(SHUTDOWN_TIMEOUT)
        loop.close()


def _lifespan_optional(app: ASGIApp) -> ASGIApp:
    """Make an app that returns from a lifespan scope unanswered count as one without lifespan.

    Hypercorn's trio worker fails to start when an app returns from the lifespan scope
    without completing start-up (its asyncio worker carries on); an exception instead
    makes both carry on without lifespan, as for a plain ASGI function.
    """

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        sent: list[str] = []

        async def recording_send(message: Message) -> None:
            sent.append(message["type"])
            await send(message)

        await app(scope, receive, recording_send)
        if "lifespan.startup.complete" not in sent:
            raise RuntimeError("the app does not support the lifespan protocol")

    return wrapped


@contextlib.contextmanager
def _hypercorn_trio(app: ASGIApp, sock: socket.socket, **options: Any) -> Iterator[None]:
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    for name, value in options.items():
        setattr(config, name, value)
    served: Any = _lifespan_optional(app)  # hypercorn types the app more narrowly
    listening = threading.Event()
    # Set from the server thread once trio runs: the token to reach it and the stop event.
    handles: list[tuple[trio.lowlevel.TrioToken, trio.Event]] = []

    async def main() -> None:
        stop = trio.Event()
        handles.append((trio.lowlevel.current_trio_token(), stop))
        async with trio.open_nursery() as nursery:
            # `task_status.started` is called once the listeners accept connections.
            await nursery.start(
                functools.partial(serve, served, config, shutdown_trigger=stop.wait)
            )
            listening.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not listening.wait(0.01):
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"hypercorn (trio) did not start within {STARTUP_TIMEOUT}s")
    token, stop = handles[0]
    try:
        yield
    finally:
        with contextlib.suppress(trio.RunFinishedError):  # the server already stopped
            trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(SHUTDOWN_TIMEOUT)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _granian(app: ASGIApp) -> Iterator[str]:
    # Granian binds its own socket (it takes no listening socket from outside): take a
    # free port, and try another if it was taken in between.
    from granian.constants import Interfaces
    from granian.server.embed import Server

    for attempt in range(3):
        port = _free_port()
        server = Server(app, port=port, interface=Interfaces.ASGI, log_enabled=False)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_until_complete, args=(server.serve(),), daemon=True
        )
        thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while thread.is_alive():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"granian did not start within {STARTUP_TIMEOUT}s") from None
                time.sleep(0.01)
        if not thread.is_alive():  # it could not bind the port: try another
            thread.join(SHUTDOWN_TIMEOUT)
            loop.close()
            if attempt == 2:
                raise RuntimeError("granian did not start on any of 3 free ports")
            continue
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            loop.call_soon_threadsafe(server.stop)
            thread.join(SHUTDOWN_TIMEOUT)
            loop.close()
        return


@contextlib.contextmanager
def serve(app: ASGIApp, server: str, **config: Any) -> Iterator[str]:
    """Serve ``app`` with ``server`` (one of `SERVERS`, `TRIO_SERVERS` or ``"granian"``);
    yield its base URL.

    ``config``: uvicorn `Config` arguments, or hypercorn `Config` attributes.
    """
    if server == "granian":
        with _granian(app) as url:
            yield url
        return
    sock = _bound_socket()
    port = sock.getsockname()[1]
    try:
        cm: contextlib.AbstractContextManager[None]
        if server == "hypercorn":
            cm = _hypercorn(app, sock, **config)
        elif server == "hypercorn-trio":
            cm = _hypercorn_trio(app, sock, **config)
        else:
            cm = _uvicorn(app, server.removeprefix("uvicorn-"), sock, **config)
        with cm:
            yield f"http://127.0.0.1:{port}"
    finally:
        sock.close()  # a no-op once hypercorn detached it


# --- what the tier-3 tests send and expect on the wire ------------------------------

LATE_HEADERS = {"x-ratelimit-limit-requests": 100, "x-ratelimit-remaining-requests": 99}
LATE_LINES = [b"x-ratelimit-limit-requests: 100", b"x-ratelimit-remaining-requests: 99"]

# Header lines a server adds on its own (names compared lower-case).
SERVER_NAMES = frozenset({b"date", b"server", b"transfer-encoding", b"connection"})


# --- wire-level client ---------------------------------------------------------------


@dataclass
class RawResponse:
    """An HTTP/1.1 response as a server sent it: head lines verbatim, body de-framed."""

    status: int
    header_lines: list[bytes]
    body: bytes = b""
    chunks: list[bytes] | None = None
    """The payloads of the HTTP chunks, in order, when the body was chunked."""

    @property
    def app_lines(self) -> list[bytes]:
        """The header lines, in order, without those the server adds itself."""
        return [line for line in self.header_lines if _name(line) not in SERVER_NAMES]

    @property
    def server_lines(self) -> list[bytes]:
        """The header lines the server added, in order, without the (varying) date."""
        return [
            line
            for line in self.header_lines
            if _name(line) in SERVER_NAMES and _name(line) != b"date"
        ]

    def header(self, name: bytes) -> bytes | None:
        values = [line.partition(b": ")[2] for line in self.header_lines if _name(line) == name]
        assert len(values) <= 1, f"{name!r} sent {len(values)} times"
        return values[0] if values else None


def _name(line: bytes) -> bytes:
    return line.partition(b":")[0].lower()


_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3})(?: [\x20-\x7e]*)?")
_HEADER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [\x20-\x7e]*")


def _parse_head(head: bytes) -> RawResponse:
    status_line, *lines = head.split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    assert match is not None, f"bad status line {status_line!r}"
    for line in lines:
        # Every line is one well-formed header: nothing was split or injected.
        assert _HEADER_LINE.fullmatch(line), f"bad header line {line!r}"
    assert sum(_name(line) == b"date" for line in lines) == 1
    return RawResponse(int(match.group(1)), lines)


class Wire:
    """A raw HTTP/1.1 client connection that reads responses by their framing.

    Every byte received is kept in `received`, to check what was (not) on the wire.
    """

    def __init__(self, url: str) -> None:
        port = int(url.rsplit(":", 1)[1])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock.settimeout(WAIT)
        self.received = b""
        self._buffer = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def send(self, method: str, path: str, *, close: bool = False) -> None:
        connection = "Connection: close\r\n" if close else ""
        request = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{connection}\r\n"
        self.sock.sendall(request.encode())

    def receive_more(self) -> None:
        data = self.sock.recv(65536)
        assert data, f"connection closed early; received {self.received!r}"
        self.received += data
        self._buffer += data

    def _take_until(self, separator: bytes) -> bytes:
        while separator not in self._buffer:
            self.receive_more()
        taken, _, self._buffer = self._buffer.partition(separator)
        return taken

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self.receive_more()
        taken, self._buffer = self._buffer[:size], self._buffer[size:]
        return taken

    def read_head(self) -> RawResponse:
        return _parse_head(self._take_until(b"\r\n\r\n"))

    def read_body(self, response: RawResponse) -> RawResponse:
        """Read the body that ``response``'s head announces (none for HEAD)."""
        if response.header(b"transfer-encoding") is not None:
            assert response.header(b"transfer-encoding") == b"chunked"
            assert response.header(b"content-length") is None
            response.chunks = []
            while size := int(self._take_until(b"\r\n"), 16):
                response.chunks.append(self._take(size))
                assert self._take(2) == b"\r\n", "chunk not followed by CRLF"
            assert self._take(2) == b"\r\n", "trailers after the last chunk"
            response.body = b"".join(response.chunks)
        else:
            length = response.header(b"content-length")
            assert length is not None, "a response without framing"
            response.body = self._take(int(length))
        return response

    def read_response(self) -> RawResponse:
        return self.read_body(self.read_head())

    def read_until_eof(self, timeout: float) -> bytes:
        """The bytes left until the server closes the connection; TimeoutError after ``timeout``."""
        self.sock.settimeout(timeout)
        rest, self._buffer = self._buffer, b""
        while data := self.sock.recv(65536):
            self.received += data
            rest += data
        return rest


def _exchange(url: str, path: str) -> tuple[RawResponse, bytes]:
    """One GET on a fresh connection: the response, and every byte received."""
    with Wire(url) as wire:
        wire.send("GET", path)
        response = wire.read_response()
    return response, wire.received


# --- apps ----------------------------------------------------------------------------


def _app(*routes: Route) -> Starlette:
    return Starlette(routes=list(routes))


def _route(path: str, endpoint: object) -> Route:
    return Route(path, endpoint, methods=["GET", "HEAD"])  # type: ignore[arg-type]


class EndlessBody:
    """A body iterator that records every pull and its closing; it never ends."""

    def __init__(self) -> None:
        self.pulls = 0
        self.closed = threading.Event()

    def __aiter__(self) -> EndlessBody:
        return self

    async def __anext__(self) -> bytes:
        self.pulls += 1
        number = self.pulls - 1
        await anyio.sleep(0.01)
        return f"chunk {number}\n".encode()

    async def aclose(self) -> None:
        self.closed.set()


async def _late_after(seconds: float) -> dict[str, int]:
    await anyio.sleep(seconds)
    return LATE_HEADERS


ERROR_LINES = [b"content-type: text/plain; charset=utf-8", b"content-length: 21"]
"""The head lines of the plain-text 500 this package answers with."""


def _recording(app: ASGIApp, sent: list[str]) -> ASGIApp:
    """Wrap ``app`` to record the type of every HTTP message it sends."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def recording_send(message: Message) -> None:
            sent.append(message["type"])
            await send(message)

        await app(scope, receive, recording_send)

    return wrapped


def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


class EndlessStream:
    """An endless body of numbered chunks, of one kind, that records how it ended.

    Kinds: an async generator and a sync generator (their ``finally`` sets `finished`),
    and an async iterator object, which only its ``aclose()`` can mark finished.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.finished = threading.Event()
        self.exits: list[str] = []

    def body(self) -> object:
        if self.kind == "async generator":
            return self._async_generator()
        if self.kind == "sync generator":
            return self._sync_generator()
        iterator = EndlessBody()
        iterator.closed = self.finished
        return iterator

    async def _async_generator(self) -> AsyncIterator[bytes]:
        i = 0
        try:
            while True:
                yield f"chunk {i}\n".encode()
                i += 1
                await anyio.sleep(0.01)
        except BaseException as exc:
            self.exits.append(type(exc).__name__)
            raise
        finally:
            self.finished.set()

    def _sync_generator(self) -> Iterator[bytes]:
        i = 0
        try:
            while True:
                yield f"chunk {i}\n".encode()
                i += 1
                time.sleep(0.01)
        except BaseException as exc:
            self.exits.append(type(exc).__name__)
            raise
        finally:
            self.finished.set()
