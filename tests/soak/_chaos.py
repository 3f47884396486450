"""Disconnect chaos: clients leave at random points, with FIN or RST, over many requests.

Four families of streamed responses, each with its own counters in the server:

- ``hfs``: `HeaderFirstStreamingResponse` with a header resolver;
- ``hfs-mw``: the same behind `HeaderFirstMiddleware` with a resolver of its own;
- ``st``: Starlette's `StreamingResponse` alone (the baseline);
- ``st-mw``: Starlette's `StreamingResponse` behind the middleware with a resolver.

Asserted exactly for ``hfs`` and ``hfs-mw``: every body generator entered was closed inside
its request; every resolver started finished or was cancelled. For every family: no head
was sent after its request's resolver was cancelled, no response that a client read to
its end was broken, and the server's RSS after two identical rounds differs by less than
`RSS_TOLERANCE`. Starlette's class leaves an abandoned generator to the garbage
collector: ``st-mw`` may leave no more generators open past their request than ``st``.
"""

from __future__ import annotations

import math
import random
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ._wire import WAIT, Server, connect, parse, request, reset

FAMILIES = {
    "hfs": "/chaos/hfs/hfs",
    "hfs-mw": "/mw-chaos/hfs/hfs-mw",
    "st": "/chaos/starlette/st",
    "st-mw": "/mw-chaos/starlette/st-mw",
}
ASSERTED = ("hfs", "hfs-mw")
POINTS = ("before_head", "after_head", "mid_body", "after_end")
CHUNKS = 20
"""Chunks of 1 KiB per response, 2 ms apart."""

RSS_TOLERANCE = 2 * 1024 * 1024
"""Allowed RSS growth from one round to an identical one.

Two MiB: allocator and thread-pool noise on an idle CPython server stays well below it,
while a leak of one body generator with its frame, response and task per request (a few
KiB each) over a round of a thousand requests and more exceeds it.
"""

ST_MW_MARGIN = 0.01
"""How many more of its generators ``st-mw`` may leave to the garbage collector than
``st``, as a fraction of those it entered.

Both families share one race: a cancellation that lands inside the server's own ``send``
(hypercorn's awaits more than uvicorn's) leaves Starlette's generator suspended, with or
without the middleware; a few such cases in a round are noise. Before the middleware handed
the disconnect over only after its resolver's ``send`` returned, ``st-mw`` left 4-10%
(docs/reliability.md).
"""


@dataclass
class Round:
    requests: int = 0
    client_broken: int = 0  # read to the end, yet incomplete or not 200
    by_point: dict[str, int] = field(default_factory=dict)


def one(port: int, path: str, point: str, rst: bool, delay: float) -> bool:
    """One request left at ``point``; ``False`` if a response read to its end was broken."""
    sock = connect(port)
    ok = True
    try:
        sock.sendall(request(path))
        if point == "before_head":
            time.sleep(delay)  # the resolver sleeps 5-30 ms: the head is still held
        elif point == "after_head":
            _read_until(sock, lambda data: b"\r\n\r\n" in data)
        elif point == "mid_body":
            _read_until(sock, lambda data: len(data.partition(b"\r\n\r\n")[2]) > 3000)
        else:
            # Read by the framing, not to EOF: Starlette's own class leaves a
            # `Connection: close` connection open on hypercorn's trio worker (a known
            # divergence, pinned in tests/test_real_servers_connection.py).
            data = _read_until(sock, lambda data: data.endswith(b"\r\n0\r\n\r\n"))
            parsed = parse(data)
            ok = (
                parsed.status == 200
                and parsed.complete
                and parsed.body == b"x" * 1024 * CHUNKS
                and parsed.problems == []
            )
    finally:
        if rst:
            reset(sock)
        else:
            sock.close()
    return ok


def _read_until(sock: socket.socket, done: Callable[[bytes], bool]) -> bytes:
    data = b""
    deadline = time.monotonic() + WAIT
    try:
        while not done(data) and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:  # reset by the server, or timed out: the caller judges the bytes
        pass
    return data


