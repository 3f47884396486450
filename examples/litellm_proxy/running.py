"""A real LiteLLM proxy, offline, in front of the mock upstream, on 127.0.0.1.

The one setup of ``python -m examples.litellm_proxy`` and of the tier's tests
(``scripts/test-litellm``). Each proxy gets a fresh directory laid out as an operator
would: a ``config.yaml`` with the mock upstream's models, the DB-free `custom_auth`
(every bearer token is a key with rpm/tpm limits, so that LiteLLM's limiter computes its
``x-ratelimit-*`` headers) and the example's callback files copied next to it. LiteLLM is
kept off the network: the model cost map and every other file it could download are read
from the package (`OFFLINE_ENV`). Start-up and shut-down are bounded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from ..gateway.upstream import OVERLOADED_MODEL, create_upstream_app
from ..serving import free_port, serve_uvicorn

EXAMPLE = Path(__file__).resolve().parent
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
"""LiteLLM's switches to read from the package what it would otherwise download."""


def mock_upstream() -> contextlib.AbstractContextManager[str]:
    """The mock OpenAI/Anthropic provider (`examples.gateway.upstream`) on uvicorn in a
    thread, on an ephemeral port of 127.0.0.1; yields its base URL."""
    return serve_uvicorn(create_upstream_app())


def litellm_executable() -> Path:
    """The ``litellm`` command next to this Python.

    Raises:
        RuntimeError: LiteLLM is not installed in this environment.
    """
    executable = Path(sys.executable).with_name("litellm")
    if not executable.exists():
        raise RuntimeError(
            f"no LiteLLM proxy next to {sys.executable}: run this in an environment with "
            "`pip install -e '.[litellm-proxy]'`, e.g. the one scripts/litellm-example makes"
        )
    return executable


def write_config(directory: Path, upstream_url: str, callbacks: tuple[str, ...]) -> Path:
    """Lay out a proxy directory: config.yaml, custom_auth.py and the callback files.

    ``callbacks`` are file names of the example's callbacks, none for a proxy without any
    (LiteLLM as it is). The models: ``test-chat`` (OpenAI), ``test-anthropic`` and
    ``test-overloaded`` (an OpenAI model the upstream answers with ``429``).
    """
    shutil.copy(EXAMPLE / "custom_auth.py", directory / "custom_auth.py")
    openai = {"api_base": f"{upstream_url}/v1", "api_key": "dummy"}
    config: dict[str, Any] = {
        "model_list": [
            {"model_name": "test-chat", "litellm_params": {"model": "openai/mock-chat", **openai}},
            {
                "model_name": "test-anthropic",
                "litellm_params": {
                    "model": "anthropic/mock-claude",
                    "api_base": upstream_url,
                    "api_key": "dummy",
                },
            },
            {
                "model_name": "test-overloaded",
                "litellm_params": {"model": f"openai/{OVERLOADED_MODEL}", **openai},
            },
        ],
        "general_settings": {
            "master_key": MASTER_KEY,
            "custom_auth": "custom_auth.user_api_key_auth",
        },
    }
    if callbacks:
        # The example's config names header_first_callback.py; the same entry, for each
        # callback wanted.
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
def litellm_proxy(
    directory: Path, upstream_url: str, callbacks: tuple[str, ...], *, trace: bool = False
) -> Iterator[str]:
    """Start ``litellm --config`` on a free port of 127.0.0.1; yield its base URL.

    The proxy's output goes to ``proxy.log`` in ``directory``. With ``trace``, the proxy
    runs under ``strace``, which writes every ``connect()`` of the proxy and its children
    to ``connect.log`` there (a seccomp filter: the other system calls run untraced).

    Raises:
        RuntimeError: The proxy exited or did not answer within `STARTUP_TIMEOUT` seconds.
    """
    command = [str(litellm_executable())]
    if trace:
        strace = shutil.which("strace")
        if strace is None:
            raise RuntimeError("strace is missing: scripts/test-litellm installs it (apt-get)")
        command = [
            *(strace, "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect"),
            *("-o", str(directory / "connect.log")),
            *command,
        ]
    config = write_config(directory, upstream_url, callbacks)
    port = free_port()
    log = (directory / "proxy.log").open("wb")
    process = subprocess.Popen(
        [*command, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
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
                raise RuntimeError(f"the LiteLLM proxy exited during start-up:\n{tail(directory)}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the LiteLLM proxy did not answer within {STARTUP_TIMEOUT}s:\n"
                    + tail(directory)
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
    """Stop the proxy (or strace and the proxy under it) and its children: one process group.

    Signalling strace alone is not enough: it detaches on SIGTERM and leaves the proxy
    running. The whole group gets SIGTERM, then, after `SHUTDOWN_TIMEOUT`, SIGKILL.
    """
    group = process.pid  # start_new_session: the process leads its own group
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT
    for stop in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, stop)
        while time.monotonic() < deadline:
            process.poll()  # reap the leader; its children are reaped by init
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
    raise RuntimeError(f"the LiteLLM proxy's process group {group} survived SIGKILL")


def tail(directory: Path) -> str:
    """The end of the proxy's output, for an error message."""
    return (directory / "proxy.log").read_text(errors="replace")[-4000:]
