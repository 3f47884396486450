"""The bug report's probes against the gateway, on real servers: ``scripts/demo``.

Starts the mock upstream and the gateway with uvicorn on ephemeral 127.0.0.1 ports (each
in a thread, start-up and shut-down bounded), creates a key with ``rpm_limit`` 6000 and
``tpm_limit`` 100000, sends one request per shape, and prints the
``x-ratelimit-api_key-*`` headers of each.

Modes and exit status:

- default: exits 0 only if every shape carries all four headers, every body is complete,
  and the remaining counts go down request by request; 1 otherwise.
- ``--without-fix``: runs the same probes against the gateway without this library
  (Starlette's `StreamingResponse`, plain dicts) and against the fixed one, and shows
  them side by side. Showing the bug is its job: it exits 0 when the unfixed gateway loses
  exactly the headers the bug report says (streams and the plain-dict
  ``/v1/messages``) and the fixed one loses none; 1 if either is not so.
- ``--serve``: keeps both servers running and prints the bug report's curl commands
  with the real port and key, and serves a chat page (`web`) on a third port, until
  Ctrl-C (exit 0).

Scale: ``--workers N --redis URL`` runs the gateway as N uvicorn worker processes
(`workers`) sharing keys and quotas in Redis; the probes then go to whichever worker the
kernel picks, and the counts still go down by one per request.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.types import ASGIApp

from .app import MASTER_KEY, Gateway
from .limiter import HEADER_PREFIX
from .upstream import REPLY, create_upstream_app
from .web import create_page_app
from .workers import WORKER_HEADER, free_port, running_workers

STARTUP_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 10.0
CLIENT_TIMEOUT = 10.0

RPM_LIMIT = 6000
TPM_LIMIT = 100000
PAGE_RPM_LIMIT = 10
"""The chat page's key: small, so that a few messages show the ``429``."""
PAGE_TPM_LIMIT = 1000
PAGE_CHUNK_DELAY = 0.08
"""Seconds between streamed pieces with ``--serve``: slow enough to watch them arrive."""

HEADER_NAMES = tuple(
    HEADER_PREFIX + suffix
    for suffix in ("remaining-requests", "limit-requests", "remaining-tokens", "limit-tokens")
)
"""The four headers every shape must carry, in the bug report's order."""


@dataclass(frozen=True)
class Probe:
    """One request of the bug report: a shape, its path and body, and proof of a full body."""

    shape: str
    path: str
    body: dict[str, Any]
    marker: bytes
    """Bytes that only a complete body contains (the end of a stream)."""

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


_HELLO = [{"role": "user", "content": "hello"}]

PROBES = (
    Probe(
        "chat/completions (sync)",
        "/v1/chat/completions",
        {"model": "test-chat", "messages": _HELLO},
        REPLY.encode(),
    ),
    Probe(
        "chat/completions (stream=true)",
        "/v1/chat/completions",
        {"model": "test-chat", "stream": True, "messages": _HELLO},
        b"data: [DONE]\n\n",
    ),
    Probe(
        "embeddings (sync)",
        "/v1/embeddings",
        {"model": "test-embedding", "input": "hello"},
        b'"object":"embedding"',
    ),
    Probe(
        "messages (sync)",
        "/v1/messages",
        {"model": "test-anthropic", "max_tokens": 100, "messages": _HELLO},
        REPLY.encode(),
    ),
    Probe(
        "messages (stream=true)",
        "/v1/messages",
        {"model": "test-anthropic", "max_tokens": 100, "stream": True, "messages": _HELLO},
        b"event: message_stop\n",
    ),
    Probe(
        "responses (stream=true)",
        "/v1/responses",
        {"model": "test-chat", "stream": True, "input": "hello"},
        b"event: response.completed\n",
    ),
)

KEEPS_HEADERS_WITHOUT_FIX = frozenset({"chat/completions (sync)", "embeddings (sync)"})
"""The shapes that carry their headers in LiteLLM too (typed responses, not streams)."""


@dataclass(frozen=True)
class ProbeResult:
    """What the client saw for one probe."""

    shape: str
    status: int
    content_type: str
    ratelimit: dict[str, str]
    """The ``x-ratelimit-api_key-*`` headers received, in `HEADER_NAMES` order."""
    complete: bool
    worker: str = ""
    """The gateway worker's process id, from ``x-gateway-worker`` (with ``--workers``)."""


@dataclass(frozen=True)
class Running:
    """The servers of one demo run."""

    upstream_url: str
    gateway_url: str
    gateway: Gateway | None
    """The gateway object when it runs in this process; ``None`` with worker processes."""


@contextlib.contextmanager
def serve(app: ASGIApp, *, port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn (lifespan on) on 127.0.0.1 in a thread; yield its URL.

    Raises:
        RuntimeError: The server did not start within `STARTUP_TIMEOUT` seconds.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    config = uvicorn.Config(app, lifespan="on", log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"uvicorn did not start within {STARTUP_TIMEOUT}s; see its log above"
                )
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT)
        sock.close()


