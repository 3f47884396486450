"""Header rendering, validation and merging shared by every response of this package.

Invariant: every header this package sends went through `validate_raw_headers` (or was
built by `render_headers`, which validates) after the last change to it, so that no
response can be split by a CR/LF smuggled into a header value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ._types import HeaderSource, RawHeaders

__all__ = [
    "FRAMING_HEADERS",
    "HeaderValidationError",
    "merge_headers",
    "render_headers",
    "validate_raw_headers",
]

# RFC 9110 section 5.1: field-name = token; tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*"
# / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 section 5.5: field values may hold HTAB but no other control character.
_FORBIDDEN_IN_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

# A resolver computes metadata; the body's framing belongs to the server, which derives
# it from the stream. A late content-length or transfer-encoding would make the head
# describe a body other than the one that is sent.
FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding"})

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
    set the framing headers (`FRAMING_HEADERS`): the body they would describe is not theirs.
    """
    pairs: Iterable[tuple[str, object]]
    if isinstance(headers, Mapping):
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
        if raw_name in FRAMING_HEADERS:
            raise HeaderValidationError(
                f"invalid late header {name!r} (the server frames the body: late headers "
                "may not set content-length or transfer-encoding)"
            )
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
