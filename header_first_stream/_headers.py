"""Header rendering, validation and merging shared by every response of this package.

Invariants, enforced by the functions below (the rules are listed in ``docs/headers.md``):

1. Every header this package sends went through `validate_raw_headers` (or was built by
   `render_headers`, which validates) after the last change to it, so that no response
   can be split by a CR/LF smuggled into a header value.
2. Late headers (`late_headers`, resolvers) never set a name of `REFUSED_LATE_HEADERS`:
   framing, connection-specific and server-owned fields are the server's.
3. A streamed head (`HeaderFirstStreamingResponse`) never carries framing headers of its
   own; a complete response this package sends itself carries exactly one
   ``content-length``, computed from its body (`frame_complete_response`).
4. No head goes out with a value over its ``max_header_value_size`` or a size over its
   ``max_head_size`` (`check_head_size`); the check runs once per head, never per chunk.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from ._types import HeaderSource, RawHeaders

__all__ = [
    "DEFAULT_MAX_HEADER_VALUE_SIZE",
    "DEFAULT_MAX_HEAD_SIZE",
    "FRAMING_HEADERS",
    "HeaderValidationError",
    "REFUSED_LATE_HEADERS",
    "check_head_size",
    "frame_complete_response",
    "merge_headers",
    "render_headers",
    "validate_own_headers",
    "validate_raw_headers",
]

# RFC 9110 section 5.1: field-name = token; tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*"
# / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 section 5.5: field values may hold HTAB but no other control character.
_FORBIDDEN_IN_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

logger = logging.getLogger("header_first_stream")

# A resolver computes metadata; the body's framing belongs to the server, which derives
# it from the stream. A late content-length or transfer-encoding would make the head
# describe a body other than the one that is sent.
FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding"})

_FRAMING = (
    "the server frames the body: late headers may not set content-length or transfer-encoding"
)
_HOP_BY_HOP = (
    "a connection-specific field (RFC 9110 section 7.6.1), malformed in HTTP/2 and HTTP/3 "
    "(RFC 9113 section 8.2.2); the server manages the connection: remove it"
)

REFUSED_LATE_HEADERS: Mapping[bytes, str] = MappingProxyType(
    {
        # RFC 9112 section 6: the server frames the streamed body itself; a second framing
        # header makes the head lie about the body (request smuggling through proxies).
        b"content-length": _FRAMING,
        b"transfer-encoding": _FRAMING,
        # Connection-specific ("hop-by-hop") fields: they describe the connection to the
        # next hop, not the response, and an HTTP/2 response carrying one is malformed.
        b"connection": _HOP_BY_HOP,
        b"keep-alive": _HOP_BY_HOP,
        b"proxy-connection": _HOP_BY_HOP,
        # Only a 101 (Switching Protocols) or 426 response may carry it (RFC 9110 7.8).
        b"upgrade": _HOP_BY_HOP,
        # A request field: what the client accepts (RFC 9110 section 10.1.4).
        b"te": _HOP_BY_HOP,
        # Announces trailer fields (RFC 9110 section 6.6.2); this package sends none.
        b"trailer": (
            "it announces trailer fields (RFC 9110 section 6.6.2), and none are sent; remove it"
        ),
        # A request field (RFC 9110 section 7.2); HTTP/2 replaces it with :authority.
        b"host": "a request field (RFC 9110 section 7.2), meaningless in a response; remove it",
        # The server sends its own Date (RFC 9110 section 6.6.1, uvicorn and hypercorn
        # both do); a second one is a duplicate of a singleton field.
        b"date": (
            "the server sends its own date (RFC 9110 section 6.6.1): a late one would be "
            "a second date line; remove it"
        ),
        # The server sends its own Server line unless told not to (uvicorn
        # --no-server-header, hypercorn include_server_header = false); the app cannot
        # tell whether it will, so a late one could be a duplicate.
        b"server": (
            "the server sends its own server header, which a late one would duplicate; to "
            "replace it, turn the server's off (uvicorn --no-server-header, hypercorn "
            "include_server_header = false) and set it in the response's own headers"
        ),
    }
)
"""Names late headers may not set (lower-case bytes), each with the reason in its error."""

DEFAULT_MAX_HEADER_VALUE_SIZE = 8192
"""Bytes one header value may hold by default (``max_header_value_size``)."""

DEFAULT_MAX_HEAD_SIZE = 16384
"""Bytes the headers of one response head may hold by default (``max_head_size``).