@contextlib.contextmanager
def running(
    *,
    fix: bool = True,
    upstream_url: str | None = None,
    port: int = 0,
    chunk_delay: float = 0.0,
    workers: int = 1,
    redis_url: str | None = None,
    cors_origins: Sequence[str] = (),
) -> Iterator[Running]:
    """Start the upstream (unless ``upstream_url`` names one) and a gateway in front of it.

    Args:
        fix: ``False`` starts the gateway that loses headers as LiteLLM does.
        upstream_url: An upstream already running; a new mock one by default.
        port: The gateway's port; ephemeral by default.
        chunk_delay: Seconds between streamed events of a new mock upstream.
        workers: With ``redis_url``: the number of uvicorn worker processes.
        redis_url: Keep keys and quotas in this Redis; the gateway then runs as
            ``workers`` processes (`workers.running_workers`), always with the fix.
        cors_origins: Origins of browser pages that may call the gateway.
    """
    with contextlib.ExitStack() as stack:
        if upstream_url is None:
            upstream_url = stack.enter_context(serve(create_upstream_app(chunk_delay=chunk_delay)))
        if redis_url is not None:
            gateway_url = stack.enter_context(
                running_workers(
                    upstream_url,
                    workers=workers,
                    redis_url=redis_url,
                    port=port,
                    cors_origins=cors_origins,
                )
            )
            yield Running(upstream_url, gateway_url, None)
            return
        gateway = Gateway(upstream_url, fix=fix, cors_origins=cors_origins)
        gateway_url = stack.enter_context(serve(gateway.app, port=port))
        yield Running(upstream_url, gateway_url, gateway)


def create_key(
    gateway_url: str,
    *,
    rpm_limit: int | None = RPM_LIMIT,
    tpm_limit: int | None = TPM_LIMIT,
    models: Sequence[str] = ("test-embedding", "test-chat", "test-anthropic"),
) -> str:
    """Create a virtual key with ``POST /key/generate`` under the master key; return it."""
    response = httpx.post(
        gateway_url + "/key/generate",
        headers={"authorization": f"Bearer {MASTER_KEY}"},
        json={"models": list(models), "tpm_limit": tpm_limit, "rpm_limit": rpm_limit},
        timeout=CLIENT_TIMEOUT,
    )
    response.raise_for_status()
    key: str = response.json()["key"]
    return key


def ratelimit_headers(headers: httpx.Headers) -> dict[str, str]:
    """The ``x-ratelimit-api_key-*`` headers among ``headers``, in `HEADER_NAMES` order."""
    return {name: headers[name] for name in HEADER_NAMES if name in headers}


def run_probe(client: httpx.Client, gateway_url: str, key: str, probe: Probe) -> ProbeResult:
    """Send one probe; read its head first, then its whole body."""
    with client.stream(
        "POST",
        gateway_url + probe.path,
        headers={"authorization": f"Bearer {key}"},
        json=probe.body,
    ) as response:
        ratelimit = ratelimit_headers(response.headers)
        body = response.read()
    return ProbeResult(
        probe.shape,
        response.status_code,
        response.headers.get("content-type", ""),
        ratelimit,
        probe.marker in body,
        response.headers.get(WORKER_HEADER, ""),
    )


def run_probes(gateway_url: str, key: str, *, new_connections: bool = False) -> list[ProbeResult]:
    """Send every probe of `PROBES`, one after the other, with ``key``.

    With ``new_connections``, each probe opens its own connection, so that a gateway with
    several worker processes may serve each with another worker.
    """
    keepalive = 0 if new_connections else None
    limits = httpx.Limits(max_keepalive_connections=keepalive)
    with httpx.Client(timeout=CLIENT_TIMEOUT, limits=limits) as client:
        return [run_probe(client, gateway_url, key, probe) for probe in PROBES]


def check_results(results: Sequence[ProbeResult]) -> list[str]:
    """What is wrong with a run of the fixed gateway; ``[]`` if nothing.

    Every shape must answer 200 with a complete body and all four headers with the key's
    limits, and each request's remaining counts must be below the previous request's:
    one request fewer, and fewer tokens.
    """
    problems: list[str] = []
    previous: ProbeResult | None = None
    for result in results:
        missing = [name for name in HEADER_NAMES if name not in result.ratelimit]
        if result.status != 200:
            problems.append(f"{result.shape}: status {result.status}, expected 200")
        if not result.complete:
            problems.append(f"{result.shape}: the body is incomplete")
        if missing:
            problems.append(f"{result.shape}: missing {', '.join(missing)}")
        else:
            limits = (
                result.ratelimit[HEADER_PREFIX + "limit-requests"],
                result.ratelimit[HEADER_PREFIX + "limit-tokens"],
            )
            if limits != (str(RPM_LIMIT), str(TPM_LIMIT)):
                problems.append(f"{result.shape}: limits {limits}, expected the key's")
            if previous is not None and not _goes_down(previous, result):
                problems.append(
                    f"{result.shape}: remaining counts did not go down after {previous.shape}"
                )
            previous = result
    return problems


