"""Tier 3: the framing of what this package sends, read as raw bytes from real servers.

On uvicorn (h11 and httptools) and hypercorn (asyncio and trio), every response has
exactly one framing header that matches its body (checked by `http1_get`), the right
status and the exact body, whatever framing headers the app put in a stream's own
headers or in the response its `early_error_handler` returned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from header_first_stream import HeaderFirstStreamingResponse, late_headers

from ._raw_http import http1_get
from ._servers import SERVERS, TRIO_SERVERS, served

SERVER_OWN = (b"date", b"server", b"connection")
"""Lines a server adds itself (``connection: close`` answers the request's)."""

ERROR_500 = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", b"21"),
    (b"x-request-id", b"r1"),
]

EARLY_ERROR_FRAMINGS = {
    "chunked": {"transfer-encoding": "chunked"},
    "identity": {"transfer-encoding": "identity"},
    "malformed": {"content-length": "abc"},
    "wrong": {"content-length": "3"},
    "negative": {"content-length": "-1"},
}

OWN_FRAMINGS = {
    "own-malformed-length": {"content-length": "5b"},
    "own-two-lengths": {"content-length": "5, 5"},
    "own-chunked": {"transfer-encoding": "chunked"},
}


async def failing_body() -> AsyncIterator[bytes]:
    raise RuntimeError("upstream said 503")
    yield b""  # pragma: no cover


async def body() -> AsyncIterator[bytes]:
    yield b"hello"


def early_error(request: Request) -> Response:
    late_headers(request).add("x-request-id", "r1")
    headers = EARLY_ERROR_FRAMINGS[request.path_params["case"]]
    return HeaderFirstStreamingResponse(
        failing_body(),
        peek_first_chunk=True,
        early_error_handler=lambda exc: Response(
            "upstream error", 503, headers={"retry-after": "7", **headers}
        ),
    )


def own_framing(request: Request) -> Response:
    late_headers(request).add("x-request-id", "r1")
    return HeaderFirstStreamingResponse(body(), headers=OWN_FRAMINGS[request.path_params["case"]])


def known_size(request: Request) -> Response:
    late_headers(request).add("x-request-id", "r1")
    return HeaderFirstStreamingResponse(body(), headers={"content-length": "5"})


APP = Starlette(
    routes=[
        Route("/early/{case}", early_error),
        Route("/own/{case}", own_framing),
        Route("/known-size", known_size),
    ]
)


url = served(APP, [*SERVERS, *TRIO_SERVERS])


@pytest.mark.parametrize("case", sorted(EARLY_ERROR_FRAMINGS))
def test_an_early_error_response_goes_out_with_one_content_length_computed_from_its_body(
    url: str, case: str
) -> None:
    response = http1_get(url, f"/early/{case}")
    assert response.status == 503
    assert response.without(*SERVER_OWN) == [
        (b"retry-after", b"7"),
        (b"content-length", b"14"),
        (b"x-request-id", b"r1"),
    ]
    assert response.body == b"upstream error"
    assert len(response.values(b"date")) == 1


@pytest.mark.parametrize("case", sorted(OWN_FRAMINGS))
def test_a_stream_with_its_own_framing_header_is_answered_500_with_one_framing(
    url: str, case: str
) -> None:
    response = http1_get(url, f"/own/{case}")
    assert response.status == 500
    assert response.without(*SERVER_OWN) == ERROR_500
    assert response.body == b"Internal Server Error"


def test_a_stream_of_known_size_goes_out_with_its_one_content_length_as_in_starlette(
    url: str,
) -> None:
    response = http1_get(url, "/known-size")
    assert response.status == 200
    assert response.without(*SERVER_OWN) == [(b"content-length", b"5"), (b"x-request-id", b"r1")]
    assert response.body == b"hello"
