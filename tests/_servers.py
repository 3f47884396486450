"""Tier-3 servers: real ASGI servers on 127.0.0.1, on an ephemeral port, in a thread.

`serve` starts any of them by name: uvicorn (h11, httptools) through the repository's one
uvicorn helper (`examples/serving.py`), hypercorn (asyncio and trio workers) on a socket
bound the same way, and granian, which binds its own. Start-up and shut-down waits are
bounded; a server that does not come up in time fails the test instead of hanging it.
What the tests send and read is in `tests/_wire.py`, the apps they serve in
`tests/_server_apps.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from examples.serving import (
    SHUTDOWN_TIMEOUT,
    STARTUP_TIMEOUT,
    bound_socket,
    free_port,
    url_of,
    uvicorn_on,
)

if TYPE_CHECKING:
    from hypercorn.config import Config

SERVERS = ["uvicorn-h11", "uvicorn-httptools", "hypercorn"]
"""The servers every tier-3 test runs on (all on asyncio)."""

TRIO_SERVERS = ["hypercorn-trio"]
"""Hypercorn's trio worker: the same server with the app running on trio; `serve` takes it."""

GRANIAN = "granian"
"""Granian, the Rust server (embedded, on asyncio; it does not run apps on trio)."""

H2C_SERVERS = ["hypercorn", "hypercorn-trio"]
"""The servers that speak HTTP/2 with prior knowledge (h2c) too."""

RequestOne = Callable[[httpx.AsyncClient, int], Coroutine[Any, Any, None]]
"""Sends request number ``index`` on the client given, and checks or records its response."""

HEAD_WITH_FIRST_CHUNK = frozenset({GRANIAN})
"""Servers that send a response's head only together with its first body message (the
others send it on ``http.response.start``)."""


def _wait_until_accepting(port: int, name: str, alive: threading.Thread) -> bool:
    """Connect to ``port`` until it accepts (``True``) or ``alive`` ends (``False``);
    RuntimeError after `STARTUP_TIMEOUT` seconds."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while alive.is_alive():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start within {STARTUP_TIMEOUT}s") from None
            time.sleep(0.01)
    return False


def _hypercorn_config(sock: socket.socket, options: dict[str, Any]) -> Config:
    """Hypercorn's `Config` for ``sock``, quiet, with ``options`` set on it."""
    from hypercorn.config import Config

    config = Config()
    # Hypercorn takes the descriptor over and closes it on shut-down.
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    for name, value in options.items():
        setattr(config, name, value)
    return config


@contextlib.contextmanager
def _hypercorn(app: ASGIApp, sock: socket.socket, **options: Any) -> Iterator[None]:
    from hypercorn.asyncio import serve

    port = sock.getsockname()[1]
    config = _hypercorn_config(sock, options)
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
    if not _wait_until_accepting(port, "hypercorn", thread):
        raise RuntimeError("hypercorn stopped during its start-up")
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
    from hypercorn.trio import serve

    config = _hypercorn_config(sock, options)
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


@contextlib.contextmanager
def _granian(app: ASGIApp) -> Iterator[str]:
    # Granian binds its own socket (it takes no listening socket from outside): take a
    # free port, and try another if it was taken in between.
    from granian.constants import Interfaces
    from granian.server.embed import Server

    for attempt in range(3):
        port = free_port()
        server = Server(app, port=port, interface=Interfaces.ASGI, log_enabled=False)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_until_complete, args=(server.serve(),), daemon=True
        )
        thread.start()
        if not _wait_until_accepting(port, "granian", thread):  # the port was taken: try another
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
    """Serve ``app`` with ``server`` (one of `SERVERS`, `TRIO_SERVERS` or `GRANIAN`);
    yield its base URL.

    ``config``: uvicorn `Config` arguments, or hypercorn `Config` attributes.
    """
    if server == GRANIAN:
        with _granian(app) as url:
            yield url
        return
    sock = bound_socket()
    url = url_of(sock)  # before hypercorn detaches the socket
    try:
        cm: contextlib.AbstractContextManager[None]
        if server == "hypercorn":
            cm = _hypercorn(app, sock, **config)
        elif server == "hypercorn-trio":
            cm = _hypercorn_trio(app, sock, **config)
        else:
            # Defaults that a test may override (lifespan="on" to run the app's start-up).
            options = {"lifespan": "off", **config}
            cm = uvicorn_on(app, sock, http=server.removeprefix("uvicorn-"), **options)
        with cm:
            yield url
    finally:
        sock.close()  # a no-op once hypercorn detached it


def served(app: ASGIApp, servers: Sequence[str]) -> Any:
    """A module-scoped fixture: ``app`` served by each of ``servers`` in turn (started once
    per server for the module); its value is the base URL. Name it by assigning it, e.g.
    ``http1 = served(APP, SERVERS)``."""

    @pytest.fixture(scope="module", params=list(servers))
    def fixture(request: pytest.FixtureRequest) -> Iterator[str]:
        with serve(app, request.param) as base:
            yield base

    return fixture


async def send_all_at_once(
    url: str,
    one: RequestOne,
    requests: int,
    *,
    clients: int,
    limits: httpx.Limits,
    client_timeout: float,
    within: float,
) -> float:
    """Start ``requests`` requests at once, ``one(client, index)`` each, spread over
    ``clients`` httpx clients (one pool of many connections would measure the client's
    pool scans); fail if they are not all done ``within`` seconds. Returns their seconds.
    """
    async with AsyncExitStack() as stack:
        pool = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, limits=limits, timeout=client_timeout)
            )
            for _ in range(clients)
        ]
        started = time.monotonic()
        with anyio.fail_after(within):
            async with anyio.create_task_group() as task_group:
                for index in range(requests):
                    task_group.start_soon(one, pool[index % clients], index)
        return time.monotonic() - started