def _goes_down(before: ProbeResult, after: ProbeResult) -> bool:
    requests = HEADER_PREFIX + "remaining-requests"
    tokens = HEADER_PREFIX + "remaining-tokens"
    return int(after.ratelimit[requests]) == int(before.ratelimit[requests]) - 1 and int(
        after.ratelimit[tokens]
    ) < int(before.ratelimit[tokens])


def check_bug_shown(results: Sequence[ProbeResult]) -> list[str]:
    """What differs from the bug report in a run of the unfixed gateway; ``[]`` if nothing.

    The typed shapes (`KEEPS_HEADERS_WITHOUT_FIX`) keep all four headers; streams and the
    plain-dict ``/v1/messages`` lose all four.
    """
    problems: list[str] = []
    for result in results:
        expected = 4 if result.shape in KEEPS_HEADERS_WITHOUT_FIX else 0
        if result.status != 200 or not result.complete:
            problems.append(f"{result.shape}: status {result.status}, complete={result.complete}")
        if len(result.ratelimit) != expected:
            problems.append(
                f"{result.shape}: {len(result.ratelimit)} headers, the bug report has {expected}"
            )
    return problems


_COLUMNS = ("remaining-requests", "limit-requests", "remaining-tokens", "limit-tokens")


def format_table(results: Sequence[ProbeResult]) -> str:
    """The results as a table: shape, status, body, and the four headers' values."""
    rows: list[tuple[str, ...]] = [("shape", "status", "body", *_COLUMNS)]
    for result in results:
        values = [result.ratelimit.get(name, "MISSING") for name in HEADER_NAMES]
        body = "complete" if result.complete else "INCOMPLETE"
        rows.append((result.shape, str(result.status), body, *values))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def format_side_by_side(without_fix: Sequence[ProbeResult], with_fix: Sequence[ProbeResult]) -> str:
    """One line per shape: what the client got without and with this library."""

    def cell(result: ProbeResult) -> str:
        return f"{result.status}, {len(result.ratelimit)} of 4 headers"

    rows = [("shape", "without the fix", "with header-first-stream")]
    rows += [
        (before.shape, cell(before), cell(after))
        for before, after in zip(without_fix, with_fix, strict=True)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = []
    for row in rows:
        lost = row[1].endswith(" 0 of 4 headers")
        marker = "  <- lost" if lost else ""
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + marker
        )
    return "\n".join(lines)


def curl_commands(gateway_url: str, key: str) -> str:
    """The bug report's curl commands, for this gateway and key."""
    auth = ["-H", "Authorization: Bearer $KEY", "-H", "Content-Type: application/json"]
    generate = [
        "curl", "-sS", "$PROXY/key/generate",
        "-H", f"Authorization: Bearer {MASTER_KEY}", "-H", "Content-Type: application/json",
        "-d", json.dumps({"models": ["test-embedding", "test-chat", "test-anthropic"],
                          "tpm_limit": TPM_LIMIT, "rpm_limit": RPM_LIMIT}),
    ]  # fmt: skip
    lines = [
        f"KEY={key}",
        f"PROXY={gateway_url}",
        "",
        "# another key:",
        _shell(generate),
    ]
    for probe in PROBES:
        stream = ["-N"] if probe.stream else []
        command = [
            "curl", "-sS", "-D", "-", "-o", "/dev/null", *stream, *auth,
            f"$PROXY{probe.path}", "-d", json.dumps(probe.body, separators=(",", ":")),
        ]  # fmt: skip
        lines += ["", f"# {probe.shape}", _shell(command) + " | grep -i ratelimit"]
    return "\n".join(lines)


def _shell(words: Sequence[str]) -> str:
    # Quote for the shell, but leave $KEY and $PROXY to be expanded.
    quoted = []
    for word in words:
        if "$" in word and "'" not in word:
            quoted.append(f'"{word}"')
        else:
            quoted.append(shlex.quote(word))
    return " ".join(quoted)


