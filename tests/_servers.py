"""Tier-3 helpers: real ASGI servers on 127.0.0.1, on an ephemeral port, in a thread.

Start-up and shut-down waits are bounded; a server that does not come up in time fails
the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