Counted as on an HTTP/1.1 wire: ``name: value\r\n`` per header, the lines the server
adds itself (``date``, ``server``, framing) not included.
"""

# Fields that cannot be combined into one line (RFC 9110 section 5.3): each is its own
# header, so a later source adds to them instead of replacing them.
_NOT_REPLACED = frozenset({b"set-cookie"})

_NAMES_OF_CONTROL_CHARACTERS = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x00: "\\x00"}


class HeaderValidationError(ValueError):
    """A header name or value that must not be sent.

    Raised before anything of the response has been sent: a response never goes out
    with a header that could split it or that a client would reject.
    """


def _describe(byte: int) -> str:
    return _NAMES_OF_CONTROL_CHARACTERS.get(byte, f"\\x{byte:02x}")


# Bound once: this runs for every header of every response.
_is_token = _TOKEN.fullmatch
_find_forbidden = _FORBIDDEN_IN_VALUE.search


def _check(name: bytes, value: bytes) -> None:
    if _is_token(name) is None:
        raise HeaderValidationError(
            f"invalid header name {name.decode('latin-1')!r} "
            "(header names must be RFC 9110 tokens: letters, digits and !#$%&'*+-.^_`|~)"
        )
    bad = _find_forbidden(value)
    if bad is not None:
        raise HeaderValidationError(
            f"invalid header value for {name.decode('latin-1')!r}: contains "
            f"'{_describe(bad.group()[0])}' (header values may not contain control characters)"
        )


def validate_raw_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Raise `HeaderValidationError` for the first header that must not be sent."""
    for name, value in raw_headers:
        _check(name, value)


def _render_value(name: str, value: object) -> bytes:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise HeaderValidationError(
            f"invalid header value for {name!r}: {type(value).__name__} "
            "(header values must be str or int)"
        )
    # Optional whitespace around a field value is not part of it (RFC 9110 section 5.5),
    # and servers such as h11 refuse to send it.
    text = value.strip(" \t") if isinstance(value, str) else str(value)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise HeaderValidationError(
            f"invalid header value for {name!r}: {text!r} is not latin-1 "
            "(percent-encode it or use RFC 8187 encoding)"
        ) from None


def render_headers(headers: HeaderSource) -> RawHeaders:
    """Turn late headers (a mapping or (name, value) pairs) into validated raw headers.

    Names are lower-cased; `int` values are rendered as decimal text. Late headers may not
    set a name of `REFUSED_LATE_HEADERS` (framing, connection-specific and server-owned
    fields). Sizes are checked where the head is assembled (`check_head_size`).
    """
    pairs: Iterable[tuple[str, object]]
    if headers.__class__ is dict:  # the commonest, without the ABC check below
        if not headers:
            return []
        pairs = headers.items()
    elif isinstance(headers, Mapping):
        pairs = headers.items()
    elif isinstance(headers, str | bytes):
        raise HeaderValidationError(
            f"invalid headers: {type(headers).__name__} "
            "(return a mapping or an iterable of (name, value) pairs)"
        )
    else:
        pairs = headers
    raw: RawHeaders = []
    for pair in pairs:
        try:
            name, value = pair
        except (TypeError, ValueError):
            raise HeaderValidationError(
                f"invalid header entry {pair!r} (expected a (name, value) pair)"
            ) from None
        if not isinstance(name, str):
            raise HeaderValidationError(
                f"invalid header name {name!r}: {type(name).__name__} (header names must be str)"
            )
        raw_name = name.lower().encode("latin-1", "replace")
        raw_value = _render_value(name, value)
        _check(raw_name, raw_value)
        refused = REFUSED_LATE_HEADERS.get(raw_name)
        if refused is not None:
            raise HeaderValidationError(f"invalid late header {name!r} ({refused})")
        raw.append((raw_name, raw_value))
    return raw


def merge_headers(base: RawHeaders, late: RawHeaders) -> RawHeaders:
    """Return `base` with every name that `late` sets replaced by `late`'s values.

    A name that `late` gives several times keeps all of its values; ``set-cookie`` is
    never replaced, only added to.
    """
    if not late:
        return base
    names = {name for name, _ in late if name not in _NOT_REPLACED}
    return [pair for pair in base if pair[0] not in names] + late


# Own headers found valid (never a framing header, whose count matters): a header is checked
# once, not on every response of an endpoint. Bounded (at most 4096 values of 256 bytes),
# and emptied when full, so one-off values (a request id) do not crowd out the rest.
_VALID_OWN: set[tuple[bytes, bytes]] = set()
_VALID_OWN_SIZE = 4096
_VALID_OWN_VALUE = 256


