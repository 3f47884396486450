"""SIGTERM to a real uvicorn process with an endless stream open: it exits at once.

Without ``end_on_shutdown`` (or with Starlette's class), uvicorn's graceful shutdown waits
for the stream until its own timeout, or forever; the last test shows that.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

APP = """
import anyio
from starlette.applications import Starlette
from starlette.routing import Route
from header_first_stream import HeaderFirstEventSourceResponse, HeaderFirstStreamingResponse


def endless(name):
    async def generate():
        try:
            while True:
                yield "tick"
                await anyio.sleep(0.05)
        finally:
            print(f"finally {name}", flush=True)

    return generate()


async def sse(request):
    return HeaderFirstEventSourceResponse(endless("sse"))


async def stream(request):
    return HeaderFirstStreamingResponse(endless("stream"), end_on_shutdown=True)


async def kept(request):
    return HeaderFirstStreamingResponse(endless("kept"))


app = Starlette(routes=[Route("/sse", sse), Route("/stream", stream), Route("/kept", kept)])
"""


@pytest.fixture
def uvicorn_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    (tmp_path / "endless_app.py").write_text(APP)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "endless_app:app", "--fd", str(sock.fileno())],
        pass_fds=[sock.fileno()],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sock.close()
    try:
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def open_stream_then_sigterm(
    process: subprocess.Popen[str], url: str, path: str, wait: float
) -> tuple[float, int | None, str]:
    """Open ``path``, read its first bytes, send SIGTERM; return (seconds to exit, code, log)."""
    with httpx.Client(base_url=url, timeout=10) as client:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.head("/sse")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.05)
        with client.stream("GET", path) as response:
            assert response.status_code == 200
            chunks = response.iter_bytes()  # kept: closing it would close the connection
            next(chunks)  # the stream is open and flowing
            process.send_signal(signal.SIGTERM)
            sent_at = time.monotonic()
            try:
                output, _ = process.communicate(timeout=wait)
            except subprocess.TimeoutExpired:
                return time.monotonic() - sent_at, None, ""
            return time.monotonic() - sent_at, process.returncode, output


@pytest.mark.parametrize("path", ["/sse", "/stream"])
def test_sigterm_lets_a_real_uvicorn_exit_at_once_with_the_stream_closed(
    uvicorn_process: tuple[subprocess.Popen[str], str], path: str
) -> None:
    process, url = uvicorn_process
    seconds, code, output = open_stream_then_sigterm(process, url, path, wait=10)
    assert code == -signal.SIGTERM, output  # uvicorn re-raises the signal it caught
    assert seconds < 2.0, output
    assert f"finally {path.strip('/')}" in output


def test_without_end_on_shutdown_a_stream_holds_uvicorns_shutdown(
    uvicorn_process: tuple[subprocess.Popen[str], str],
) -> None:
    process, url = uvicorn_process
    _, code, output = open_stream_then_sigterm(process, url, "/kept", wait=2)
    assert code is None, output  # still running after 2 s: the fixture kills it
