"""Header rendering, validation and merging (`_headers.py`), by example and by property."""

from __future__ import annotations

import collections
import string
import types
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from header_first_stream import HeaderValidationError
from header_first_stream._headers import (
    FRAMING_HEADERS,
    REFUSED_LATE_HEADERS,
    merge_headers,
    render_headers,
    validate_raw_headers,
)

TCHAR = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
# RFC 9110 section 5.5: no control character in a value, except HTAB.
FORBIDDEN = [chr(c) for c in [*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F]]
DESCRIBED = {"\n": "\\n", "\r": "\\r", "\x00": "\\x00"}

tokens = st.text(alphabet=TCHAR, min_size=1, max_size=40).filter(
    lambda name: name.lower().encode() not in REFUSED_LATE_HEADERS
)
field_values = st.text(
    alphabet=st.characters(codec="latin-1", exclude_characters="".join(FORBIDDEN)),
    max_size=60,
)
fast = settings(deadline=None, max_examples=150)


def describe(char: str) -> str:
    return DESCRIBED.get(char, f"\\x{ord(char):02x}")


# --- render_headers by example ---------------------------------------------------------


def test_mapping_is_rendered_lower_case_with_ints_as_decimal_and_ows_stripped() -> None:
    source: dict[str, str | int] = {
        "X-RateLimit-Remaining": 5999,
        "X-Id": "  abc \t",
        "X-Tab": "a\tb",
        "X-Neg": -1,
    }
    assert render_headers(source) == [
        (b"x-ratelimit-remaining", b"5999"),
        (b"x-id", b"abc"),
        (b"x-tab", b"a\tb"),
        (b"x-neg", b"-1"),
    ]


def test_any_mapping_is_rendered_as_a_dict_is() -> None:
    source: dict[str, str | int] = {"X-A": "1", "x-b": 2}
    expected = [(b"x-a", b"1"), (b"x-b", b"2")]
    assert render_headers(source) == expected
    assert render_headers(types.MappingProxyType(source)) == expected
    assert render_headers(collections.OrderedDict(source)) == expected
    assert render_headers(types.MappingProxyType({})) == []


def test_pairs_keep_their_order_and_repeated_names() -> None:
    def pairs() -> Iterator[tuple[str, str | int]]:
        yield ("Set-Cookie", "a=1")
        yield ("set-cookie", "b=2")
        yield ("x-n", 0)

    expected = [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"x-n", b"0")]
    assert render_headers(pairs()) == expected
    assert render_headers(list(pairs())) == expected
    assert render_headers({}) == []
    assert render_headers([]) == []


def test_latin_1_values_are_accepted() -> None:
    assert render_headers({"x-name": "café"}) == [(b"x-name", "café".encode("latin-1"))]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"x-foo": "a\rb"},
            "invalid header value for 'x-foo': contains '\\r' "
            "(header values may not contain control characters)",
        ),
        ({"x-foo": "a\nb"}, "invalid header value for 'x-foo': contains '\\n' "),
        ({"x-foo": "a\x00b"}, "invalid header value for 'x-foo': contains '\\x00' "),
        ({"x-foo": "a\x1bb"}, "invalid header value for 'x-foo': contains '\\x1b' "),
        ({"x-foo": "a\x7f"}, "invalid header value for 'x-foo': contains '\\x7f' "),
        (
            {"x foo": "v"},
            "invalid header name 'x foo' (header names must be RFC 9110 tokens: "
            "letters, digits and !#$%&'*+-.^_`|~)",
        ),
        ({"": "v"}, "invalid header name ''"),
        ({"x-€": "v"}, "invalid header name 'x-?'"),
        (
            {"x-foo": "€"},
            "invalid header value for 'x-foo': '€' is not latin-1 "
            "(percent-encode it or use RFC 8187 encoding)",
        ),
        (
            {"x-foo": 1.5},
            "invalid header value for 'x-foo': float (header values must be str or int)",
        ),
        ({"x-foo": True}, "invalid header value for 'x-foo': bool"),
        ({"x-foo": b"v"}, "invalid header value for 'x-foo': bytes"),
        ({"x-foo": None}, "invalid header value for 'x-foo': NoneType"),
        (
            "x-foo: 1",
            "invalid headers: str (return a mapping or an iterable of (name, value) pairs)",
        ),
        (b"x-foo: 1", "invalid headers: bytes"),
        ([("x-foo",)], "invalid header entry ('x-foo',) (expected a (name, value) pair)"),
        ([("a", "b", "c")], "invalid header entry ('a', 'b', 'c')"),
        ([5], "invalid header entry 5 (expected a (name, value) pair)"),
        ([(b"x-foo", "v")], "invalid header name b'x-foo': bytes (header names must be str)"),
        (
            {"Content-Length": "5"},
            "invalid late header 'Content-Length' (the server frames the body: late headers "
            "may not set content-length or transfer-encoding)",
        ),
        ({"transfer-encoding": "chunked"}, "invalid late header 'transfer-encoding'"),
    ],
)
def test_invalid_headers_are_rejected_with_a_message_naming_them(source: Any, message: str) -> None:
    with pytest.raises(HeaderValidationError) as info:
        render_headers(source)
    assert str(info.value).startswith(message)


def test_header_validation_error_is_a_value_error() -> None:
    assert issubclass(HeaderValidationError, ValueError)
    assert {b"content-length", b"transfer-encoding"} == FRAMING_HEADERS


