"""The soak server process: ``python -m tests.soak._server SERVER``.

Serves `tests.soak._app.app` on 127.0.0.1 (an ephemeral port) with one of the servers of
`tests._servers`, prints its base URL on one line, and stops when its stdin closes. A
process of its own, so that its memory (RSS) is the server's alone.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from .._servers import serve
from ._app import app


def main() -> None:
    server = sys.argv[1]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    config: dict[str, Any] = {}
    if server.startswith("uvicorn"):
        # Pooled client connections sit idle while others are served on a loaded machine.
        config = {"timeout_keep_alive": 60}
    with serve(app(), server, **config) as url:
        print(url, flush=True)
        sys.stdin.read()  # until the runner closes our stdin


if __name__ == "__main__":
    main()
