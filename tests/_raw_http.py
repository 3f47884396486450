"""Tier-3 raw clients: one request on a fresh connection, the response as the server sent it.

`http1_get` reads HTTP/1.1 bytes from a socket until the server closes it and checks the
framing strictly (exactly one framing header, no byte after the body); `http1_head_only`
reads only the head (of a stream whose body may never come); `h2c_get` speaks
HTTP/2 with prior knowledge through the `h2` state machine, with inbound validation off,
so that every field the server sent is seen. Every read is bounded.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field

WAIT = 5.0
"""Upper bound, in seconds, for a whole exchange."""

_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3})(?: [\x20-\x7e]*)?")
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+): ?([\x20-\x7e\x80-\xff\t]*)")


@dataclass
class Exchange:
    """A response as received: status, header fields in order (names lower-cased), body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw: bytes = b""
    events: list[str] = field(default_factory=list)

    def values(self, name: bytes) -> list[bytes]:
        return [value for n, value in self.headers if n == name]

    def without(self, *names: bytes) -> list[tuple[bytes, bytes]]:
        """The header fields, without those named (the server's own, varying ones)."""
        return [(n, v) for n, v in self.headers if n not in names]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def http1_get(url: str, path: str) -> Exchange:
    """GET ``path`` with ``Connection: close``; read until EOF; de-frame the body strictly."""
    deadline = time.monotonic() + WAIT
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=WAIT) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        raw = b""
        while data := sock.recv(65536):
            raw += data
            assert time.monotonic() < deadline, f"no EOF within {WAIT}s: {raw!r}"
    assert b"\r\n\r\n" in raw, f"no complete head: {raw!r}"
    head, _, rest = raw.partition(b"\r\n\r\n")
    status, headers = _parse_head(head)
    framing = [(n, v) for n, v in headers if n in (b"content-length", b"transfer-encoding")]
    assert len(framing) == 1, f"expected exactly one framing header, got {framing}"
    (name, value) = framing[0]
    if name == b"content-length":
        assert value.isdigit(), f"malformed content-length {value!r}"
        assert len(rest) == int(value), f"content-length {value!r} for {len(rest)} bytes"
        body = rest
    else:
        assert value.lower() == b"chunked", f"transfer-encoding {value!r}"
        body = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            chunk, crlf, rest = rest[:size], rest[size : size + 2], rest[size + 2 :]
            assert crlf == b"\r\n", "chunk not followed by CRLF"
            if size == 0:
                break
            body += chunk
        assert rest == b"", f"bytes after the last chunk: {rest!r}"
    return Exchange(status, headers, body, raw)


def _parse_head(head: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    """The status and header fields (names lower-cased) of an HTTP/1.1 head, checked."""
    status_line, *lines = head.split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    assert match is not None, f"bad status line {status_line!r}"
    headers: list[tuple[bytes, bytes]] = []
    for line in lines:
        parsed = _HEADER_LINE.fullmatch(line)
        assert parsed is not None, f"bad header line {line!r}"
        headers.append((parsed.group(1).lower(), parsed.group(2)))
    return int(match.group(1)), headers


def h2c_get(url: str, path: str) -> Exchange:
    """GET ``path`` over cleartext HTTP/2 with prior knowledge; the response as sent."""
    import h2.config
    import h2.connection
    import h2.events

    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )
    connection = h2.connection.H2Connection(config)
    deadline = time.monotonic() + WAIT
    status = 0
    headers: list[tuple[bytes, bytes]] = []
    body = b""
    events: list[str] = []
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=WAIT) as sock:
        connection.initiate_connection()
        stream = connection.get_next_available_stream_id()
        request = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1"),
            (b":path", path.encode()),
        ]
        connection.send_headers(stream, request, end_stream=True)
        sock.sendall(connection.data_to_send())
        ended = False
        while not ended:
            assert time.monotonic() < deadline, f"no end of stream within {WAIT}s: {events}"
            data = sock.recv(65536)
            if not data:
                events.append("EOF")
                break
            for event in connection.receive_data(data):
                events.append(type(event).__name__)
                if isinstance(event, h2.events.ResponseReceived):
                    for name, value in event.headers:
                        if name == b":status":
                            status = int(value)
                        else:
                            headers.append((bytes(name), bytes(value)))
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(
                    event,
                    h2.events.StreamEnded | h2.events.StreamReset | h2.events.ConnectionTerminated,
                ):
                    ended = True
            sock.sendall(connection.data_to_send())
    return Exchange(status, headers, body, events=events)


def http1_head_only(url: str, path: str, within: float = WAIT) -> tuple[Exchange, float]:
    """GET ``path`` and read only the response's head, whose body may never come (an idle
    stream); return it (no body) and the seconds it took. Fails after ``within`` seconds."""
    started = time.monotonic()
    deadline = started + within
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=within) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        raw = b""
        while b"\r\n\r\n" not in raw:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no complete head within {within}s: {raw!r}") from None
            assert data, f"connection closed before the head was complete: {raw!r}"
            raw += data
        took = time.monotonic() - started
    status, headers = _parse_head(raw.partition(b"\r\n\r\n")[0])
    return Exchange(status, headers, b"", raw), took