def _run_fixed(workers: int = 1, redis_url: str | None = None) -> int:
    with running(fix=True, workers=workers, redis_url=redis_url) as servers:
        key = create_key(servers.gateway_url)
        results = run_probes(servers.gateway_url, key, new_connections=redis_url is not None)
    print(f"x-ratelimit-api_key-* headers per shape (key: rpm {RPM_LIMIT}, tpm {TPM_LIMIT})")
    print()
    print(format_table(results))
    print()
    if redis_url is not None:
        served_by = sorted({result.worker for result in results})
        print(
            f"{workers} worker processes sharing {redis_url}; these requests were served "
            f"by {len(served_by)} of them (pids {', '.join(served_by)})."
        )
        print()
    problems = check_results(results)
    if problems:
        print("FAILED:")
        print("\n".join(f"  {problem}" for problem in problems))
        return 1
    print(f"OK: all {len(results)} shapes carry all four headers; the counts go down.")
    return 0


def _run_side_by_side() -> int:
    with (
        running(fix=False) as unfixed,
        running(fix=True, upstream_url=unfixed.upstream_url) as fixed,
    ):
        before = run_probes(unfixed.gateway_url, create_key(unfixed.gateway_url))
        after = run_probes(fixed.gateway_url, create_key(fixed.gateway_url))
    print("Without the fix (Starlette StreamingResponse, plain dicts), as in the bug report:")
    print()
    print(format_table(before))
    print()
    print("Side by side:")
    print()
    print(format_side_by_side(before, after))
    print()
    problems = [f"without the fix: {p}" for p in check_bug_shown(before)]
    problems += [f"with the fix: {p}" for p in check_results(after)]
    if problems:
        print("UNEXPECTED:")
        print("\n".join(f"  {problem}" for problem in problems))
        return 1
    lost = len(before) - len(KEEPS_HEADERS_WITHOUT_FIX)
    print(
        f"Bug shown: without the fix {lost} of {len(before)} shapes lose their headers "
        "(streams and the plain-dict messages); with it, none do."
    )
    return 0


def _serve(
    *, fix: bool, port: int, page_port: int, workers: int = 1, redis_url: str | None = None
) -> int:
    page_port = page_port or free_port()
    # Both spellings of the page's origin: the browser sends the one in its address bar.
    origins = [f"http://127.0.0.1:{page_port}", f"http://localhost:{page_port}"]
    with contextlib.ExitStack() as stack:
        servers = stack.enter_context(
            running(
                fix=fix,
                port=port,
                chunk_delay=PAGE_CHUNK_DELAY,
                workers=workers,
                redis_url=redis_url,
                cors_origins=origins,
            )
        )
        key = create_key(servers.gateway_url)
        page_key = create_key(
            servers.gateway_url, rpm_limit=PAGE_RPM_LIMIT, tpm_limit=PAGE_TPM_LIMIT
        )
        page_url = stack.enter_context(
            serve(create_page_app(servers.gateway_url, page_key), port=page_port)
        )
        mode = "WITHOUT the fix" if not fix else "with header-first-stream"
        print(f"Gateway ({mode}) on {servers.gateway_url}, upstream on {servers.upstream_url}.")
        print(f"Chat page on {page_url}/ (its key: rpm {PAGE_RPM_LIMIT}, tpm {PAGE_TPM_LIMIT}).")
        print("Try the bug report's probes (Ctrl-C to stop):")
        print()
        print(curl_commands(servers.gateway_url, key), flush=True)
        if threading.current_thread() is threading.main_thread():
            # `kill` stops it as cleanly as Ctrl-C: the servers shut down first.
            signal.signal(signal.SIGTERM, _interrupt)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nstopping", flush=True)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; see the module docstring for modes and exit status."""
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description="The LiteLLM x-ratelimit bug report's probes, against a gateway fixed "
        "with header-first-stream.",
        epilog="Exit status: 0 when the run shows what it should (with --without-fix: the "
        "bug, side by side with the fix), 1 otherwise, 2 on a usage error.",
    )
    parser.add_argument(
        "--serve", action="store_true", help="keep the servers running and print curl commands"
    )
    parser.add_argument(
        "--without-fix",
        action="store_true",
        help="show the original bug: the gateway with Starlette's StreamingResponse and "
        "plain dicts, side by side with the fixed one",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="the gateway's port with --serve (default: any free)"
    )
    parser.add_argument(
        "--page-port",
        type=int,
        default=0,
        help="the chat page's port with --serve (default: any free)",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="keep keys and quotas in this Redis (e.g. redis://127.0.0.1:6379/0), shared "
        "by the gateway's worker processes",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="with --redis: the number of uvicorn worker processes (default: 1)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and args.redis is None:
        parser.error(
            "--workers needs --redis URL: without a shared store each worker process "
            "would have its own keys and quotas"
        )
    if args.redis is not None and args.without_fix:
        parser.error("--redis runs the fixed gateway only; drop --without-fix")
    if args.serve:
        return _serve(
            fix=not args.without_fix,
            port=args.port,
            page_port=args.page_port,
            workers=args.workers,
            redis_url=args.redis,
        )
    if args.without_fix:
        return _run_side_by_side()
    return _run_fixed(args.workers, args.redis)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
