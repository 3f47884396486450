"""Serve the ``app`` of a program file on an inherited listening socket, in a child process.

Run by tests that must start a program as its user would (each in a fresh interpreter:
Django's settings, for one, can be configured once per process)::

    python -m tests._program_server SERVER DIRECTORY MODULE FD

SERVER is ``uvicorn`` (asyncio) or ``hypercorn-trio``; MODULE is imported from DIRECTORY
(not run as ``__main__``, so the program's own ``uvicorn.run`` does not start); FD is a
listening socket the parent opened on 127.0.0.1 and passed down.
"""

from __future__ import annotations

import functools
import importlib
import socket
import sys
from typing import Any

from ._servers import _lifespan_optional


def main(server: str, directory: str, module: str, fd: str) -> None:
    sys.path.insert(0, directory)
    app: Any = importlib.import_module(module).app
    sock = socket.socket(fileno=int(fd))
    if server == "uvicorn":
        import uvicorn

        config = uvicorn.Config(app, lifespan="auto", log_level="warning")
        uvicorn.Server(config).run(sockets=[sock])
    elif server == "hypercorn-trio":
        import trio
        from hypercorn.config import Config
        from hypercorn.trio import serve

        hypercorn_config = Config()
        hypercorn_config.bind = [f"fd://{sock.detach()}"]
        hypercorn_config.accesslog = None
        served: Any = _lifespan_optional(app)  # hypercorn types the app more narrowly
        trio.run(functools.partial(serve, served, hypercorn_config))
    else:
        raise SystemExit(f"unknown server {server!r}: use uvicorn or hypercorn-trio")


if __name__ == "__main__":
    main(*sys.argv[1:])
