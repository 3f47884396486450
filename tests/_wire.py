"""Tier-3 wire: what the real-server tests expect in a head, and a raw HTTP/1.1 client
that shows what a server put on the wire (head lines verbatim, body de-framed)."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from ._expect import WAIT

LATE_HEADERS = {"x-ratelimit-limit-requests": 100, "x-ratelimit-remaining-requests": 99}
LATE_LINES = [b"x-ratelimit-limit-requests: 100", b"x-ratelimit-remaining-requests: 99"]

# Header lines a server adds on its own (names compared lower-case).
SERVER_NAMES = frozenset({b"date", b"server", b"transfer-encoding", b"connection"})

ERROR_LINES = [b"content-type: text/plain; charset=utf-8", b"content-length: 21"]
"""The head lines of the plain-text 500 this package answers with."""


@dataclass
class RawResponse:
    """An HTTP/1.1 response as a server sent it: head lines verbatim, body de-framed."""

    status: int
    header_lines: list[bytes]
    body: bytes = b""
    chunks: list[bytes] | None = None
    """The payloads of the HTTP chunks, in order, when the body was chunked."""

    @property
    def app_lines(self) -> list[bytes]:
        """The header lines, in order, without those the server adds itself."""
        return [line for line in self.header_lines if _name(line) not in SERVER_NAMES]

    @property
    def server_lines(self) -> list[bytes]:
        """The header lines the server added, in order, without the (varying) date."""
        return [
            line
            for line in self.header_lines
            if _name(line) in SERVER_NAMES and _name(line) != b"date"
        ]

    def header(self, name: bytes) -> bytes | None:
        values = [line.partition(b": ")[2] for line in self.header_lines if _name(line) == name]
        assert len(values) <= 1, f"{name!r} sent {len(values)} times"
        return values[0] if values else None


def _name(line: bytes) -> bytes:
    return line.partition(b":")[0].lower()


_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3})(?: [\x20-\x7e]*)?")
_HEADER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [\x20-\x7e]*")


def _parse_head(head: bytes) -> RawResponse:
    status_line, *lines = head.split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    assert match is not None, f"bad status line {status_line!r}"
    for line in lines:
        # Every line is one well-formed header: nothing was split or injected.
        assert _HEADER_LINE.fullmatch(line), f"bad header line {line!r}"
    assert sum(_name(line) == b"date" for line in lines) == 1
    return RawResponse(int(match.group(1)), lines)


class Wire:
    """A raw HTTP/1.1 client connection that reads responses by their framing.

    Every byte received is kept in `received`, to check what was (not) on the wire.
    """

    def __init__(self, url: str) -> None:
        port = int(url.rsplit(":", 1)[1])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock.settimeout(WAIT)
        self.received = b""
        self._buffer = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def send(self, method: str, path: str, *, close: bool = False) -> None:
        connection = "Connection: close\r\n" if close else ""
        request = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{connection}\r\n"
        self.sock.sendall(request.encode())

    def receive_more(self) -> None:
        data = self.sock.recv(65536)
        assert data, f"connection closed early; received {self.received!r}"
        self.received += data
        self._buffer += data

    def _take_until(self, separator: bytes) -> bytes:
        while separator not in self._buffer:
            self.receive_more()
        taken, _, self._buffer = self._buffer.partition(separator)
        return taken

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self.receive_more()
        taken, self._buffer = self._buffer[:size], self._buffer[size:]
        return taken

    def read_head(self) -> RawResponse:
        return _parse_head(self._take_until(b"\r\n\r\n"))

    def read_body(self, response: RawResponse) -> RawResponse:
        """Read the body that ``response``'s head announces (none for HEAD)."""
        if response.header(b"transfer-encoding") is not None:
            assert response.header(b"transfer-encoding") == b"chunked"
            assert response.header(b"content-length") is None
            response.chunks = []
            while size := int(self._take_until(b"\r\n"), 16):
                response.chunks.append(self._take(size))
                assert self._take(2) == b"\r\n", "chunk not followed by CRLF"
            assert self._take(2) == b"\r\n", "trailers after the last chunk"
            response.body = b"".join(response.chunks)
        else:
            length = response.header(b"content-length")
            assert length is not None, "a response without framing"
            response.body = self._take(int(length))
        return response

    def read_response(self) -> RawResponse:
        return self.read_body(self.read_head())

    def read_until_eof(self, timeout: float) -> bytes:
        """The bytes left until the server closes the connection; TimeoutError after ``timeout``."""
        self.sock.settimeout(timeout)
        rest, self._buffer = self._buffer, b""
        while data := self.sock.recv(65536):
            self.received += data
            rest += data
        return rest


def _exchange(url: str, path: str) -> tuple[RawResponse, bytes]:
    """One GET on a fresh connection: the response, and every byte received."""
    with Wire(url) as wire:
        wire.send("GET", path)
        response = wire.read_response()
    return response, wire.received
