"""The gateway behind ``uvicorn --workers N``: N processes, one Redis for their quotas and keys.

uvicorn's workers each import the app, so the app comes from a factory, `create_app`,
configured by environment variables (the only way uvicorn passes settings to its
workers):

- ``GATEWAY_UPSTREAM_URL`` (required): the provider's base URL;
- ``GATEWAY_REDIS_URL``: the shared store; without it each worker counts on its own,
  which is exactly the bug the Redis back end fixes;
- ``GATEWAY_CORS_ORIGINS``: comma-separated origins of browser pages;
- ``GATEWAY_ON_STORE_ERROR``: ``error`` (default) or ``degrade`` (see `Gateway`).

Every response carries ``x-gateway-worker`` (the worker's process id), so that a client
can see that its requests were spread over the workers and still counted as one.
`running_workers` starts such a gateway in a subprocess, as ``scripts/demo --workers N``
and the tests do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import httpx
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..serving import free_port
from .app import Gateway, StoreErrorPolicy

STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 10.0
WORKER_HEADER = "x-gateway-worker"


def _with_worker_header(app: ASGIApp) -> ASGIApp:
    pid = str(os.getpid())

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[WORKER_HEADER] = pid
            await send(message)

        await app(scope, receive, send_with_pid)

    return wrapped


def create_app() -> ASGIApp:
    """The gateway for one worker, configured by the environment (see the module docstring).

    Raises:
        RuntimeError: ``GATEWAY_UPSTREAM_URL`` is not set.
    """
    upstream_url = os.environ.get("GATEWAY_UPSTREAM_URL")
    if not upstream_url:
        raise RuntimeError(
            "GATEWAY_UPSTREAM_URL is not set; set it to the provider's base URL, "
            "e.g. GATEWAY_UPSTREAM_URL=http://127.0.0.1:28100"
        )
    redis_url = os.environ.get("GATEWAY_REDIS_URL")
    origins = [o for o in os.environ.get("GATEWAY_CORS_ORIGINS", "").split(",") if o]
    raw_policy = os.environ.get("GATEWAY_ON_STORE_ERROR", "error")
    if raw_policy not in ("error", "degrade"):
        raise RuntimeError(
            f"GATEWAY_ON_STORE_ERROR must be 'error' or 'degrade', got {raw_policy!r}"
        )
    policy: StoreErrorPolicy = "degrade" if raw_policy == "degrade" else "error"
    if redis_url:
        from .limiter_redis import redis_backends  # needs the `redis` package

        limiter, keys = redis_backends(redis_url)
        gateway = Gateway(
            upstream_url, limiter=limiter, keys=keys, on_store_error=policy, cors_origins=origins
        )
    else:
        gateway = Gateway(upstream_url, on_store_error=policy, cors_origins=origins)
    return _with_worker_header(gateway.app)


@contextlib.contextmanager
def running_workers(
    upstream_url: str,
    *,
    workers: int,
    redis_url: str | None = None,
    port: int = 0,
    cors_origins: Sequence[str] = (),
    on_store_error: StoreErrorPolicy = "error",
) -> Iterator[str]:
    """Run the gateway with ``uvicorn --workers`` in a subprocess; yield its base URL.

    Start-up is bounded: the gateway must answer within `STARTUP_TIMEOUT` seconds. On
    exit the server gets SIGTERM (uvicorn stops its workers), then SIGKILL if it lingers.

    Raises:
        RuntimeError: The gateway did not start in time, or exited.
    """
    port = port or free_port()
    env = {
        **os.environ,
        "GATEWAY_UPSTREAM_URL": upstream_url,
        "GATEWAY_CORS_ORIGINS": ",".join(cors_origins),
        "GATEWAY_ON_STORE_ERROR": on_store_error,
    }
    env.pop("GATEWAY_REDIS_URL", None)
    if redis_url:
        env["GATEWAY_REDIS_URL"] = redis_url
    command = [
        sys.executable, "-m", "uvicorn", "examples.gateway.workers:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--log-level", "warning", "--timeout-graceful-shutdown", "2",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(process, url, workers)
        yield url
    finally:
        _stop(process)


def _wait_until_answering(process: subprocess.Popen[bytes], url: str, workers: int) -> None:
    # Every worker must be up: poll until `workers` distinct pids have answered (the
    # kernel spreads new connections over them), or the deadline passes.
    deadline = time.monotonic() + STARTUP_TIMEOUT
    seen: set[str] = set()
    while len(seen) < workers:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the gateway's {workers} workers did not all answer within "
                f"{STARTUP_TIMEOUT}s ({len(seen)} did)"
            )
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.post(url + "/key/generate", timeout=1.0)  # 401: no key
            seen.add(response.headers.get(WORKER_HEADER, ""))
            continue
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(SHUTDOWN_TIMEOUT)
