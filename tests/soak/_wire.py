"""Raw-socket HTTP/1.1 for the soak runner: what the server really sent, byte for byte."""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WAIT = 10.0
"""Upper bound, in seconds, for any single socket operation or wait of the runner."""

_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3})(?: [\x20-\x7e]*)?")
_HEADER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+: ?[\x20-\x7e\x80-\xff]*")


def connect(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(WAIT)
    sock.connect(("127.0.0.1", port))
    return sock


def request(path: str, *, close: bool = True) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{connection}\r\n".encode()


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER with a zero timeout)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass
class Parsed:
    """A response as read from the wire."""

    status: int | None = None
    lines: list[bytes] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False
    """The body's framing was satisfied (the last chunk, or content-length bytes)."""
    problems: list[str] = field(default_factory=list)

    def values(self, name: bytes) -> list[bytes]:
        return [
            line.partition(b":")[2].strip()
            for line in self.lines
            if line.partition(b":")[0].lower() == name
        ]


def parse(data: bytes) -> Parsed:
    """Parse one response; `problems` names a split head or a second response."""
    parsed = Parsed()
    if not data:
        return parsed
    head, separator, rest = data.partition(b"\r\n\r\n")
    if not separator:
        parsed.problems.append("head not terminated")
        return parsed
    status_line, *parsed.lines = head.split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        parsed.problems.append(f"bad status line {status_line[:80]!r}")
        return parsed
    parsed.status = int(match.group(1))
    for line in parsed.lines:
        if not _HEADER_LINE.fullmatch(line):
            parsed.problems.append(f"bad header line {line[:80]!r}")
    if data.count(b"HTTP/1.1 ") != 1:
        parsed.problems.append("more than one status line on the connection")
    encoding = [value.lower() for value in parsed.values(b"transfer-encoding")]
    lengths = parsed.values(b"content-length")
    if encoding == [b"chunked"] and not lengths:
        parsed.body, parsed.complete = _dechunk(rest)
    elif not encoding and len(lengths) == 1 and lengths[0].isdigit():
        parsed.body = rest[: int(lengths[0])]
        parsed.complete = len(rest) == int(lengths[0])
    else:
        parsed.problems.append(f"ambiguous framing {encoding!r} {lengths!r}")
    return parsed


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    body = b""
    while True:
        size_line, separator, data = data.partition(b"\r\n")
        if not separator:
            return body, False
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            return body, False
        if size == 0:
            return body, data == b"\r\n"
        if len(data) < size + 2:
            return body + data[:size], False
        body += data[:size]
        data = data[size + 2 :]


LINGER = 0.05
"""How long to keep reading after a response's framing completed, for smuggled bytes."""


def read_response(sock: socket.socket, timeout: float = WAIT) -> tuple[bytes, str]:
    """Every byte until EOF, or until the response's framing completed (then `LINGER`
    more, to catch bytes behind it); and how it ended: ``eof``, ``complete``, ``reset``
    or ``timeout``.

    Not only EOF: Starlette's own streaming class leaves a ``Connection: close``
    connection open on hypercorn's trio worker (pinned in tests/test_real_servers_connection.py).
    """
    deadline = time.monotonic() + timeout
    data = b""
    complete_at: float | None = None
    try:
        while True:
            now = time.monotonic()
            if complete_at is None and parse(data).complete:
                complete_at = now
            if complete_at is not None and now - complete_at >= LINGER:
                return data, "complete"
            if now >= deadline:
                return data, "timeout"
            limit = deadline if complete_at is None else complete_at + LINGER
            sock.settimeout(max(0.001, limit - now))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return data, "eof"
            data += chunk
    except ConnectionResetError:
        return data, "reset"


def get(port: int, path: str, timeout: float = WAIT) -> tuple[Parsed, bytes, str]:
    """One GET on a fresh ``Connection: close`` connection; see `read_response`."""
    with connect(port) as sock:
        sock.sendall(request(path))
        data, ending = read_response(sock, timeout)
    return parse(data), data, ending


class Server:
    """The soak server in a child process (`tests.soak._server`)."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.soak._server", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()  # bounded: the child's own
        if not line.startswith("http://127.0.0.1:"):  # start-up timeout raises and exits
            self.stop()
            raise RuntimeError(f"{name} did not start; see {log}")
        self.url = line
        self.port = int(line.rsplit(":", 1)[1])

    def control(self, action: str) -> dict[str, Any]:
        parsed, _, _ = get(self.port, f"/_soak/{action}")
        assert parsed.status == 200 and parsed.complete, f"/_soak/{action}: {parsed}"
        result: dict[str, Any] = json.loads(parsed.body)
        return result

    def counters(self) -> dict[str, int]:
        counters: dict[str, int] = self.control("counters")["counters"]
        return counters

    def quiesce(self, timeout: float = 30.0) -> dict[str, int]:
        """Wait until no request is in flight (bounded); return the counters."""
        deadline = time.monotonic() + timeout
        while True:
            counters = self.counters()
            if counters["in_flight"] == 0:
                return counters
            if time.monotonic() > deadline:
                raise AssertionError(f"{counters['in_flight']} requests still in flight")
            time.sleep(0.05)

    def rss(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(WAIT + 10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(WAIT)
        self._log.close()
