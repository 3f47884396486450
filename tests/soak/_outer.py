"""Outer cancellation: responses whose ASGI call is cancelled from outside, on a real server.

A share of the requests is cancelled by `tests.soak._beside.OuterCancel` mid-stream (after a
random number of body messages) or while the resolver runs, as a timeout middleware or a
server's nursery cancels; some clients leave after the head; the rest run to their end. Three
families: the SSE class (with a ``listen_for_disconnect`` override, a data sender, a close
handler and pings), `HeaderFirstStreamingResponse` (override, resolver, ``end_on_shutdown``),
and the same behind `HeaderFirstMiddleware`.

Asserted exactly: no side callable (nor any ``send``) was still alive when its request's call
returned; every side callable started also ended; the data sender was called once per SSE
response; every body generator was closed inside its request; no request raised; every
response not cut was complete.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

from ._beside import OUTER_CHUNKS
from ._wire import WAIT, Server, connect, parse, read_response, request

FAMILIES = {"sse": "/outer/sse", "hfs": "/outer/hfs", "hfs-mw": "/mw-outer/hfs-mw"}
WEIGHTS = {"none": 3, "mid-stream": 4, "resolving": 2, "client-leaves": 1}
"""Where requests are cut (see `tests.soak._beside`), and how often, relatively."""
SIDES = ("listener", "sender", "close handler")


def one(port: int, path: str, point: str) -> bool:
    """One request; ``False`` if a response that nothing cut was broken."""
    with connect(port) as sock:
        sock.sendall(request(path))
        if point == "client-leaves":
            data = b""
            deadline = time.monotonic() + WAIT
            while b"\r\n\r\n" not in data and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return True  # closed right after the head
        data, _ = read_response(sock)
    if point != "none":
        return True  # cut on purpose: incomplete, or (resolving) nothing at all
    parsed = parse(data)
    return parsed.status == 200 and parsed.complete and parsed.problems == []


def run(
    server: Server, requests: int, seed: int, concurrency: int
) -> tuple[dict[str, object], list[str]]:
    rng = random.Random(seed)
    points = list(WEIGHTS)
    plan = []
    for _ in range(requests):
        family = rng.choice(list(FAMILIES))
        point = rng.choices(points, weights=[WEIGHTS[p] for p in points])[0]
        after = rng.randint(1, OUTER_CHUNKS)  # the head is message 0
        plan.append((family, point, f"{FAMILIES[family]}/{point}/{after}"))
    started = time.monotonic()
    server.control("reset")
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(lambda item: one(server.port, item[2], item[1]), plan))
    counters = server.quiesce()
    failures: list[str] = []
    alive = counters.get("alive_after_return", 0)
    if alive:
        failures.append(f"{alive} side callables or sends still alive after their call returned")
    sides = {
        name: (counters.get(f"side_started:{name}", 0), counters.get(f"side_ended:{name}", 0))
        for name in SIDES
    }
    for name, (begun, ended) in sides.items():
        if begun != ended:
            failures.append(f"{name}: started {begun}, ended {ended}")
    sse = sum(family == "sse" for family, _, _ in plan)
    if sides["sender"][0] != sse:  # always called, as sse-starlette's task group calls it
        failures.append(f"{sse} SSE responses, data sender called {sides['sender'][0]} times")
    generators = {}
    for family in FAMILIES:
        entered = counters.get(f"outer:{family}:gen_entered", 0)
        closed = counters.get(f"outer:{family}:gen_closed_in_request", 0)
        generators[family] = f"{closed} / {entered}"
        if closed != entered:
            failures.append(f"{family}: {entered} generators entered, {closed} closed in request")
    raised = {name: value for name, value in counters.items() if name.startswith("app_raised")}
    if raised:
        failures.append(f"requests raised: {raised}")
    broken = outcomes.count(False)
    if broken:
        failures.append(f"{broken} responses that nothing cut were broken")
    if counters.get("outer_returned", 0) != requests:
        failures.append(f"{requests} requests, {counters.get('outer_returned')} calls returned")
    report: dict[str, object] = {
        "requests": requests,
        "by point": {point: sum(p == point for _, p, _ in plan) for point in points},
        "cancelled from outside": {
            point: counters.get(f"outer_cancelled:{point}", 0)
            for point in ("mid-stream", "resolving")
        },
        "alive after their call returned": alive,
        "side callables started, ended": {name: list(pair) for name, pair in sides.items()},
        "generators closed in request": generators,
        "broken": broken,
        "seconds": round(time.monotonic() - started, 1),
    }
    return report, failures
