"""Hostile headers, resolver faults and a slow reader: what reaches the wire.

Hostile headers: every row of `tests.soak._hostile.ROWS` on every path that sends
headers, read as raw bytes: a refused row's marker never reaches the wire, no head is
split (every line a well-formed header, one status line on the connection), and the status
is the documented one.

Resolver faults: raises, hangs past the timeout, CancelledError, wrong return types and
10,000 headers, on `HeaderFirstStreamingResponse` (error, degrade and peek), the SSE class
and the middleware (error, degrade): no response starts with 200 and then breaks.

Slow reader: an endless stream read slowly beside normal clients: the generator produces
no more than the socket buffers can hold beyond what was read, and RSS stays flat.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

from ._app import FAULT_KINDS
from ._hostile import PATHS, ROWS, expectation, url
from ._wire import Server, connect, get, request

# --- hostile headers ---------------------------------------------------------------------


def hostile(server: Server, hygiene: bool) -> tuple[dict[str, object], list[str]]:
    """``hygiene``: assert the hygiene rows too (after merging the hygiene rules)."""
    failures: list[str] = []
    counts = {
        "requests": 0,
        "asserted": 0,
        "refused": 0,
        "refused on the wire": 0,
        "split heads": 0,
    }
    reported: dict[str, dict[str, int]] = {}
    for index, row in enumerate(ROWS):
        for path in PATHS:
            parsed, data, ending = get(server.port, url(path, index), timeout=5)
            counts["requests"] += 1
            reached = row.marker in data
            where = f"{path} row {index} ({row.why})"
            split = bool(parsed.problems) or parsed.status is None
            expected = expectation(row, path, hygiene)
            if expected is None:
                # Left to the hygiene rules on main's: reported, not asserted.
                key = f"{path}: {parsed.status}"
                key += " on the wire" if reached else ""
                key += " split/ambiguous head" if split else ""
                seen = reported.setdefault(row.name, {})
                seen[key] = seen.get(key, 0) + 1
                continue
            counts["asserted"] += 1
            status, on_wire = expected
            if split:
                counts["split heads"] += 1
                failures.append(f"{where}: {parsed.problems} {ending} {data[:200]!r}")
            if not on_wire:
                counts["refused"] += 1
                counts["refused on the wire"] += reached
            if reached != on_wire:
                failures.append(f"{where}: on the wire {reached}, documented {on_wire}")
            if parsed.status != status or not parsed.complete:
                failures.append(f"{where}: status {parsed.status}, documented {status}")
    report: dict[str, object] = {
        "rows": len(ROWS),
        "paths": len(PATHS),
        **counts,
        "left to the hygiene rules (reported, not asserted)": reported,
    }
    return report, failures


# --- resolver faults ---------------------------------------------------------------------

FAULT_VARIANTS = ("hfs-error", "hfs-degrade", "hfs-peek", "sse", "mw-error", "mw-degrade")
DEGRADE = ("hfs-degrade", "mw-degrade")


def _fault_url(variant: str, kind: str) -> str:
    if variant.startswith("mw-"):
        return f"/mw-fault-{variant.removeprefix('mw-')}/{kind}"
    return f"/fault/{variant}/{kind}"


def _expected_fault_status(variant: str, kind: str, hygiene: bool) -> set[int] | None:
    """The documented status, or ``None`` where it is not asserted (reported)."""
    if kind == "ok":
        return {200}
    if kind in ("cancelled", "many") and not hygiene:
        return None  # a stray CancelledError and a huge head: the hygiene rules'
    if variant in DEGRADE:
        return {200}
    return {504} if kind == "hangs" else {500}


def faults(server: Server, repeat: int, hygiene: bool) -> tuple[dict[str, object], list[str]]:
    failures: list[str] = []
    table: dict[str, dict[str, int]] = {}
    broken_200 = 0
    total = 0
    for variant in FAULT_VARIANTS:
        for kind in FAULT_KINDS:
            for _ in range(repeat):
                parsed, data, ending = get(server.port, _fault_url(variant, kind), timeout=5)
                total += 1
                outcome = f"{parsed.status}" if parsed.complete else f"{parsed.status} broken"
                if not data:
                    outcome = f"nothing ({ending})"
                cell = table.setdefault(f"{variant}/{kind}", {})
                cell[outcome] = cell.get(outcome, 0) + 1
                if parsed.status == 200 and (not parsed.complete or parsed.problems):
                    broken_200 += 1
                    failures.append(f"{variant}/{kind}: 200 then broken ({ending})")
                expected = _expected_fault_status(variant, kind, hygiene)
                if expected is not None and (parsed.status not in expected or not parsed.complete):
                    failures.append(f"{variant}/{kind}: {outcome}, expected {expected}")
                if parsed.status == 200:
                    body = b"data: hello\r\n\r\n" if variant == "sse" else b"bodybodybody"
                    if parsed.body != body:
                        failures.append(f"{variant}/{kind}: body {parsed.body[:80]!r}")
    edges = {key: value for key, value in table.items() if key.endswith(("/cancelled", "/many"))}
    report: dict[str, object] = {
        "requests": total,
        "200 then broken": broken_200,
        "stray CancelledError and 10,000 headers": edges,
    }
    return report, failures


# --- a slow reader beside normal clients ------------------------------------------------

SLOW_RCVBUF = 64 * 1024
SLOW_READ = 16 * 1024
SLOW_PAUSE = 0.05
SLOW_RSS_TOLERANCE = 2 * 1024 * 1024
"""RSS growth allowed while the slow reader reads: an unpaced stream of 16 KiB chunks
would buffer megabytes a second; allocator noise stays well under 2 MiB."""


def _wmem_max() -> int:
    with open("/proc/sys/net/ipv4/tcp_wmem") as wmem:
        return int(wmem.read().split()[2])


def _normal(port: int, results: list[bool]) -> None:
    parsed, _, _ = get(port, "/small", timeout=10)
    results.append(parsed.status == 200 and parsed.body == b"small")


def slow_reader(
    server: Server, seconds: float, normal_requests: int
) -> tuple[dict[str, object], list[str]]:
    failures: list[str] = []
    report: dict[str, object] = {}
    for kind in ("async", "sync"):
        server.control("reset")
        sock = connect(server.port, rcvbuf=SLOW_RCVBUF)
        rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        sock.sendall(request(f"/endless/{kind}"))
        received = 0
        rss: list[int] = []
        normal_ok: list[bool] = []

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(_normal, server.port, normal_ok) for _ in range(normal_requests)]
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                data = sock.recv(SLOW_READ)
                assert data, "the endless stream ended"
                received += len(data)
                if not rss and time.monotonic() - started > seconds / 3:
                    rss.append(server.rss())
                time.sleep(SLOW_PAUSE)
            rss.append(server.rss())
            for future in futures:
                future.result(timeout=60)
        produced = server.counters().get("endless_produced", 0)
        sock.close()
        deadline = time.monotonic() + 10
        while server.counters().get("endless_closed", 0) != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        closed = server.counters().get("endless_closed", 0)
        # What the kernel and the server may hold beyond what was read: the client's
        # receive buffer, the server's send buffer at its largest, the server's transport
        # buffer (64 KiB high-water mark) and a few chunks in flight.
        bound = rcvbuf + _wmem_max() + 64 * 1024 + 4 * 16 * 1024
        ahead = produced - received
        report[kind] = {
            "read": received,
            "produced": produced,
            "produced beyond read": ahead,
            "bound": bound,
            "rss growth": rss[1] - rss[0],
            "normal requests ok": f"{sum(normal_ok)}/{normal_requests}",
            "generator closed": closed,
        }
        if ahead > bound:
            failures.append(f"{kind}: produced {ahead} bytes beyond what was read (> {bound})")
        if rss[1] - rss[0] > SLOW_RSS_TOLERANCE:
            failures.append(f"{kind}: RSS grew by {rss[1] - rss[0]} bytes while streaming")
        if sum(normal_ok) != normal_requests:
            failures.append(f"{kind}: {normal_requests - sum(normal_ok)} normal requests failed")
        if closed != 1:
            failures.append(f"{kind}: endless generator closed {closed} times, not once")
    return report, failures