# --- validate_raw_headers --------------------------------------------------------------


def test_validate_raw_headers_accepts_what_a_server_may_send() -> None:
    validate_raw_headers([])
    validate_raw_headers([(b"content-type", b"text/plain"), (b"X-Mixed", b"a\tb \xe9")])
    validate_raw_headers([(b"content-length", b"5")])  # framing is fine on own headers


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([(b"x-a", b"1"), (b"x-b", b"\r\n")], "invalid header value for 'x-b': contains '\\r'"),
        ([(b"x b", b"1")], "invalid header name 'x b'"),
        ([(b"x:b", b"1")], "invalid header name 'x:b'"),
        ([(b"", b"1")], "invalid header name ''"),
    ],
)
def test_validate_raw_headers_names_the_first_bad_header(
    raw: list[tuple[bytes, bytes]], message: str
) -> None:
    with pytest.raises(HeaderValidationError) as info:
        validate_raw_headers(raw)
    assert str(info.value).startswith(message)


# --- merge_headers by example ----------------------------------------------------------


def test_merge_replaces_every_value_of_a_late_name_and_keeps_late_repeats() -> None:
    base = [(b"a", b"1"), (b"x-id", b"old"), (b"b", b"2"), (b"x-id", b"older")]
    late = [(b"x-id", b"new"), (b"x-id", b"newer"), (b"c", b"3")]
    assert merge_headers(base, late) == [
        (b"a", b"1"),
        (b"b", b"2"),
        (b"x-id", b"new"),
        (b"x-id", b"newer"),
        (b"c", b"3"),
    ]


def test_merge_never_replaces_set_cookie_only_adds_to_it() -> None:
    # Each set-cookie is its own cookie (RFC 9110 section 5.3): a late one must not
    # delete the app's session cookie.
    base = [(b"set-cookie", b"session=1"), (b"a", b"1")]
    late = [(b"set-cookie", b"rl=60"), (b"a", b"2")]
    assert merge_headers(base, late) == [
        (b"set-cookie", b"session=1"),
        (b"set-cookie", b"rl=60"),
        (b"a", b"2"),
    ]


def test_merge_with_nothing_late_returns_the_base_itself() -> None:
    base = [(b"a", b"1")]
    assert merge_headers(base, []) is base


# --- properties ------------------------------------------------------------------------


@fast
@given(name=tokens, value=field_values)
def test_any_token_name_and_control_free_value_is_accepted_and_round_trips(
    name: str, value: str
) -> None:
    raw = render_headers({name: value})
    assert raw == [(name.lower().encode("ascii"), value.strip(" \t").encode("latin-1"))]
    validate_raw_headers(raw)
    assert render_headers([(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw]) == raw


@fast
@given(name=tokens, value=st.integers())
def test_any_int_value_is_rendered_as_decimal_text(name: str, value: int) -> None:
    assert render_headers([(name, value)]) == [(name.lower().encode(), str(value).encode())]


@fast
@given(
    name=tokens,
    before=field_values,
    bad=st.sampled_from(FORBIDDEN),
    after=field_values,
)
def test_any_value_with_a_forbidden_control_character_is_rejected_naming_the_header(
    name: str, before: str, bad: str, after: str
) -> None:
    with pytest.raises(HeaderValidationError) as info:
        render_headers({name: before + bad + after})
    assert str(info.value).startswith(
        f"invalid header value for {name.lower()!r}: contains '{describe(bad)}'"
    )
    with pytest.raises(HeaderValidationError) as raw_info:
        validate_raw_headers([(name.encode(), (before + bad + after).encode("latin-1"))])
    assert f"for {name!r}: contains '{describe(bad)}'" in str(raw_info.value)


@fast
@given(
    before=st.text(alphabet=TCHAR, max_size=10),
    bad=st.characters(codec="latin-1").filter(lambda c: c not in TCHAR),
    after=st.text(alphabet=TCHAR, max_size=10),
)
def test_any_name_with_a_non_token_character_is_rejected(before: str, bad: str, after: str) -> None:
    name = before + bad + after
    with pytest.raises(HeaderValidationError) as info:
        render_headers({name: "v"})
    assert str(info.value).startswith(f"invalid header name {name.lower()!r}")


raw_pairs = st.lists(
    st.tuples(st.sampled_from([b"a", b"b", b"c", b"set-cookie"]), st.binary(max_size=3)),
    max_size=8,
)


@fast
@given(base=raw_pairs, late=raw_pairs)
def test_merge_headers_properties(
    base: list[tuple[bytes, bytes]], late: list[tuple[bytes, bytes]]
) -> None:
    merged = merge_headers(base, late)
    replaced = {name for name, _ in late if name != b"set-cookie"}
    # Every late pair is sent, in order, after what is kept of the base.
    assert merged[len(merged) - len(late) :] == late
    kept = merged[: len(merged) - len(late)]
    # Of the base, exactly the names late replaces are dropped (never set-cookie).
    assert kept == [pair for pair in base if pair[0] not in replaced]
    # Merging the same late headers again changes nothing but adding set-cookies again.
    if all(name != b"set-cookie" for name, _ in late):
        assert merge_headers(merged, late) == merged
    # Nothing is invented.
    assert set(merged) <= set(base) | set(late)
