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

The upstream is a toy in the same process; nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from header_first_stream import HeaderFirstMiddleware, late_headers

HEADER_PREFIX = "x-ratelimit-api_key-"


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
    pass


@dataclass
class _Usage:
    requests: int = 0
    tokens: int = 0


class ParallelRequestLimiter:
    """Counts requests and tokens per key (one window, in memory), in the manner of LiteLLM.

    `async_pre_call_hook` reserves before the upstream call, with no ``await`` between
    check and count; `async_post_call_success_hook` reports the key's numbers on the
    response, with ``late_headers()``: it needs neither the request nor the response
    object, so it works whatever the response is (a stream, a model, a plain dict).
    """

    def __init__(self) -> None:
        self._usage: dict[str, _Usage] = {}

    async def async_pre_call_hook(
        self, user_api_key_dict: UserAPIKeyAuth, data: dict[str, Any]
    ) -> None:
        usage = self._usage.setdefault(user_api_key_dict.api_key, _Usage())
        tokens = estimate_tokens(data)
        if (
            usage.requests + 1 > user_api_key_dict.rpm_limit
            or usage.tokens + tokens > user_api_key_dict.tpm_limit
        ):
            raise RateLimitExceeded
        usage.requests += 1
        usage.tokens += tokens

    async def async_post_call_success_hook(
        self, data: dict[str, Any], user_api_key_dict: UserAPIKeyAuth, response: Any
    ) -> Any:
        late_headers().update(self.headers(user_api_key_dict))
        return response

    def headers(self, key: UserAPIKeyAuth) -> dict[str, int]:
        usage = self._usage.get(key.api_key, _Usage())
        return {
            f"{HEADER_PREFIX}remaining-requests": key.rpm_limit - usage.requests,
            f"{HEADER_PREFIX}limit-requests": key.rpm_limit,
            f"{HEADER_PREFIX}remaining-tokens": key.tpm_limit - usage.tokens,
            f"{HEADER_PREFIX}limit-tokens": key.tpm_limit,
        }


def estimate_tokens(data: dict[str, Any]) -> int:
    """A toy token count: words of the prompt, plus ``max_tokens`` when given."""
    prompt = data.get("input", "")
    for message in data.get("messages", []):
        prompt += f" {message.get('content', '')}"
    return len(str(prompt).split()) + int(data.get("max_tokens", 0))


# -- the toy upstream ------------------------------------------------------------------------

WORDS = ("Hello", "from", "the", "toy", "upstream")


async def chat_stream(model: str) -> AsyncIterator[dict[str, Any]]:
    for index, word in enumerate(WORDS):
        await anyio.sleep(0.001)  # the upstream's pace
        yield {
            "id": "chatcmpl-toy",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}],
        }
        if index == len(WORDS) - 1:
            yield {
                "id": "chatcmpl-toy",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }


def chat_completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-toy",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " ".join(WORDS)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": len(WORDS), "total_tokens": 6},
    }


def message(model: str) -> dict[str, Any]:
    return {
        "id": "msg_toy",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": " ".join(WORDS)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": len(WORDS)},
    }


async def message_events(model: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    start = {**message(model), "content": [], "stop_reason": None}
    yield "message_start", {"type": "message_start", "message": start}
    block = {"type": "text", "text": ""}
    yield "content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}
    for word in WORDS:
        await anyio.sleep(0.001)
        delta = {"type": "text_delta", "text": word + " "}
        yield "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": len(WORDS)},
        },
    )
    yield "message_stop", {"type": "message_stop"}


async def response_events(model: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    yield "response.created", {"type": "response.created", "response": {"id": "resp_toy"}}
    for word in WORDS:
        await anyio.sleep(0.001)
        yield "response.output_text.delta", {"type": "response.output_text.delta", "delta": word}
    yield "response.completed", {"type": "response.completed", "response": {"id": "resp_toy"}}


def embedding(model: str, text: str) -> dict[str, Any]:
    return {
        "object": "list",
        "model": model,
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0, 0.5, 1.0]}],
        "usage": {"prompt_tokens": len(text.split()), "total_tokens": len(text.split())},
    }


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


async def openai_sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"


async def named_sse(events: AsyncIterator[tuple[str, dict[str, Any]]]) -> AsyncIterator[bytes]:
    async for name, data in events:
        yield f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


Upstream: TypeAlias = Callable[[dict[str, Any]], dict[str, Any] | AsyncIterator[bytes]]


class Gateway:
    """The proxy's request handling: auth, pre-call hook, upstream, post-call hook."""

    def __init__(self, limiter: ParallelRequestLimiter) -> None:
        self.limiter = limiter

    async def handle(self, request: Request, upstream: Upstream) -> Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        key = KEYS.get(token)
        if key is None:
            return JSONResponse({"error": {"message": "invalid api key", "code": 401}}, 401)
        data: dict[str, Any] = await request.json()
        try:
            await self.limiter.async_pre_call_hook(key, data)
        except RateLimitExceeded:
            late_headers(request).update(self.limiter.headers(key))
            return JSONResponse({"error": {"message": "rate limit exceeded", "code": 429}}, 429)
        result = upstream(data)
        if isinstance(result, dict):
            await self.limiter.async_post_call_success_hook(data, key, result)
            return JSONResponse(result)  # a plain dict: no _hidden_params, no problem

        async def hook() -> None:
            await self.limiter.async_post_call_success_hook(data, key, None)

        return StreamingResponse(with_post_call_hook(result, hook), media_type="text/event-stream")

    async def chat_completions(self, request: Request) -> Response:
        def upstream(data: dict[str, Any]) -> dict[str, Any] | AsyncIterator[bytes]:
            model = data.get("model", "toy")
            return openai_sse(chat_stream(model)) if data.get("stream") else chat_completion(model)

        return await self.handle(request, upstream)

    async def embeddings(self, request: Request) -> Response:
        def upstream(data: dict[str, Any]) -> dict[str, Any]:
            return embedding(data.get("model", "toy"), str(data.get("input", "")))

        return await self.handle(request, upstream)

    async def messages(self, request: Request) -> Response:
        def upstream(data: dict[str, Any]) -> dict[str, Any] | AsyncIterator[bytes]:
            model = data.get("model", "toy")
            return named_sse(message_events(model)) if data.get("stream") else message(model)

        return await self.handle(request, upstream)

    async def responses(self, request: Request) -> Response:
        def upstream(data: dict[str, Any]) -> AsyncIterator[bytes]:
            return named_sse(response_events(data.get("model", "toy")))

        return await self.handle(request, upstream)


def create_app(limiter: ParallelRequestLimiter | None = None) -> Starlette:
    """The gateway, with a fresh limiter unless given one; the fix is the `Middleware` line."""
    gateway = Gateway(limiter or ParallelRequestLimiter())
    return Starlette(
        routes=[
            Route("/v1/chat/completions", gateway.chat_completions, methods=["POST"]),
            Route("/v1/embeddings", gateway.embeddings, methods=["POST"]),
            Route("/v1/messages", gateway.messages, methods=["POST"]),
            Route("/v1/responses", gateway.responses, methods=["POST"]),
        ],
        middleware=[Middleware(HeaderFirstMiddleware)],
    )


if __name__ == "__main__":  # pragma: no cover
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
