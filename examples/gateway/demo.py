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
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp

from ..serving import free_port, serve_uvicorn
from .app import Gateway
from .probes import (
    KEEPS_HEADERS_WITHOUT_FIX,
    RPM_LIMIT,
    TPM_LIMIT,
    check_bug_shown,
    check_results,
    create_key,
    run_probes,
)
from .tables import curl_commands, format_side_by_side, format_table
from .upstream import create_upstream_app
from .web import create_page_app
from .workers import running_workers

PAGE_RPM_LIMIT = 10
"""The chat page's key: small, so that a few messages show the ``429``."""
PAGE_TPM_LIMIT = 1000
PAGE_CHUNK_DELAY = 0.08
"""Seconds between streamed pieces with ``--serve``: slow enough to watch them arrive."""


@dataclass(frozen=True)
class Running:
    """The servers of one demo run."""

    upstream_url: str
    gateway_url: str
    gateway: Gateway | None
    """The gateway object when it runs in this process; ``None`` with worker processes."""


def serve(app: ASGIApp, *, port: int = 0) -> contextlib.AbstractContextManager[str]:
    """Serve ``app`` with uvicorn (lifespan on) on 127.0.0.1 in a thread; yield its URL.

    Raises:
        RuntimeError: The server did not start within `examples.serving.STARTUP_TIMEOUT`
            seconds.
    """
    return serve_uvicorn(app, port=port, lifespan="on", timeout_graceful_shutdown=2)


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


def _has_redis() -> bool:
    """Whether the `redis` package is installed (scripts/demo adds it for ``--redis``)."""
    try:
        import redis  # noqa: F401
    except ImportError:
        return False
    return True


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
    if args.redis is not None and not _has_redis():
        parser.error(
            "--redis needs the `redis` package, which the demo's own environment gets on "
            "first use: run scripts/demo (or pip install -e '.[demo,demo-redis]')"
        )
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
