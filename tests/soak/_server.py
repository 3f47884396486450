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
    # Pooled client connections can sit idle for seconds while a loaded runner serves its
    # other tasks: a long keep-alive keeps the servers from closing them just as they are
    # reused (a race in the client, not in what is tested).
    config: dict[str, Any] = (
        {"timeout_keep_alive": 60} if server.startswith("uvicorn") else {"keep_alive_timeout": 60}
    )
    with serve(app(), server, **config) as url:
        print(url, flush=True)
        sys.stdin.read()  # until the runner closes our stdin


if __name__ == "__main__":
    main()
