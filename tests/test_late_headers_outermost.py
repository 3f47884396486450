"""The late-header store stays open until the outermost holder of ours sends the head.

`HeaderFirstMiddleware` outermost, Starlette's ``BaseHTTPMiddleware`` inside it: a header
added in ``dispatch`` after ``call_next`` returned is still before the head (the middleware
outside holds it), so it is sent, whatever response class the endpoint returns, a response
of ours included (which decides its own head further in, and must not close the store).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from header_first_stream import (
    HeaderFirstEventSourceResponse,
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
    add_late_headers,
    late_headers,
)

from ._asgi import call, events, http_scope, resolver_of, words

pytestmark = pytest.mark.anyio

OWN = {"x-own": "1"}

ENDPOINT_RESPONSES: dict[str, Callable[[], Response]] = {
    "HeaderFirstStreamingResponse": lambda: HeaderFirstStreamingResponse(words(b"a"), headers=OWN),
    "HeaderFirstStreamingResponse with a resolver": lambda: HeaderFirstStreamingResponse(
        words(b"a"), headers=OWN, header_resolver=resolver_of({"x-resolved": "1"})
    ),
    "HeaderFirstStreamingResponse with a peek": lambda: HeaderFirstStreamingResponse(
        words(b"a"), headers=OWN, peek_first_chunk=True
    ),
    "HeaderFirstEventSourceResponse": lambda: HeaderFirstEventSourceResponse(
        events("a"), headers=OWN, ping=0
    ),
    "StreamingResponse": lambda: StreamingResponse(words(b"a"), headers=OWN),
    "JSONResponse": lambda: JSONResponse({"a": 1}, headers=OWN),
}


def app_for(kind: str, results: list[bool], *, after_call_next: bool) -> Starlette:
    async def endpoint(request: Request) -> Response:
        late_headers(request).add("x-in-endpoint", "1")
        return ENDPOINT_RESPONSES[kind]()

    class AfterCallNext(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            response = await call_next(request)
            if after_call_next:
                results.append(add_late_headers({"x-after-call-next": "1"}))
            return response

    return Starlette(
        routes=[Route("/", endpoint)],
        middleware=[Middleware(HeaderFirstMiddleware), Middleware(AfterCallNext)],
    )


@pytest.mark.parametrize("kind", ENDPOINT_RESPONSES)
async def test_a_header_added_after_call_next_reaches_the_client_last(kind: str) -> None:
    without = await call(app_for(kind, [], after_call_next=False), http_scope())
    results: list[bool] = []
    recorder = await call(app_for(kind, results, after_call_next=True), http_scope())
    assert results == [True]
    assert recorder.status == without.status == 200
    assert recorder.headers == [*without.headers, (b"x-after-call-next", b"1")]
    assert recorder.body == without.body


async def test_the_head_of_a_response_of_ours_keeps_its_order_before_it() -> None:
    results: list[bool] = []
    kind = "HeaderFirstStreamingResponse with a resolver"
    recorder = await call(app_for(kind, results, after_call_next=True), http_scope())
    assert results == [True]
    assert recorder.headers == [
        (b"x-own", b"1"),
        (b"x-in-endpoint", b"1"),
        (b"x-resolved", b"1"),
        (b"x-after-call-next", b"1"),
    ]
    assert recorder.body == b"a"
