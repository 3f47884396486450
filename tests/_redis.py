"""A real ``redis-server`` for the tests: on 127.0.0.1, a free port, no persistence.

Start-up is bounded: the server must answer ``PING`` within `STARTUP_TIMEOUT` seconds.
Needs Debian's ``redis-server`` package (``scripts/test-scale`` installs it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

from examples.serving import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
STARTUP_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 10.0


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process; `stop`, `start`, `pause` and `resume` it at will."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (empty) and wait until it answers ``PING``."""
        if not os.path.exists(REDIS_SERVER):
            raise RuntimeError(
                f"{REDIS_SERVER} is missing; run scripts/test-scale, which installs "
                "Debian's redis-server"
            )
        command = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--loglevel", "warning",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _ping(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"redis-server did not answer on port {self.port} within {STARTUP_TIMEOUT}s"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop it: clients then get ``connection refused``; what it held is lost."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        process.terminate()
        try:
            process.wait(SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(SHUTDOWN_TIMEOUT)

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections stay open and nothing answers, as in a partition."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server carry on where it stopped, with its data."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A started `RedisServer`, stopped on exit."""
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
