"""The LiteLLM tier: a real LiteLLM proxy, started as a subprocess on 127.0.0.1.

Run by ``scripts/test-litellm`` in ``.venv-litellm`` (LiteLLM pinned in the
``litellm-proxy`` extra); the default suite does not collect this directory.

Each proxy gets a fresh config in a temporary directory: the mock upstream's models
(`examples.gateway.upstream`), the DB-free `custom_auth` of this directory, and the
example's ``callbacks:`` entry with the callback files copied next to it, as an operator
would lay them out. LiteLLM is kept off the network: the model cost map and every other
file it could download are read from the package (``LITELLM_LOCAL_*``). Each proxy runs
under ``strace``, which records every ``connect()`` of the proxy and its children (a
seccomp filter: the other system calls run untraced), so that a test can check that
LiteLLM connected to nothing but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from examples.gateway.upstream import create_upstream_app
from tests._servers import serve

EXAMPLE = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 120.0  # LiteLLM imports for ~10 s on an idle machine
SHUTDOWN_TIMEOUT = 15.0
MASTER_KEY = "sk-header-first-stream-test-0123456789abcdef0123456789abcdef"

OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_TELEMETRY": "False",
}


@pytest.fixture(scope="session")
def upstream_url() -> Iterator[str]:
    """The mock OpenAI/Anthropic provider on uvicorn, on 127.0.0.1."""
    with serve(create_upstream_app(), "uvicorn-h11") as url:
        yield url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(directory: Path, upstream_url: str, callbacks: tuple[str, ...]) -> Path:
    """Lay out a proxy directory: config.yaml, custom_auth.py and the callback files.

    ``callbacks`` are file names of the example's callbacks, none for a proxy without any
    (LiteLLM as it is).
    """
    shutil.copy(Path(__file__).with_name("custom_auth.py"), directory / "custom_auth.py")
    config: dict[str, Any] = {
        "model_list": [
            {
                "model_name": "test-chat",
                "litellm_params": {
                    "model": "openai/mock-chat",
                    "api_base": f"{upstream_url}/v1",
                    "api_key": "dummy",
                },
            },
            {
                "model_name": "test-anthropic",
                "litellm_params": {
                    "model": "anthropic/mock-claude",
                    "api_base": upstream_url,
                    "api_key": "dummy",
                },
            },
        ],
        "general_settings": {
            "master_key": MASTER_KEY,
            "custom_auth": "custom_auth.user_api_key_auth",
        },
    }
    if callbacks:
        # The example's config names header_first_callback.py; the same entry, for each
        # callback under test.
        example = yaml.safe_load((EXAMPLE / "config.yaml").read_text())
        entry = example["litellm_settings"]["callbacks"]
        for callback in callbacks:
            shutil.copy(EXAMPLE / callback, directory / callback)
        config["litellm_settings"] = {
            "callbacks": [
                entry.replace("header_first_callback", Path(callback).stem)
                for callback in callbacks
            ]
        }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def litellm_proxy(directory: Path, upstream_url: str, callbacks: tuple[str, ...]) -> Iterator[str]:
    """Start ``litellm --config`` on a free port of 127.0.0.1; yield its base URL.

    The proxy's ``connect()`` calls are written to ``connect.log`` in ``directory``
    (`connections` reads them).
    """
    strace = shutil.which("strace")
    if strace is None:
        raise RuntimeError("strace is missing: scripts/test-litellm installs it (apt-get)")
    config = write_config(directory, upstream_url, callbacks)
    port = _free_port()
    log = (directory / "proxy.log").open("wb")
    process = subprocess.Popen(
        [
            *(strace, "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect"),
            *("-o", str(directory / "connect.log")),
            str(Path(sys.executable).with_name("litellm")),
            *("--config", str(config), "--host", "127.0.0.1", "--port", str(port)),
        ],
        cwd=directory,
        env={**os.environ, **OFFLINE_ENV},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the LiteLLM proxy exited during start-up:\n{_tail(directory)}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the LiteLLM proxy did not answer within {STARTUP_TIMEOUT}s:\n"
                    + _tail(directory)
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health/liveliness", timeout=2.0).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        _stop(process)
        log.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop strace, the proxy under it and the proxy's children: one process group.

    Signalling strace alone is not enough: it detaches on SIGTERM and leaves the proxy
    running. The whole group gets SIGTERM, then, after `SHUTDOWN_TIMEOUT`, SIGKILL.
    """
    group = process.pid  # start_new_session: strace leads its own process group
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT
    for stop in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, stop)
        while time.monotonic() < deadline:
            process.poll()  # reap strace; its children are reaped by init
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
    raise RuntimeError(f"the LiteLLM proxy's process group {group} survived SIGKILL")


_FAMILY = re.compile(r"connect\(\d+, \{sa_family=(\w+)")
_PORT = re.compile(r"sin6?_port=htons\((\d+)\)")
_ADDRESS = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


def connections(directory: Path) -> list[tuple[str, str | None, int | None]]:
    """Every ``connect()`` of a proxy started in ``directory``: (family, address, port)."""
    found: list[tuple[str, str | None, int | None]] = []
    for line in (directory / "connect.log").read_text().splitlines():
        family = _FAMILY.search(line)
        if family is None:
            continue  # not a connect() line: a signal, an exit status
        port = _PORT.search(line)
        address = _ADDRESS.search(line)
        found.append(
            (
                family[1],
                (address[1] or address[2]) if address else None,
                int(port[1]) if port else None,
            )
        )
    return found


def _tail(directory: Path) -> str:
    return (directory / "proxy.log").read_text(errors="replace")[-4000:]