def validate_own_headers(raw_headers: RawHeaders, response: str, max_value: int) -> int:
    """Validate the own headers of a streamed response; refuse framing that cannot hold.

    The server frames a stream (chunked, or by closing the connection). A stream of a known
    size may say so with one ``content-length`` of decimal digits, as Starlette's
    `StreamingResponse` allows (the server then holds the body to it); a
    ``transfer-encoding``, a malformed ``content-length`` or several of them would frame
    the body twice or not at all (a server drops such a response without a word).

    Returns the size of a head of these headers, as `check_head_size` counts it, or ``-1``
    if a value is over ``max_value`` (measured in the same pass: once per response).
    """
    lengths = 0
    size = 0
    for pair in raw_headers:
        length = len(pair[1])
        size = -1 if length > max_value or size < 0 else size + len(pair[0]) + length + 4
        try:
            if pair in _VALID_OWN:  # the same headers on every response of an endpoint
                continue
        except TypeError:  # unhashable (a bytearray): checked each time
            pass
        name, value = pair
        _check(name, value)
        lowered = name.lower()
        if lowered == b"content-length":
            lengths += 1
            if lengths == 1 and value.isdigit():
                continue
        elif lowered != b"transfer-encoding":
            if length <= _VALID_OWN_VALUE and type(value) is bytes and type(name) is bytes:
                if len(_VALID_OWN) == _VALID_OWN_SIZE:
                    _VALID_OWN.clear()  # mostly one-off values: start again
                _VALID_OWN.add(pair)
            continue
        raise HeaderValidationError(
            f"invalid response header {name.decode('latin-1')}: "
            f"{value.decode('latin-1')!r} for {response}: the server frames a streamed body "
            "(give at most one content-length, of decimal digits, for a body of known "
            "size; never transfer-encoding)"
        )
    return size


# 1xx, 204 and 304 responses have no body, so no content-length to compute (RFC 9110
# sections 8.6 and 15): not the complete response with a body that an error needs.
_WITHOUT_BODY = frozenset({204, 304})


def frame_complete_response(
    status: int, raw_headers: RawHeaders, body: bytes | memoryview, path: str
) -> RawHeaders:
    """Return the headers of a complete response this package sends, framed by its body.

    Every ``content-length`` and ``transfer-encoding`` is replaced by one
    ``content-length`` computed from ``body``: the package sends the body in one message,
    so that is the only framing that is true. Replacing a framing header that said
    something else (a wrong or malformed length, a transfer coding) is logged at WARNING.

    Raises:
        HeaderValidationError: A header may not be sent, or ``status`` is one of a
            response without a body (1xx, 204, 304).
    """
    if status < 200 or status in _WITHOUT_BODY:
        raise HeaderValidationError(
            f"invalid status {status} for a response with a body (1xx, 204 and 304 "
            "responses have none; answer with an error status such as 502)"
        )
    validate_raw_headers(raw_headers)
    length = str(len(body)).encode()
    framed: RawHeaders = []
    replaced: RawHeaders = []  # every framing header that said something else
    placed = False
    for name, value in raw_headers:
        if name.lower() not in FRAMING_HEADERS:
            framed.append((name, value))
            continue
        if placed or (name.lower(), value) != (b"content-length", length):
            replaced.append((name, value))
        if not placed:  # in the first one's place, where Starlette's Response puts it
            framed.append((b"content-length", length))
            placed = True
    if not placed:
        framed.append((b"content-length", length))
    if replaced:
        logger.warning(
            "replaced the framing headers %s of the response sent for %s with "
            "content-length: %s (computed from its body: this package frames the "
            "responses it sends itself)",
            [(n.decode("latin-1"), v.decode("latin-1")) for n, v in replaced],
            path,
            length.decode(),
        )
    return framed


def check_head_size(raw_headers: RawHeaders, max_value: int, max_head: int) -> None:
    """Raise `HeaderValidationError` for a value over ``max_value`` or a head over ``max_head``.

    Called once per head, never per chunk.
    """
    size = 0
    for name, value in raw_headers:
        length = len(value)
        if length > max_value:
            raise HeaderValidationError(
                f"header {name.decode('latin-1')!r} is {length} bytes long, over the limit "
                f"of {max_value} (max_header_value_size): proxies and clients refuse "
                "oversized heads; send less, or raise the limit"
            )
        size += len(name) + length + 4
    if size > max_head:
        largest = max(raw_headers, key=lambda pair: len(pair[0]) + len(pair[1]))
        raise HeaderValidationError(
            f"response head is {size} bytes, over the limit of {max_head} (max_head_size; "
            f"its largest header is {largest[0].decode('latin-1')!r}, "
            f"{len(largest[0]) + len(largest[1]) + 4} bytes): proxies and clients refuse "
            "oversized heads; send less, or raise the limit"
        )
