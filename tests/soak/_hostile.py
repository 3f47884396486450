"""The hostile header table: names and values that must never reach the wire.

Each row carries a marker: bytes that appear on the wire only if the row's header (or a
header it tried to inject) was sent. Rows marked ``hygiene`` (hop-by-hop and server-owned
names, a value over the size limit) and a response's own framing headers follow the
header rules of docs/headers.md; ``scripts/soak --without-hygiene`` reports them instead of
asserting them, for a tree without those rules.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    name: str
    value: str
    marker: bytes
    why: str
    hygiene: bool = False

    @property
    def pair(self) -> tuple[str, str]:
        return (self.name, self.value)


def _value(index: int, value: str, why: str) -> Row:
    return Row(f"x-soak-v{index}", value, f"soak{index}".encode(), why)


def _name(index: int, name: str, why: str) -> Row:
    return Row(name, "1", f"soakn{index}".encode(), why)


def _hygiene(name: str, value: str, marker: str, why: str) -> Row:
    return Row(name, value, marker.encode(), why, hygiene=True)


CONTROL = Row("x-soak-ok", "fine-soak-ok", b"fine-soak-ok", "a valid header: must be sent")

ROWS: list[Row] = [
    CONTROL,
    # Values: control characters (response splitting and friends).
    _value(1, "a\r\nx-inj-soak1: 1", "CRLF: a second header"),
    _value(2, "a\nx-inj-soak2: 1", "bare LF"),
    _value(3, "a\rx-inj-soak3: 1", "bare CR"),
    _value(4, "a\r\n\r\nHTTP/1.1 200 OK soak4", "CRLFCRLF: a second response"),
    _value(5, "a\x00soak5", "NUL"),
    _value(6, "a\x01soak6", "SOH"),
    _value(7, "a\x07soak7", "BEL"),
    _value(8, "a\x08soak8", "BS"),
    _value(9, "a\x0bsoak9", "VT"),
    _value(10, "a\x0csoak10", "FF"),
    _value(11, "a\x1bsoak11", "ESC"),
    _value(12, "a\x1fsoak12", "US"),
    _value(13, "a\x7fsoak13", "DEL"),
    _value(14, "soak14\r\n", "trailing CRLF"),
    _value(15, "\r\nsoak15", "leading CRLF"),
    _value(16, "soak16\u2028x", "non-latin-1 line separator"),
    _value(17, "soak17-\u0100", "non-latin-1 letter"),
    _value(18, "soak18-\U0001f600", "emoji"),
    _value(19, "a\r\n soak19", "obsolete line folding"),
    _value(20, "a\x0e\x0fsoak20", "shift out / shift in"),
    # Names: not RFC 9110 tokens.
    _name(1, "x-soakn1 bad", "space in name"),
    _name(2, "x-soakn2:evil", "colon in name"),
    _name(3, "x-soakn3\r\nx-inj: 1", "CRLF in name"),
    _name(4, "x-soakn4\x00", "NUL in name"),
    _name(5, "x-soakn5(", "separator ("),
    _name(6, "x-soakn6@", "separator @"),
    _name(7, "x-soakn7[", "separator ["),
    _name(8, "x-soakn8{", "separator {"),
    _name(9, 'x-soakn9"', 'separator "'),
    _name(10, "x-soakn10/", "separator /"),
    _name(11, "x-soakn11\\", "separator \\"),
    _name(12, "x-soakn12,", "separator ,"),
    _name(13, "x-soakn13;", "separator ;"),
    _name(14, "x-soakn14=", "separator ="),
    _name(15, "x-soakn15?", "separator ?"),
    _name(16, "x-soakn16\t", "tab in name"),
    _name(17, " x-soakn17", "leading space"),
    _name(18, "x-soakn18\u00e9", "latin-1 letter, not a token"),
    _name(19, "x-soakn19\n", "LF in name"),
    _name(20, "x-soakn20\u0100", "non-latin-1 name"),
    Row("", "soakn21", b"soakn21", "empty name"),
    # Framing headers: refused as late headers; on own headers only with hygiene, where a
    # stream keeps one decimal content-length of a known size, as Starlette does (the known
    # size is pinned by tests/test_framing_real_servers.py): a malformed one here.
    Row("content-length", "99991x", b"99991x", "late or malformed content-length"),
    Row("transfer-encoding", "soak-te", b"soak-te", "late transfer-encoding"),
    # Hop-by-hop and server-owned names, and sizes: the hygiene rules.
    _hygiene("connection", "soak-h1", "soak-h1", "hop-by-hop"),
    _hygiene("keep-alive", "timeout=1, soak-h2", "soak-h2", "hop-by-hop"),
    _hygiene("proxy-connection", "soak-h3", "soak-h3", "hop-by-hop"),
    _hygiene("upgrade", "soak-h4", "soak-h4", "hop-by-hop"),
    _hygiene("te", "soak-h5", "soak-h5", "hop-by-hop"),
    _hygiene("trailer", "soak-h6", "soak-h6", "hop-by-hop"),
    _hygiene("host", "soak-h7", "soak-h7", "server-owned"),
    _hygiene("server", "soak-h8", "soak-h8", "server-owned (or replaced)"),
    _hygiene("date", "soak-h9", "soak-h9", "server-owned (or replaced)"),
    _hygiene("x-soak-big", "soak-h10" + "a" * 100_000, "soak-h10", "100 KB value"),
]

PATHS = ["resolver", "late", "own", "early", "sse", "mw-resolver", "mw-late"]
"""Every path that sends headers; ``mw-*`` go through `HeaderFirstMiddleware`."""

EXPECTED_STATUS = {
    "resolver": 500,
    "late": 500,  # LateHeaders.update raises in the endpoint: Starlette's own 500
    "own": 500,
    "early": 502,  # an invalid early-error response is replaced by the default 502
    "sse": 500,
    "mw-resolver": 500,
    "mw-late": 500,
}
"""The documented status for a refused header, by path."""

CONTROL_STATUS = {**dict.fromkeys(PATHS, 200), "early": 503}
"""The status for the valid control row, by path (the early-error response is a 503)."""


def expectation(row: Row, path: str, hygiene: bool) -> tuple[int, bool] | None:
    """The documented (status, whether the row's marker is on the wire) of ``row`` on
    ``path``; ``None`` where main's rules leave it to the hygiene rules (reported only).

    With ``hygiene``, as docs/headers.md documents them: hop-by-hop and server-owned names
    are refused as late and resolver headers, but a response's own headers (and the
    early-error response's) are the app's, as in Starlette; a stream's own framing
    headers give a 500, the early-error response's are replaced by its true length; a
    value over the size limit gives a 500 everywhere.
    """
    own = path in ("own", "early")
    if row is CONTROL:
        return CONTROL_STATUS[path], True
    framing = row.name in ("content-length", "transfer-encoding")
    if not hygiene:
        if row.hygiene or (framing and own):
            return None
        return EXPECTED_STATUS[path], False
    if row.name == "x-soak-big":
        return 500, False
    if framing and path == "own":
        return 500, False
    if framing and path == "early":
        return CONTROL_STATUS[path], False
    if row.hygiene and own:
        return CONTROL_STATUS[path], True
    return EXPECTED_STATUS[path], False


def url(path: str, index: int) -> str:
    if path.startswith("mw-"):
        return f"/mw-hostile/{path}/{index}"
    return f"/hostile/{path}/{index}"