def run_round(server: Server, requests: int, seed: int, concurrency: int) -> Round:
    rng = random.Random(seed)
    plan = [
        (
            f"{FAMILIES[rng.choice(list(FAMILIES))]}/{CHUNKS}",
            rng.choice(POINTS),
            rng.random() < 0.5,
            rng.uniform(0, 0.004),
        )
        for _ in range(requests)
    ]
    result = Round(requests=requests)
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(lambda item: one(server.port, *item), plan, timeout=600))
    for (_, point, rst, _), ok in zip(plan, outcomes, strict=True):
        key = f"{point}/{'rst' if rst else 'fin'}"
        result.by_point[key] = result.by_point.get(key, 0) + 1
        result.client_broken += not ok
    return result


def family_figures(counters: dict[str, int], after_gc: dict[str, int]) -> dict[str, dict[str, int]]:
    figures = {}
    for family in FAMILIES:
        entered = counters.get(f"{family}:gen_entered", 0)
        in_request = counters.get(f"{family}:gen_closed_in_request", 0)
        late = counters.get(f"{family}:gen_closed_late", 0)
        late_gc = after_gc.get(f"{family}:gen_closed_late", 0)
        figures[family] = {
            "entered": entered,
            "closed_in_request": in_request,
            "closed_later_by_gc": late,
            "open_until_gc_collect": late_gc - late,
            "never_closed": entered - in_request - late_gc,
        }
    return figures


def run(
    server: Server, requests: int, seed: int, concurrency: int
) -> tuple[dict[str, object], list[str]]:
    """Warm-up, then two identical rounds; return the figures and the failed assertions."""
    failures: list[str] = []
    report: dict[str, object] = {}
    started = time.monotonic()
    rss: list[int] = []
    for name, round_seed in (("warm-up", seed + 1), ("round 1", seed), ("round 2", seed)):
        server.control("reset")
        result = run_round(server, requests, round_seed, concurrency)
        counters = server.quiesce()
        after_gc = server.control("gc")["counters"]
        rss.append(server.rss())
        figures = family_figures(counters, after_gc)
        report[name] = {"client": result.__dict__, "families": figures, "counters": after_gc}
        for family in ASSERTED:
            f = figures[family]
            if f["closed_in_request"] != f["entered"]:
                failures.append(f"{name}: {family} generators not closed in request: {f}")
        # Starlette's own class behind the middleware: no worse than Starlette alone, give
        # or take `ST_MW_MARGIN` (see there).
        left = {
            family: figures[family]["entered"] - figures[family]["closed_in_request"]
            for family in ("st", "st-mw")
        }
        margin = math.ceil(figures["st-mw"]["entered"] * ST_MW_MARGIN)
        if left["st-mw"] > left["st"] + margin:
            failures.append(
                f"{name}: st-mw left more generators to the GC than st (+{margin}): {left}"
            )
        for prefix in ("resolver", "mw_resolver"):
            begun = after_gc.get(f"{prefix}_started", 0)
            ended = after_gc.get(f"{prefix}_finished", 0) + after_gc.get(f"{prefix}_cancelled", 0)
            if begun != ended:
                failures.append(f"{name}: {prefix} started {begun}, ended {ended}")
        if after_gc.get("heads_after_cancelled_resolver", 0):
            failures.append(f"{name}: heads after a cancelled resolver: {after_gc}")
        if result.client_broken:
            failures.append(f"{name}: {result.client_broken} complete reads were broken")
    growth = rss[2] - rss[1]
    report["rss"] = {"warm-up": rss[0], "round 1": rss[1], "round 2": rss[2], "growth": growth}
    if growth > RSS_TOLERANCE:
        failures.append(f"RSS grew by {growth} bytes between identical rounds")
    report["seconds"] = round(time.monotonic() - started, 1)
    return report, failures
