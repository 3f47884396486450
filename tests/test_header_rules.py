"""The header rules of ``docs/headers.md``: refused late names, own framing, the early-error
response's framing, size limits. Tier 1 (direct ASGI calls) and unit tests.

Every async test runs on asyncio and trio. The response tests use ASGI spec 2.3 (the
path real servers take today); the rules are decided in `_prepare`, before either path
sends anything.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Scope

from header_first_stream import (
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
    HeaderValidationError,
    _headers,
    late_headers,
)
from header_first_stream._headers import (
    DEFAULT_MAX_HEAD_SIZE,
    DEFAULT_MAX_HEADER_VALUE_SIZE,
    FRAMING_HEADERS,
    REFUSED_LATE_HEADERS,
    check_head_size,
    frame_complete_response,
    render_headers,
    validate_own_headers,
)
from header_first_stream._types import HeaderResolver, HeaderSource

from ._asgi import call, http_scope, scope_with_request_id, sent
from ._expect import plain_error

ERROR_500 = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", b"21"),
]

REFUSED = sorted(name.decode() for name in REFUSED_LATE_HEADERS)


async def body() -> AsyncIterator[bytes]:
    yield b"hello"


def resolver_of(headers: HeaderSource) -> HeaderResolver:
    async def resolver() -> HeaderSource:
        return headers

    return resolver


def error_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --- the refused names ---------------------------------------------------------------


def test_the_refused_late_names_are_the_documented_ones() -> None:
    assert set(REFUSED) == {
        "connection",
        "content-length",
        "date",
        "host",
        "keep-alive",
        "proxy-connection",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
    assert set(REFUSED_LATE_HEADERS) >= FRAMING_HEADERS
    text = (Path(__file__).parent.parent / "docs" / "headers.md").read_text(encoding="utf-8")
    for name in REFUSED:
        assert f"| `{name}` |" in text, f"{name} missing from the table in docs/headers.md"


@pytest.mark.parametrize("name", REFUSED)
def test_every_refused_name_is_refused_in_any_case_naming_it_and_why(name: str) -> None:
    for spelling in (name, name.upper(), name.title()):
        with pytest.raises(HeaderValidationError) as info:
            render_headers({spelling: "x"})
        reason = REFUSED_LATE_HEADERS[name.encode()]
        assert str(info.value) == f"invalid late header {spelling!r} ({reason})"


def test_the_reasons_name_the_rfc_or_the_fix() -> None:
    assert "RFC 9113 section 8.2.2" in REFUSED_LATE_HEADERS[b"connection"]
    assert "--no-server-header" in REFUSED_LATE_HEADERS[b"server"]
    assert "include_server_header" in REFUSED_LATE_HEADERS[b"server"]
    assert "RFC 9110 section 6.6.1" in REFUSED_LATE_HEADERS[b"date"]


@pytest.mark.parametrize("name", ["x-connection", "server-timing", "dates", "hosts", "tea"])
def test_names_that_only_resemble_a_refused_one_are_accepted(name: str) -> None:
    assert render_headers({name: "1"}) == [(name.encode(), b"1")]


@pytest.mark.parametrize("name", REFUSED)
def test_late_headers_refuse_a_refused_name_when_it_is_added(name: str) -> None:
    scope = http_scope()
    store = late_headers(scope)
    with pytest.raises(HeaderValidationError, match=f"invalid late header '{name}'"):
        store.add(name, "x")
    assert store.items() == []


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["connection", "upgrade", "server", "date", "host", "te"])
async def test_a_resolver_returning_a_refused_name_gives_a_500_not_the_header(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    response = HeaderFirstStreamingResponse(
        body(), header_resolver=resolver_of({name: "x", "x-ok": "1"})
    )
    recorder = await call(response)
    assert sent(recorder) == plain_error(500, b"Internal Server Error")
    assert error_records(caplog) == ["header resolver failed for /"]


@pytest.mark.anyio
async def test_a_resolver_returning_a_refused_name_under_degrade_sends_the_stream_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    response = HeaderFirstStreamingResponse(
        body(),
        media_type="text/plain",
        header_resolver=resolver_of({"keep-alive": "timeout=5", "x-ok": "1"}),
        on_resolver_error="degrade",
    )
    recorder = await call(response)
    assert recorder.status == 200
    assert recorder.headers == [(b"content-type", b"text/plain; charset=utf-8")]
    assert recorder.body == b"hello"
    assert [r.levelname for r in caplog.records] == ["WARNING"]


@pytest.mark.anyio
async def test_the_middleware_resolver_returning_a_refused_name_gives_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def resolver(scope: Scope) -> HeaderSource:
        return {"proxy-connection": "keep-alive"}

    app = HeaderFirstMiddleware(PlainTextResponse("ok"), resolver=resolver)
    recorder = await call(app)
    assert sent(recorder) == plain_error(500, b"Internal Server Error")
    assert error_records(caplog) == ["header resolver failed for /"]


@pytest.mark.anyio
async def test_the_sse_response_refuses_a_refused_late_name_too() -> None:
    from header_first_stream import HeaderFirstEventSourceResponse

    response = HeaderFirstEventSourceResponse(
        body(), ping=0, header_resolver=resolver_of({"trailer": "x-cost"})
    )
    recorder = await call(response)
    assert recorder.status == 500
    assert recorder.headers == ERROR_500


# --- own framing headers of a stream ---------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [(b"transfer-encoding", b"chunked")],
        [(b"Transfer-Encoding", b"identity")],
        [(b"content-length", b"abc")],
        [(b"Content-Length", b"-5")],
        [(b"content-length", b"5"), (b"content-length", b"5")],
    ],
)
def test_validate_own_headers_refuses_framing_naming_the_header_and_the_fix(
    headers: list[tuple[bytes, bytes]],
) -> None:
    with pytest.raises(HeaderValidationError) as info:
        validate_own_headers([(b"x-ok", b"1"), *headers], "HeaderFirstStreamingResponse", 8192)
    name, value = headers[-1][0].decode(), headers[-1][1].decode()
    assert str(info.value) == (
        f"invalid response header {name}: {value!r} for HeaderFirstStreamingResponse: the "
        "server frames a streamed body (give at most one content-length, of decimal digits, "
        "for a body of known size; never transfer-encoding)"
    )


def test_validate_own_headers_accepts_one_content_length_as_starlette_does() -> None:
    # Returns the head's size as check_head_size counts it: name + value + 4 per header.
    assert validate_own_headers([(b"content-length", b"10"), (b"x-a", b"1")], "R", 8192) == 28


def test_validate_own_headers_accepts_other_headers_and_refuses_control_characters() -> None:
    assert validate_own_headers([(b"connection", b"close"), (b"server", b"mine")], "R", 8) == 33
    with pytest.raises(HeaderValidationError, match="contains '\\\\r'"):
        validate_own_headers([(b"x-a", b"1\r\n")], "R", 8192)


def test_validate_own_headers_gives_minus_one_for_a_value_over_the_cap_and_validates() -> None:
    assert validate_own_headers([(b"x-a", b"12345"), (b"x-b", b"1")], "R", 4) == -1
    assert validate_own_headers([(b"x-b", b"1"), (b"x-a", b"12345")], "R", 4) == -1
    with pytest.raises(HeaderValidationError, match="contains '\\\\n'"):
        validate_own_headers([(b"x-a", b"12345"), (b"x-c", b"\n")], "R", 4)


def test_validate_own_headers_checks_an_unhashable_header_every_time() -> None:
    # A bytearray value (Starlette accepts one) cannot be remembered as valid.
    for _ in range(2):
        assert validate_own_headers([(b"x-a", bytearray(b"1"))], "R", 8192) == 8  # type: ignore[list-item]
    with pytest.raises(HeaderValidationError, match="contains '\\\\r'"):
        validate_own_headers([(b"x-a", bytearray(b"1\r"))], "R", 8192)  # type: ignore[list-item]


def test_validate_own_headers_remembers_valid_headers_and_forgets_them_when_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_headers, "_VALID_OWN", set())
    monkeypatch.setattr(_headers, "_VALID_OWN_SIZE", 2)
    for value in (b"1", b"2", b"3"):
        validate_own_headers([(b"x-a", value)], "R", 8192)
    assert {(b"x-a", b"3")} == _headers._VALID_OWN  # emptied when full, then added
    long = (b"x-long", b"v" * 257)  # over 256 bytes: not remembered
    validate_own_headers([long, (b"x-b", b"1")], "R", 8192)
    assert long not in _headers._VALID_OWN


@pytest.mark.anyio
@pytest.mark.parametrize(("name", "value"), [("content-length", "5b"), ("transfer-encoding", "5")])
async def test_a_stream_with_its_own_framing_header_gives_a_500_with_the_late_headers(
    name: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    scope = scope_with_request_id("r1")
    response = HeaderFirstStreamingResponse(body(), headers={name: value})
    recorder = await call(response, scope)
    assert sent(recorder) == plain_error(500, b"Internal Server Error", (b"x-request-id", b"r1"))
    assert error_records(caplog) == ["invalid response header for /"]


# --- the early-error response: framed by its body ------------------------------------

BODY = b"upstream error"  # 14 bytes


@pytest.mark.parametrize(
    ("framing", "replaced"),
    [
        ([(b"transfer-encoding", b"chunked")], [("transfer-encoding", "chunked")]),
        ([(b"transfer-encoding", b"identity")], [("transfer-encoding", "identity")]),
        ([(b"content-length", b"abc")], [("content-length", "abc")]),
        ([(b"content-length", b"999")], [("content-length", "999")]),
        ([(b"content-length", b"-1")], [("content-length", "-1")]),
        ([(b"content-length", b"14"), (b"content-length", b"14")], [("content-length", "14")]),
        (
            [(b"content-length", b"14"), (b"transfer-encoding", b"chunked")],
            [("transfer-encoding", "chunked")],
        ),
        (
            [(b"Transfer-Encoding", b"chunked"), (b"content-length", b"14")],
            [("Transfer-Encoding", "chunked"), ("content-length", "14")],
        ),
        ([(b"content-length", b"14")], []),
        ([], []),
    ],
)
def test_a_complete_response_gets_exactly_one_content_length_computed_from_its_body(
    framing: list[tuple[bytes, bytes]],
    replaced: list[tuple[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    headers = frame_complete_response(503, [(b"x-a", b"1"), *framing, (b"x-b", b"2")], BODY, "/p")
    # In the place of the first framing header (where Starlette puts it), or last.
    if framing:
        assert headers == [(b"x-a", b"1"), (b"content-length", b"14"), (b"x-b", b"2")]
    else:
        assert headers == [(b"x-a", b"1"), (b"x-b", b"2"), (b"content-length", b"14")]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if replaced:
        assert warnings == [
            f"replaced the framing headers {replaced} of the response sent for /p with "
            "content-length: 14 (computed from its body: this package frames the "
            "responses it sends itself)"
        ]
    else:
        assert warnings == []


@pytest.mark.parametrize("status", [100, 101, 199, 204, 304])
def test_a_complete_response_needs_a_status_with_a_body(status: int) -> None:
    with pytest.raises(HeaderValidationError) as info:
        frame_complete_response(status, [], b"", "/")
    assert str(info.value) == (
        f"invalid status {status} for a response with a body (1xx, 204 and 304 responses "
        "have none; answer with an error status such as 502)"
    )


def test_a_complete_response_with_an_invalid_header_is_refused() -> None:
    with pytest.raises(HeaderValidationError, match="invalid header value for 'x-a'"):
        frame_complete_response(502, [(b"x-a", b"\n")], b"", "/")


async def failing_body() -> AsyncIterator[bytes]:
    raise RuntimeError("upstream said 503")
    yield b""  # pragma: no cover


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        {"transfer-encoding": "chunked"},
        {"transfer-encoding": "identity"},
        {"content-length": "abc"},
        {"content-length": "3"},
    ],
)
async def test_an_early_error_response_with_a_framing_header_goes_out_framed_by_its_body(
    headers: dict[str, str],
) -> None:
    scope = scope_with_request_id("r1")
    response = HeaderFirstStreamingResponse(
        failing_body(),
        peek_first_chunk=True,
        early_error_handler=lambda exc: Response(BODY, 503, headers=headers),
    )
    recorder = await call(response, scope)
    assert recorder.status == 503
    assert recorder.headers == [(b"content-length", b"14"), (b"x-request-id", b"r1")]
    assert recorder.body == BODY


@pytest.mark.anyio
@pytest.mark.parametrize("status", [101, 204, 304])
async def test_an_early_error_response_without_a_body_status_gives_the_default_502(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    response = HeaderFirstStreamingResponse(
        failing_body(),
        peek_first_chunk=True,
        early_error_handler=lambda exc: Response(status_code=status),
    )
    recorder = await call(response)
    assert recorder.status == 502
    assert recorder.headers[0][0] == b"content-length"
    assert int(recorder.headers[0][1]) == len(recorder.body)
    assert error_records(caplog) == ["invalid header in the early error response for /"]


@pytest.mark.anyio
async def test_an_early_error_response_whose_content_length_was_removed_gets_one() -> None:
    def handler(exc: Exception) -> Response:
        response = JSONResponse({"error": "x"}, 502)
        del response.headers["content-length"]
        return response

    response = HeaderFirstStreamingResponse(
        failing_body(), peek_first_chunk=True, early_error_handler=handler
    )
    recorder = await call(response)
    assert recorder.status == 502
    assert recorder.headers == [
        (b"content-type", b"application/json"),
        (b"content-length", b"13"),
    ]
    assert recorder.body == b'{"error":"x"}'


# --- size limits ---------------------------------------------------------------------


def test_the_default_limits() -> None:
    assert DEFAULT_MAX_HEADER_VALUE_SIZE == 8192
    assert DEFAULT_MAX_HEAD_SIZE == 16384
    assert HeaderFirstStreamingResponse.max_header_value_size == 8192
    assert HeaderFirstStreamingResponse.max_head_size == 16384
    assert HeaderFirstMiddleware.max_header_value_size == 8192
    assert HeaderFirstMiddleware.max_head_size == 16384


def test_check_head_size_accepts_a_head_at_the_limits() -> None:
    value = b"v" * 8192
    check_head_size([(b"x-a", value)], 8192, 3 + 8192 + 4)
    check_head_size([], 0, 0)


def test_check_head_size_names_the_header_and_the_value_limit() -> None:
    with pytest.raises(HeaderValidationError) as info:
        check_head_size([(b"x-ok", b"1"), (b"x-big", b"v" * 8193)], 8192, 10**6)
    assert str(info.value) == (
        "header 'x-big' is 8193 bytes long, over the limit of 8192 (max_header_value_size): "
        "proxies and clients refuse oversized heads; send less, or raise the limit"
    )


def test_check_head_size_names_the_head_limit_and_its_largest_header() -> None:
    headers = [(b"x-a", b"a" * 100), (b"x-b", b"b" * 200), (b"x-c", b"c" * 50)]
    with pytest.raises(HeaderValidationError) as info:
        check_head_size(headers, 8192, 300)
    # Each header counts as on an HTTP/1.1 wire: "x-a: " + value + CRLF.
    assert str(info.value) == (
        "response head is 371 bytes, over the limit of 300 (max_head_size; its largest "
        "header is 'x-b', 207 bytes): proxies and clients refuse oversized heads; send "
        "less, or raise the limit"
    )


@pytest.mark.anyio
async def test_an_oversized_resolver_value_is_a_resolver_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    response = HeaderFirstStreamingResponse(
        body(), header_resolver=resolver_of({"x-big": "v" * 8193})
    )
    recorder = await call(response)
    assert recorder.status == 500
    assert recorder.headers == ERROR_500
    failure = caplog.records[0]
    assert failure.getMessage() == "header resolver failed for /"
    assert failure.exc_info is not None
    assert "header 'x-big' is 8193 bytes long, over the limit of 8192" in str(failure.exc_info[1])


@pytest.mark.anyio
async def test_oversized_resolver_headers_under_degrade_send_the_stream_without_them() -> None:
    many = {f"x-h{i}": "v" * 1000 for i in range(17)}  # 17 x 1,010 bytes > 16 KiB
    response = HeaderFirstStreamingResponse(
        body(), header_resolver=resolver_of(many), on_resolver_error="degrade"
    )
    recorder = await call(response)
    assert recorder.status == 200
    assert recorder.headers == []
    assert recorder.body == b"hello"


@pytest.mark.anyio
async def test_an_oversized_late_header_gives_a_500_without_the_late_headers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scope = http_scope()
    late_headers(scope).update({"x-request-id": "r1", "x-big": "v" * 100_000})
    response = HeaderFirstStreamingResponse(body(), header_resolver=resolver_of({"x-a": "1"}))
    recorder = await call(response, scope)
    assert sent(recorder) == plain_error(500, b"Internal Server Error")
    (record,) = caplog.records
    assert record.getMessage() == "response head too large for /"
    assert record.exc_info is not None
    assert "'x-big' is 100000 bytes long, over the limit of 8192" in str(record.exc_info[1])


@pytest.mark.anyio
async def test_a_head_over_the_limit_from_own_late_and_resolved_headers_gives_a_500() -> None:
    scope = http_scope()
    late_headers(scope).add("x-late", "l" * 6000)
    response = HeaderFirstStreamingResponse(
        body(), headers={"x-own": "o" * 6000}, header_resolver=resolver_of({"x-r": "r" * 6000})
    )
    recorder = await call(response, scope)
    assert recorder.status == 500
    assert recorder.headers == ERROR_500


@pytest.mark.anyio
async def test_an_oversized_early_error_response_gives_a_500() -> None:
    response = HeaderFirstStreamingResponse(
        failing_body(),
        peek_first_chunk=True,
        early_error_handler=lambda exc: Response(BODY, 503, headers={"x-big": "v" * 9000}),
    )
    recorder = await call(response)
    assert recorder.status == 500
    assert recorder.headers == ERROR_500


class Roomy(HeaderFirstStreamingResponse):
    max_header_value_size = 200_000
    max_head_size = 300_000


class Tight(HeaderFirstStreamingResponse):
    max_head_size = 100


@pytest.mark.anyio
async def test_the_limits_are_class_attributes_a_subclass_or_instance_may_change() -> None:
    big = "v" * 100_000
    recorder = await call(Roomy(body(), header_resolver=resolver_of({"x-big": big})))
    assert recorder.status == 200
    assert recorder.headers == [(b"x-big", big.encode())]

    tight = await call(Tight(body(), headers={"x-a": "a" * 100}))
    assert tight.status == 500

    response = HeaderFirstStreamingResponse(body(), headers={"x-a": "a" * 100})
    response.max_head_size = 50
    assert (await call(response)).status == 500


@pytest.mark.anyio
async def test_the_sse_response_refuses_its_own_framing_headers_too() -> None:
    from header_first_stream import HeaderFirstEventSourceResponse

    response = HeaderFirstEventSourceResponse(
        body(), ping=0, headers={"transfer-encoding": "chunked"}
    )
    recorder = await call(response)
    assert recorder.status == 500
    assert recorder.headers == ERROR_500
