"""Run an ASGI app on uvicorn in a thread, on a socket bound to 127.0.0.1: the one
server-start helper of the demo gateway (`examples.gateway.demo`), the benchmarks' server
(`benchmarks.e2e`) and the real-server tests (`tests/_servers.py`).

Start-up and shut-down are bounded: a server that does not come up within
`STARTUP_TIMEOUT` seconds raises instead of hanging its caller.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from starlette.types import ASGIApp

STARTUP_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 10.0


def free_port() -> int:
    """A port free on 127.0.0.1 right now, for a server that binds its socket itself."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bound_socket(port: int = 0, *, backlog: int = 2048) -> socket.socket:
    """A listening socket on 127.0.0.1 (``port`` 0: an ephemeral one) to hand to a server.

    The default backlog is uvicorn's own: a burst of connections (a test opens 200 at
    once on a loaded machine) must queue, not overflow into resets.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """The base URL of a server listening on ``sock``."""
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def uvicorn_on(app: ASGIApp, sock: socket.socket, **config: Any) -> Iterator[None]:
    """Run ``app`` on uvicorn, listening on ``sock``, in a thread, until the block ends.

    Args:
        app: The ASGI app.
        sock: A listening socket, e.g. from `bound_socket`; the caller closes it.
        **config: `uvicorn.Config` arguments (``log_level`` is ``"warning"`` unless given).

    Raises:
        RuntimeError: The server did not start within `STARTUP_TIMEOUT` seconds.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, **{"log_level": "warning", **config}))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"uvicorn did not start within {STARTUP_TIMEOUT}s; see its log above"
                )
            time.sleep(0.01)
        yield
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT)


@contextlib.contextmanager
def serve_uvicorn(app: ASGIApp, *, port: int = 0, **config: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (``port`` 0: an ephemeral one) in a thread;
    yield its base URL. ``config``: `uvicorn.Config` arguments, as for `uvicorn_on`.

    Raises:
        RuntimeError: The server did not start within `STARTUP_TIMEOUT` seconds.
    """
    sock = bound_socket(port)
    try:
        with uvicorn_on(app, sock, **config):
            yield url_of(sock)
    finally:
        sock.close()
