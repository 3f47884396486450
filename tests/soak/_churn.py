"""Shutdown churn: ``end_on_shutdown`` streams opening and ending while the server shuts down.

Client threads keep opening streams (the SSE class, `HeaderFirstStreamingResponse`, and the
same behind `HeaderFirstMiddleware`) that end by themselves after 0-100 ms, 0.1-0.8 s or
0.6-2 s (on a shared 100 ms grid, so that several end in the same loop pass), or never;
some clients leave early (most of those of endless streams, after 0.3-1.5 s). Streams end
in every order around the notice, some in the same loop pass as the stream that polls the
server's exit flag. After a while the runner gives the notice, in one round
`begin_shutdown()` (what a server's shutdown hook calls) and in another sse-starlette's
``AppStatus.should_exit`` (what its patched uvicorn exit handler sets, noticed by polling),
each on a fresh server process, since a notice lasts for the process; the clients go on
opening streams for a second more.

Asserted: every stream open at the notice ended within `WITHIN` seconds of it, and every
stream opened after it within `WITHIN` of its opening (100%); every body generator entered
was closed.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ._wire import Server, connect, parse, request

WITHIN = 1.0
"""Seconds from the notice to the end of every stream that watches for it."""

NOTICES = {"begin_shutdown": "begin-shutdown", "exit flag": "exit-flag"}
PATHS = ("/churn/sse", "/churn/hfs", "/mw-churn/hfs")
AFTER_NOTICE = 1.0
"""Seconds the clients go on opening streams after the notice."""
GIVE_UP = 3.0
"""Seconds after the notice at which a client stops waiting for its stream to end."""


@dataclass
class Stream:
    opened: float
    lifetime_ms: int  # -1: endless
    ended: float | None = None  # the server ended it (EOF, reset, or its final chunk)
    left: bool = False  # its client left first


class Notice:
    """When the notice was given (``None`` before), shared with the client threads."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.stop_opening_at: float | None = None


def _lifetime(rng: random.Random) -> int:
    kind = rng.random()
    if kind < 0.3:
        return rng.randint(0, 100)
    if kind < 0.6:
        return rng.randint(100, 800)
    if kind < 0.85:
        return rng.randint(600, 2000)  # past a poll interval: these poll, and hand over
    return -1


def client(port: int, seed: int, notice: Notice, streams: list[Stream]) -> None:
    """Open streams one after another until `Notice.stop_opening_at`."""
    rng = random.Random(seed)
    while notice.stop_opening_at is None or time.monotonic() < notice.stop_opening_at:
        lifetime = _lifetime(rng)
        # Most clients of an endless stream leave it in time: streams keep coming and going
        # up to the notice, some of them past a poll interval.
        if lifetime < 0:
            leave_after = rng.uniform(0.3, 1.5) if rng.random() < 0.7 else None
        else:
            leave_after = rng.uniform(0, 0.6) if rng.random() < 0.3 else None
        stream = Stream(time.monotonic(), lifetime)
        streams.append(stream)
        with connect(port) as sock:
            given = "forever" if lifetime < 0 else lifetime
            sock.sendall(request(f"{rng.choice(PATHS)}/{given}"))
            _follow(sock, stream, leave_after, notice)


def _follow(sock: socket.socket, stream: Stream, leave_after: float | None, notice: Notice) -> None:
    """Read until the server ends the stream, its client leaves, or `GIVE_UP`."""
    data = b""
    while True:
        now = time.monotonic()
        # A client leaves only before the notice: after it, every stream must be ended
        # by the server, and is measured.
        leave_at = None if leave_after is None else stream.opened + leave_after
        if leave_at is not None and notice.at is not None and leave_at >= notice.at:
            leave_at = None
        give_up = None if notice.at is None else notice.at + GIVE_UP
        limits = [t for t in (leave_at, give_up) if t is not None]
        if limits and now >= min(limits):
            stream.left = leave_at is not None and now >= leave_at
            return
        sock.settimeout(max(0.001, min([*limits, now + 0.05]) - now))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # reset
            stream.ended = time.monotonic()
            return
        if not chunk:
            stream.ended = time.monotonic()
            return
        data += chunk
        if parse(data).complete:
            stream.ended = time.monotonic()
            return


def run_round(
    server: Server, notice_name: str, seed: int, clients: int, churn: float
) -> tuple[dict[str, object], list[str]]:
    notice = Notice()
    per_client: list[list[Stream]] = [[] for _ in range(clients)]
    server.control("reset")
    threads = [
        threading.Thread(target=client, args=(server.port, seed + n, notice, per_client[n]))
        for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    time.sleep(churn)
    notice.at = time.monotonic()  # before the request: the bound is counted from here
    notice.stop_opening_at = notice.at + AFTER_NOTICE
    server.control(NOTICES[notice_name])
    for thread in threads:
        thread.join(AFTER_NOTICE + GIVE_UP + 30)
    counters = server.quiesce()
    at = notice.at
    streams = [stream for streams in per_client for stream in streams]
    open_at_notice = [
        s for s in streams if s.opened < at and not s.left and (s.ended is None or s.ended >= at)
    ]
    opened_after = [s for s in streams if s.opened >= at]
    late = [s for s in open_at_notice if s.ended is None or s.ended - at > WITHIN]
    late_after = [s for s in opened_after if s.ended is None or s.ended - s.opened > WITHIN]
    endless = [s for s in open_at_notice if s.lifetime_ms < 0]
    slowest = max((s.ended - at for s in open_at_notice if s.ended is not None), default=0.0)
    entered, closed = counters.get("churn_entered", 0), counters.get("churn_closed", 0)
    failures = []
    if late or late_after:
        failures.append(
            f"{len(late)} streams open at the notice and {len(late_after)} opened after it "
            f"not ended within {WITHIN}s"
        )
    if entered != closed:
        failures.append(f"{entered} generators entered, {closed} closed")
    if not endless:
        failures.append("no endless stream was open at the notice")
    figures: dict[str, object] = {
        "streams": len(streams),
        "clients left early": sum(s.left for s in streams),
        "open at the notice": len(open_at_notice),
        "of which endless": len(endless),
        "ended within 1 s of the notice": len(open_at_notice) - len(late),
        "share ended within 1 s": _share(len(open_at_notice) - len(late), len(open_at_notice)),
        "slowest end after the notice (s)": round(slowest, 3),
        "opened after the notice": len(opened_after),
        "of which ended within 1 s of opening": len(opened_after) - len(late_after),
        "generators entered, closed": [entered, closed],
    }
    return figures, failures


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def run(
    name: str, logs: Path, seed: int, clients: int, churn: float
) -> tuple[dict[str, object], list[str]]:
    """One round per notice, each on a fresh server process (a notice lasts for it)."""
    report: dict[str, object] = {}
    failures: list[str] = []
    started = time.monotonic()
    for notice_name in NOTICES:
        server = Server(name, logs / f"{name}-shutdown-{notice_name.replace(' ', '-')}.log")
        try:
            report[notice_name], failed = run_round(server, notice_name, seed, clients, churn)
        finally:
            server.stop()
        failures += [f"{notice_name}: {failure}" for failure in failed]
    report["seconds"] = round(time.monotonic() - started, 1)
    return report, failures
