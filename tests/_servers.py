"""Tier-3 helpers: real ASGI servers on 127.0.0.1, on an ephemeral port, in a thread.

Start-up and shut-down waits are bounded; a server that does not come up in time fails
the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from starlette.types import ASGIApp

STARTUP_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 10.0

SERVERS = ["uvicorn-h11", "uvicorn-httptools", "hypercorn"]


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def _uvicorn(app: ASGIApp, http: str, sock: socket.socket, **config: Any) -> Iterator[None]:
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, http=http, lifespan="off", log_level="warning", **config)
    )
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
def _hypercorn(app: ASGIApp, sock: socket.socket) -> Iterator[None]:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    port = sock.getsockname()[1]
    # Hypercorn takes the descriptor over and closes it on shut-down.
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
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


@contextlib.contextmanager
def serve(app: ASGIApp, server: str, **config: Any) -> Iterator[str]:
    """Serve ``app`` with ``server`` (one of `SERVERS`); yield its base URL."""
    sock = _bound_socket()
    port = sock.getsockname()[1]
    try:
        if server == "hypercorn":
            cm = _hypercorn(app, sock)
        else:
            cm = _uvicorn(app, server.removeprefix("uvicorn-"), sock, **config)
        with cm:
            yield f"http://127.0.0.1:{port}"
    finally:
        sock.close()  # a no-op once hypercorn detached it
