"""A small LLM gateway fixed with `HeaderFirstMiddleware` and `late_headers()` alone.

The handlers are what a gateway has before the fix: Starlette's plain `StreamingResponse`
for streams, `JSONResponse` of plain dicts for the rest. A LiteLLM-style rate limiter
computes ``x-ratelimit-api_key-{remaining,limit}-{requests,tokens}`` in its post-call
hook; instead of writing them into ``response._hidden_params`` (lost on streams and plain
dicts, see the bug report), it adds them with ``late_headers()``. The one-line fix is the
middleware: every shape then carries all four headers.

For a stream, the hook runs when the upstream's first chunk arrived, after the handler
returned and after Starlette's response sent its start: the middleware still holds that
start back until the first body chunk, so the headers make it.

Run it with ``python -m examples.middleware_app`` (uvicorn on 127.0.0.1, port ``$PORT``
or 8000), then::

    curl -sN -D - -H 'Authorization: Bearer sk-demo' -H 'content-type: application/json' \\
      http://127.0.0.1:8000/v1/chat/completions \\
      -d '{"model": "toy", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'

The parts other than the fix are the demo gateway's (`examples.gateway`): its mock
provider is the upstream, called in the same process (nothing leaves the machine), and its
rate limiter and token estimate count behind LiteLLM's hook names.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from header_first_stream import HeaderFirstMiddleware, late_headers

from .gateway.limiter import KeyLimits, Limiter, RateLimiter
from .gateway.upstream import create_upstream_app, estimate_tokens

# -- the rate limiter, with LiteLLM's hook names ---------------------------------------------


@dataclass(frozen=True)
class UserAPIKeyAuth:
    """The caller's virtual key and its limits, as the proxy's auth step resolves them."""

    api_key: str
    rpm_limit: int
    tpm_limit: int


KEYS = {
    "sk-demo": UserAPIKeyAuth("sk-demo", rpm_limit=6000, tpm_limit=100_000),
    "sk-other": UserAPIKeyAuth("sk-other", rpm_limit=10, tpm_limit=1_000),
}


class RateLimitExceeded(Exception):
    """The key is over a limit; ``headers`` are its numbers as they stand."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("rate limit exceeded")
        self.headers = headers


class ParallelRequestLimiter:
    """The gateway's limiter (`examples.gateway.limiter`) behind LiteLLM's hook names.

    `async_pre_call_hook` counts the request and reserves its estimated tokens in one
    atomic step, and keeps the key's numbers in the request's ``metadata``, as LiteLLM's
    limiter does; `async_post_call_success_hook` reports them with ``late_headers()``: it
    needs neither the request nor the response object, so it works whatever the response
    is (a stream, a model, a plain dict).
    """

    def __init__(self, limiter: Limiter | None = None) -> None:
        self._limiter = limiter or RateLimiter()

    async def async_pre_call_hook(
        self, user_api_key_dict: UserAPIKeyAuth, data: dict[str, Any]
    ) -> None:
        limits = KeyLimits(user_api_key_dict.rpm_limit, user_api_key_dict.tpm_limit)
        decision = await self._limiter.check_and_reserve(
            user_api_key_dict.api_key, limits, estimate_tokens(data)
        )
        if not decision.allowed:
            raise RateLimitExceeded(decision.headers)
        data.setdefault("metadata", {})["ratelimit_headers"] = decision.headers

    async def async_post_call_success_hook(
        self, data: dict[str, Any], user_api_key_dict: UserAPIKeyAuth, response: Any
    ) -> Any:
        late_headers().update(data["metadata"]["ratelimit_headers"])
        return response


# -- the gateway: handlers as they were before the fix ---------------------------------------


async def with_post_call_hook(
    events: AsyncIterator[bytes], run_hook: Callable[[], Awaitable[Any]]
) -> AsyncIterator[bytes]:
    """Yield ``events``, running the post-call hook once the upstream's first one arrived.

    Starlette's `StreamingResponse` has sent its start by then; without the middleware
    the hook's headers would be lost here (the bug report's streaming case).
    """
    async for event in events:
        await run_hook()
        yield event
        break
    async for event in events:
        yield event


class Gateway:
    """The proxy's request handling: auth, pre-call hook, upstream, post-call hook.

    Every route forwards to the same path of ``upstream``, an ASGI app called in process.
    """

    def __init__(self, limiter: ParallelRequestLimiter, upstream: ASGIApp) -> None:
        self.limiter = limiter
        transport = httpx.ASGITransport(app=upstream)
        self.upstream = httpx.AsyncClient(transport=transport, base_url="http://upstream")

    async def handle(self, request: Request) -> Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        key = KEYS.get(token)
        if key is None:
            return JSONResponse({"error": {"message": "invalid api key", "code": 401}}, 401)
        data: dict[str, Any] = await request.json()
        try:
            await self.limiter.async_pre_call_hook(key, data)
        except RateLimitExceeded as exc:
            late_headers(request).update(exc.headers)
            return JSONResponse({"error": {"message": "rate limit exceeded", "code": 429}}, 429)
        # What the provider gets: the request without the proxy's own metadata.
        body = {name: value for name, value in data.items() if name != "metadata"}
        if not data.get("stream"):
            result = (await self.upstream.post(request.url.path, json=body)).json()
            await self.limiter.async_post_call_success_hook(data, key, result)
            return JSONResponse(result)  # a plain dict: no _hidden_params, no problem

        async def hook() -> None:
            await self.limiter.async_post_call_success_hook(data, key, None)

        events = self._stream(request.url.path, body)
        return StreamingResponse(with_post_call_hook(events, hook), media_type="text/event-stream")

    async def _stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        async with self.upstream.stream("POST", path, json=body) as response:
            async for chunk in response.aiter_raw():
                yield chunk


PATHS = ("/v1/chat/completions", "/v1/embeddings", "/v1/messages", "/v1/responses")


def create_app(
    limiter: ParallelRequestLimiter | None = None, upstream: ASGIApp | None = None
) -> Starlette:
    """The gateway, with a fresh limiter and mock upstream unless given them; the fix is
    the `Middleware` line."""
    gateway = Gateway(limiter or ParallelRequestLimiter(), upstream or create_upstream_app())
    return Starlette(
        routes=[Route(path, gateway.handle, methods=["POST"]) for path in PATHS],
        middleware=[Middleware(HeaderFirstMiddleware)],
    )


if __name__ == "__main__":  # pragma: no cover
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
