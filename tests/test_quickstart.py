"""examples/quickstart.py: the README's quick start, run on real servers so it cannot rot."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from examples.serving import free_port

from ._expect import WAIT
from ._servers import SERVERS, serve

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart.py"
START_MARKER = "# --- quickstart start ---"
END_MARKER = "# --- quickstart end ---"

STARTUP_TIMEOUT = 15.0

CHAT_BODY = b"data: Hello\n\ndata: from\n\ndata: a\n\ndata: stream\n\n"


@pytest.fixture(scope="module")
def quickstart() -> ModuleType:
    """The example module, loaded from its file (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("quickstart", QUICKSTART)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _snippet() -> str:
    """The lines between the quick-start markers, without surrounding blank lines."""
    lines = QUICKSTART.read_text().splitlines()
    start, end = lines.index(START_MARKER), lines.index(END_MARKER)
    return "\n".join(lines[start + 1 : end]).strip("\n")


def _readme_quickstart_block() -> str:
    """The first ```python block in the README's "## Quick start" section."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert "## Quick start" in lines, 'README.md has no "## Quick start" section'
    section = lines[lines.index("## Quick start") + 1 :]
    for i, line in enumerate(section):
        assert not line.startswith("## "), 'no ```python block under "## Quick start"'
        if line.strip() == "```python":
            end = section.index("```", i + 1)
            return "\n".join(section[i + 1 : end]).strip("\n")
    raise AssertionError('no ```python block under "## Quick start"')


def test_readme_quotes_the_quickstart_exactly() -> None:
    assert _readme_quickstart_block() == _snippet()


def test_quickstart_snippet_fits_in_15_lines() -> None:
    snippet = _snippet()
    assert "from header_first_stream import HeaderFirstStreamingResponse as StreamingResponse" in (
        snippet
    )
    assert "header_resolver=lambda: limiter.headers_for(key)" in snippet
    assert len(snippet.splitlines()) <= 15


@pytest.mark.parametrize("server", SERVERS)
def test_chat_streams_with_the_late_rate_limit_headers(quickstart: ModuleType, server: str) -> None:
    key = f"chat-{server}"
    with serve(quickstart.app, server) as url, httpx.Client(timeout=WAIT) as client:
        for remaining in ("99", "98"):
            with client.stream("GET", url + "/chat", headers={"x-api-key": key}) as response:
                # The head, with the headers committed after the endpoint returned, is
                # complete before any of the body is read.
                assert response.status_code == 200
                assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
                assert response.headers["x-ratelimit-limit-requests"] == "100"
                assert response.headers["x-ratelimit-remaining-requests"] == remaining
                assert response.headers["transfer-encoding"] == "chunked"
                assert response.read() == CHAT_BODY


@pytest.mark.parametrize("server", SERVERS)
def test_plain_dict_endpoint_carries_the_hooks_headers(quickstart: ModuleType, server: str) -> None:
    key = f"usage-{server}"
    with serve(quickstart.app, server) as url, httpx.Client(timeout=WAIT) as client:
        first = client.get(url + "/usage", headers={"x-api-key": key})
        second = client.get(url + "/usage", headers={"x-api-key": key})
    expected_body = f'{{"object":"usage","key":"{key}"}}'.encode()
    for response, remaining in ((first, "99"), (second, "98")):
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-ratelimit-limit-requests"] == "100"
        assert response.headers["x-ratelimit-remaining-requests"] == remaining
        # `_hidden_params` rides outside the mapping: the body is the dict alone.
        assert response.content == expected_body


def test_running_the_file_serves_on_the_port_from_the_environment() -> None:
    port = free_port()
    env = {**os.environ, "PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, str(QUICKSTART)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert process.poll() is None, "examples/quickstart.py exited during start-up"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"no server on port {port} in time"
                time.sleep(0.05)
        with httpx.Client(timeout=WAIT) as client:
            response = client.get(f"http://127.0.0.1:{port}/chat")
        assert response.status_code == 200
        assert response.headers["x-ratelimit-remaining-requests"] == "99"
        assert response.content == CHAT_BODY
    finally:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:  # pragma: no cover - only when shut-down hangs
            process.kill()
            output, _ = process.communicate()
    log = output.decode(errors="replace")
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it for the exit status.
    assert process.returncode in (0, -signal.SIGTERM), log
    assert "Finished server process" in log
