"""End to end: uvicorn (httptools) on loopback in a subprocess, a bounded load generator here.

The server (``python -m benchmarks.e2e --serve``) hosts one route per variant; the
client, in this process, speaks HTTP/1.1 over raw sockets so that it costs far less than
the server it measures. Two measurements, each interleaved across the variants:

- load: ``streams`` concurrent requests of ``chunks`` chunks each, all sent at once;
  throughput in chunks per second over the whole batch (wall clock, and per second of
  the server process's CPU time, which other processes on a shared machine disturb
  less), and time to first byte (request written to first response byte) of every
  stream under that load;
- idle time to first byte: one request at a time, variants in turn, a fresh connection
  each (connecting is not timed).

uvicorn gives ``spec_version`` 2.3, so every variant runs with a disconnect listener.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import anyio
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from examples.serving import bound_socket, uvicorn_on

from ._apps import CHUNK, HEADERS, find_public, ours, upstream_chunks

RESOLVER_SECONDS = 0.005
STARTUP_TIMEOUT = 20.0
CLIENT_TIMEOUT = 120.0


@dataclass(frozen=True)
class E2EVariant:
    key: str
    label: str
    base: str  # the Starlette variant it is compared with


VARIANTS = [
    E2EVariant("starlette", "Starlette `StreamingResponse`", "starlette"),
    E2EVariant("ours-0ms", "`HeaderFirstStreamingResponse`, 0 ms resolver", "starlette"),
    E2EVariant(
        "starlette-5ms", "Starlette `StreamingResponse`, endpoint waits 5 ms first", "starlette-5ms"
    ),
    E2EVariant("ours-5ms", "`HeaderFirstStreamingResponse`, 5 ms resolver", "starlette-5ms"),
    E2EVariant(
        "middleware", "`HeaderFirstMiddleware` around Starlette `StreamingResponse`", "starlette"
    ),
]


@dataclass(frozen=True)
class Counts:
    streams: int
    chunks: int
    rounds: int
    idle_requests: int  # per variant


FULL = Counts(streams=64, chunks=1_000, rounds=7, idle_requests=200)
QUICK = Counts(streams=4, chunks=20, rounds=1, idle_requests=5)


@dataclass
class Results:
    counts: Counts
    available: list[str]
    missing: dict[str, str]
    throughput: dict[str, list[float]] = field(default_factory=dict)  # chunks/s per round
    # chunks per second of the server's own CPU time, per round: what the server can
    # do, less disturbed than wall-clock throughput by other processes on the machine
    capacity: dict[str, list[float]] = field(default_factory=dict)
    load_ttfb: dict[str, list[float]] = field(default_factory=dict)  # seconds, every stream
    idle_ttfb: dict[str, list[float]] = field(default_factory=dict)  # seconds, every request

    def throughput_ratios(self, key: str, base: str) -> list[float]:
        mine, theirs = self.throughput.get(key, []), self.throughput.get(base, [])
        return [a / b for a, b in zip(mine, theirs, strict=False) if b > 0]

    def capacity_ratios(self, key: str, base: str) -> list[float]:
        mine, theirs = self.capacity.get(key, []), self.capacity.get(base, [])
        return [a / b for a, b in zip(mine, theirs, strict=False) if b > 0]


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- the server -------------------------------------------------------------------------


def _server_app() -> ASGIApp:
    middleware_cls = find_public("HeaderFirstMiddleware", "_middleware")

    async def sleeper() -> dict[str, str]:
        await anyio.sleep(RESOLVER_SECONDS)
        return {"x-cost": "1"}

    async def instant() -> dict[str, str]:
        return {"x-cost": "1"}

    async def starlette_app(scope: Scope, receive: Receive, send: Send) -> None:
        count = int(parse_qs(scope["query_string"].decode()).get("n", ["1"])[0])
        response = StreamingResponse(
            upstream_chunks(count, CHUNK), headers=HEADERS, media_type="text/plain"
        )
        await response(scope, receive, send)

    middleware_app: ASGIApp | None = None
    if middleware_cls is not None:
        middleware_app = middleware_cls(starlette_app)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        count = int(parse_qs(scope["query_string"].decode()).get("n", ["1"])[0])
        if path == "/starlette":
            await starlette_app(scope, receive, send)
        elif path == "/starlette-5ms":
            await anyio.sleep(RESOLVER_SECONDS)
            await starlette_app(scope, receive, send)
        elif path in ("/ours-0ms", "/ours-5ms"):
            resolver = instant if path == "/ours-0ms" else sleeper
            await ours(count, upstream_chunks, resolver)(scope, receive, send)
        elif path == "/middleware" and middleware_app is not None:
            await middleware_app(scope, receive, send)
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    return app


def serve() -> None:
    """Run the server on an ephemeral port; print the port, then serve until SIGTERM or SIGINT."""
    # Blocked here, so in uvicorn's thread too: `sigwait` below takes them, and the server
    # shuts down as it would on its own handlers.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    sock = bound_socket(backlog=1024)
    config = {"http": "httptools", "loop": "asyncio", "lifespan": "off", "access_log": False}
    with contextlib.closing(sock), uvicorn_on(_server_app(), sock, backlog=1024, **config):
        print(sock.getsockname()[1], flush=True)
        signal.sigwait(stop_signals)


class _Server:
    def __init__(self) -> None:
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.e2e", "--serve"],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], STARTUP_TIMEOUT)
        line = self.process.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError(f"the benchmark server did not start (printed {line!r})")
        self.port = int(line)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.close()
                    raise RuntimeError("the benchmark server did not accept in time") from None
                time.sleep(0.02)

    def cpu_seconds(self) -> float:
        """The server's CPU time so far, all threads (Linux).

        From schedstat, in nanoseconds; /proc/PID/stat counts 10 ms ticks, too coarse
        for runs of a few hundred milliseconds.
        """
        total = 0
        try:
            for task in Path(f"/proc/{self.process.pid}/task").iterdir():
                total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            with open(f"/proc/{self.process.pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total / 1e9

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


# --- the client -------------------------------------------------------------------------

_TERMINATOR = b"0\r\n\r\n"


async def _request(port: int, path: str, count: int, start: anyio.Event | None) -> float:
    """One request with ``Connection: close``; returns its time to first byte in seconds.

    Reads to EOF and checks the status and the chunked terminator.
    """
    request = (
        f"GET {path}?n={count} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    ).encode()
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        if start is not None:
            await start.wait()
        began = time.perf_counter()
        await stream.send(request)
        first = await stream.receive(65536)
        ttfb = time.perf_counter() - began
        tail = first
        received = len(first)
        try:
            while True:
                data = await stream.receive(262144)
                received += len(data)
                tail = (tail + data)[-16:]
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    if not first.startswith(b"HTTP/1.1 200 ") or not tail.endswith(_TERMINATOR):
        raise RuntimeError(f"bad response from {path}: {first[:80]!r} ... {tail!r}")
    if received < count * len(CHUNK):
        raise RuntimeError(f"short response from {path}: {received} bytes")
    return ttfb


async def _load(port: int, key: str, counts: Counts) -> tuple[float, list[float]]:
    """``counts.streams`` concurrent requests; (chunks per second, TTFBs)."""
    ttfbs: list[float] = []
    start = anyio.Event()

    async def one() -> None:
        ttfbs.append(await _request(port, f"/{key}", counts.chunks, start))

    with anyio.fail_after(CLIENT_TIMEOUT):
        async with anyio.create_task_group() as group:
            for _ in range(counts.streams):
                group.start_soon(one)
            await anyio.sleep(0.05)  # let every connection be accepted first
            began = time.perf_counter()
            start.set()
        elapsed = time.perf_counter() - began
    return counts.streams * counts.chunks / elapsed, ttfbs


async def _measure(server: _Server, keys: Sequence[str], counts: Counts, results: Results) -> None:
    port = server.port
    # Warm up every route (imports, first-call caches) untimed.
    for key in keys:
        await _request(port, f"/{key}", 10, None)
    for round_ in range(counts.rounds):
        shift = round_ % len(keys)
        for key in [*keys[shift:], *keys[:shift]]:
            cpu = server.cpu_seconds()
            rate, ttfbs = await _load(port, key, counts)
            cpu = server.cpu_seconds() - cpu
            results.throughput.setdefault(key, []).append(rate)
            if cpu > 0:
                results.capacity.setdefault(key, []).append(counts.streams * counts.chunks / cpu)
            results.load_ttfb.setdefault(key, []).extend(ttfbs)
    with anyio.fail_after(CLIENT_TIMEOUT):
        for _ in range(counts.idle_requests):
            for key in keys:
                results.idle_ttfb.setdefault(key, []).append(
                    await _request(port, f"/{key}", 1, None)
                )


def run(counts: Counts) -> Results:
    """Start the server, measure every available variant, stop the server."""
    middleware_ok = find_public("HeaderFirstMiddleware", "_middleware") is not None
    missing = {} if middleware_ok else {"middleware": "HeaderFirstMiddleware is not importable"}
    keys = [v.key for v in VARIANTS if v.key not in missing]
    results = Results(counts, keys, missing)
    server = _Server()
    try:
        anyio.run(_measure, server, keys, counts, results)
    finally:
        server.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="benchmark server (used by the harness)")
    parser.add_argument("--serve", action="store_true", required=True)
    parser.parse_args(argv)
    serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
