"""Quick start: rate-limit headers that are only known after the endpoint returned.

Run it with ``python examples/quickstart.py`` (uvicorn on 127.0.0.1, port ``$PORT`` or
8000), then::

    curl -sN -D - -H 'x-api-key: alice' http://127.0.0.1:8000/chat
    curl -s -D - -H 'x-api-key: alice' http://127.0.0.1:8000/usage

Both responses carry ``x-ratelimit-*`` headers that the limiter computes only after the
endpoint has returned: the streaming one through ``header_resolver``, the plain-dict one
through ``normalize_response`` and a LiteLLM-style hook that writes
``_hidden_params["additional_headers"]``.

The part between the ``quickstart`` markers is quoted in the README; a test checks that
the two stay equal.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from header_first_stream import get_additional_headers, normalize_response

# isort: split
# --- quickstart start ---
from header_first_stream import HeaderFirstStreamingResponse as StreamingResponse


async def chat(request: Request) -> StreamingResponse:
    key = request.headers.get("x-api-key", "anonymous")
    limiter.hit(key)

    async def chunks() -> AsyncIterator[str]:
        for word in ("Hello", "from", "a", "stream"):
            yield f"data: {word}\n\n"

    return StreamingResponse(
        chunks(), media_type="text/event-stream", header_resolver=lambda: limiter.headers_for(key)
    )


# --- quickstart end ---


class Limiter:
    """A toy in-memory rate limiter with the timing of a real, shared one.

    `hit` only queues the request; the count is committed by `headers_for`, after a round
    trip to the (here simulated) shared store, as a Redis-backed limiter would do in a
    post-call hook. So the remaining count of a request is known only after its endpoint
    returned: too late for Starlette's own `StreamingResponse`, whose head goes out first.
    """

    def __init__(self, requests_per_minute: int) -> None:
        self.limit = requests_per_minute
        self._used: dict[str, int] = {}
        self._queued: dict[str, int] = {}

    def hit(self, key: str) -> None:
        """Queue one request of ``key``."""
        self._queued[key] = self._queued.get(key, 0) + 1

    async def headers_for(self, key: str) -> dict[str, int]:
        """Commit ``key``'s queued requests and return its rate-limit headers."""
        await anyio.sleep(0.05)  # the round trip to the shared store
        used = self._used[key] = self._used.get(key, 0) + self._queued.pop(key, 0)
        return {
            "x-ratelimit-limit-requests": self.limit,
            "x-ratelimit-remaining-requests": max(self.limit - used, 0),
        }


limiter = Limiter(requests_per_minute=100)


async def rate_limit_hook(result: Any, key: str) -> None:
    """A LiteLLM-style post-call hook: it writes headers into ``_hidden_params``."""
    result._hidden_params["additional_headers"].update(await limiter.headers_for(key))


async def usage(request: Request) -> JSONResponse:
    key = request.headers.get("x-api-key", "anonymous")
    limiter.hit(key)
    # A plain dict has no `_hidden_params` for the hook to write into; normalize it first.
    result = normalize_response({"object": "usage", "key": key})
    await rate_limit_hook(result, key)
    response = JSONResponse(result)
    response.headers.update(get_additional_headers(result))
    return response


app = Starlette(routes=[Route("/chat", chat), Route("/usage", usage)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
