"""A small LLM gateway in LiteLLM's image, with its rate-limit headers on every shape.

The gateway checks a virtual key (`keys.KeyStore`), counts the request and reserves its
tokens (`limiter.Limiter`: in memory, or in Redis shared by every worker), forwards it to
the upstream with httpx, streaming through without buffering, and then lets a post-call
hook attach the ``x-ratelimit-api_key-*`` headers the way LiteLLM's v3
``parallel_request_limiter`` does: by writing them into
``response._hidden_params["additional_headers"]`` (`rate_limit_post_call_hook`, whose
shape is LiteLLM's, short-circuit on plain dicts included).

In LiteLLM two shapes lose those headers (see the bug report): streams, whose head is sent
before the hook runs, and plain dicts, which the hook skips. With ``fix=True`` (the
default) this library closes both gaps without touching the hook:

- JSON: the upstream's dict goes through `normalize_response`, so the hook finds
  ``_hidden_params``; `get_additional_headers` then reads what it wrote.
- Streams: `HeaderFirstStreamingResponse` runs the hook in its ``header_resolver``, after
  the endpoint returned and before the head goes out; with ``peek_first_chunk=True`` an
  upstream that answers non-2xx becomes that status, with the upstream's ``retry-after``
  and ``x-ratelimit-*``, instead of a ``200`` and a broken stream.

With ``fix=False`` the gateway takes LiteLLM's paths: Starlette's `StreamingResponse` with
the hook run after the response (a background task), and ``/v1/messages`` results left as
plain dicts. Chat completions, embeddings and responses are typed objects that carry
``_hidden_params`` there, as LiteLLM's ``ModelResponse`` does, so they keep their headers.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from header_first_stream import (
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
    get_additional_headers,
    late_headers,
    normalize_response,
)

from .keys import KeyStore, MemoryKeyStore, VirtualKey
from .limiter import Decision, KeyLimits, Limiter, RateLimiter, StoreUnavailable
from .upstream import OVERLOADED_MODEL, SSE_MEDIA_TYPE, estimate_tokens

MASTER_KEY = "sk-1234"

MODEL_LIST = {
    "test-chat": "mock-chat",
    "test-embedding": "mock-embedding",
    "test-anthropic": "mock-claude",
    OVERLOADED_MODEL: OVERLOADED_MODEL,
}
"""Public model name → the upstream's model name, as in the bug report's ``config.yaml``."""

ANTHROPIC_VERSION = "2023-06-01"

# The upstream's own rate-limit answer, passed on to the client on a non-2xx.
_PASSED_ON_EXACT = frozenset({"retry-after", "retry-after-ms"})
_PASSED_ON_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")

logger = logging.getLogger("examples.gateway")

StoreErrorPolicy = Literal["error", "degrade"]


@dataclass(frozen=True)
class CallContext:
    """What the post-call hook knows of a request, like LiteLLM's ``UserAPIKeyAuth``."""

    api_key: str
    model: str
    decision: Decision


class ModelResponse:
    """A typed upstream result with ``_hidden_params``, as LiteLLM's ``ModelResponse``.

    Only the ``fix=False`` gateway builds these: in LiteLLM, chat completions, embeddings
    and responses are such objects, which is why those shapes kept their headers.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self._hidden_params: dict[str, Any] = {"additional_headers": {}}


class StreamWrapper:
    """An upstream stream being relayed, as LiteLLM's ``CustomStreamWrapper``.

    It carries ``_hidden_params`` too, so the hook writes into it; whether the headers
    reach the client depends only on when the response head is sent.
    """

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks
        self._hidden_params: dict[str, Any] = {"additional_headers": {}}


async def rate_limit_post_call_hook(context: CallContext, response: Any) -> Any:
    """Attach the request's rate-limit headers to ``response``, as LiteLLM's v3 limiter does.

    Kept in LiteLLM's shape on purpose, including its short-circuit: a response without
    ``_hidden_params`` (a plain `dict`) gets nothing. The fix is in how the gateway
    prepares and sends responses, not in the hook.
    """
    if hasattr(response, "_hidden_params"):
        hidden = response._hidden_params
        additional = hidden.get("additional_headers") or {}
        additional.update(context.decision.headers)
        hidden["additional_headers"] = additional
    return response


def _error_body(status: int, message: str, error_type: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": str(status)}}


def _error(
    status: int, message: str, error_type: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = _error_body(status, message, error_type)
    return JSONResponse(body, status_code=status, headers=headers)


def _store_unavailable() -> JSONResponse:
    return _error(
        503,
        "the gateway's key and rate-limit store is unreachable; retry shortly",
        "service_unavailable",
        {"retry-after": "1"},
    )


def _passed_on(upstream: httpx.Response) -> dict[str, str]:
    return {
        name: value
        for name, value in upstream.headers.items()
        if name in _PASSED_ON_EXACT or name.startswith(_PASSED_ON_PREFIXES)
    }


def upstream_error_response(exc: Exception) -> Response | None:
    """`early_error_handler` for relayed streams: the upstream's own error, passed on.

    A non-2xx upstream answer (raised as `httpx.HTTPStatusError` before the first chunk)
    becomes a response with the upstream's status, body, ``content-type``, ``retry-after``
    and rate-limit headers. Anything else (the upstream unreachable) gets the library's
    default ``502``.
    """
    if not isinstance(exc, httpx.HTTPStatusError):
        return None
    upstream = exc.response
    return Response(
        upstream.content,
        status_code=upstream.status_code,
        headers=_passed_on(upstream),
        media_type=upstream.headers.get("content-type"),
    )


def _presented_key(request: Request) -> str | None:
    # OpenAI clients send "Authorization: Bearer"; Anthropic's send "x-api-key".
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key")


class Gateway:
    """The gateway's state (keys, limiter, upstream client) and its ASGI app, `app`.

    Args:
        upstream_url: Base URL of the provider, e.g. ``http://127.0.0.1:28100``.
        fix: Use this library (default); ``False`` reproduces LiteLLM's lost headers.
        master_key: The key that may create virtual keys.
        limiter: The rate limiter; a fresh in-memory one by default.
        keys: Where virtual keys are kept; this process's memory by default.
        upstream_timeout: Seconds for each upstream connect/read.
        on_store_error: When the limiter's or key store's back end (Redis) is
            unreachable: ``"error"`` (default) answers ``503`` with ``retry-after: 1``
            and counts nothing; ``"degrade"`` serves a request whose key is known
            without counting it and without its ``x-ratelimit-*`` headers (fail open,
            logged at WARNING). The limiter runs before the upstream call (it decides the
            ``429``), so the gateway answers its failure, not the stream's resolver.
        cors_origins: Origins of browser pages that may call the gateway (e.g. the demo's
            chat page). With the fix, `HeaderFirstMiddleware(expose_late_headers=True)`
            sits outside Starlette's `CORSMiddleware` and lists the rate-limit headers in
            ``Access-Control-Expose-Headers``, so that ``fetch()`` can read them.

    The upstream client is opened and closed by the app's lifespan: serve the app with
    lifespan events on (uvicorn's default).
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        fix: bool = True,
        master_key: str = MASTER_KEY,
        limiter: Limiter | None = None,
        keys: KeyStore | None = None,
        upstream_timeout: float = 30.0,
        on_store_error: StoreErrorPolicy = "error",
        cors_origins: Sequence[str] = (),
    ) -> None:
        if on_store_error not in ("error", "degrade"):
            raise ValueError(f"on_store_error must be 'error' or 'degrade', got {on_store_error!r}")
        self.upstream_url = upstream_url
        self.fix = fix
        self.master_key = master_key
        self.limiter: Limiter = limiter if limiter is not None else RateLimiter()
        self.keys: KeyStore = keys if keys is not None else MemoryKeyStore()
        self.on_store_error = on_store_error
        self.cors_origins = tuple(cors_origins)
        self.upstream_timeout = upstream_timeout
        self._client: httpx.AsyncClient | None = None
        routes = [Route("/key/generate", self.generate_key, methods=["POST"])]
        for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"):
            routes.append(Route(path, self.forward, methods=["POST"]))
        self.app = Starlette(routes=routes, lifespan=self._lifespan, middleware=self._middleware())

    def _middleware(self) -> list[Middleware]:
        if not self.cors_origins:
            return []
        cors = Middleware(
            CORSMiddleware,
            allow_origins=self.cors_origins,
            allow_methods=["POST"],
            allow_headers=["authorization", "content-type", "x-api-key", "anthropic-version"],
            expose_headers=["retry-after"],  # a static name: CORSMiddleware can list it
        )
        if not self.fix:
            return [cors]  # the browser sees what Starlette alone lets it see
        # The first is the outermost: it merges its names into CORSMiddleware's list.
        return [Middleware(HeaderFirstMiddleware, expose_late_headers=True), cors]

    def _expose(self, request: Request, headers: Mapping[str, str]) -> None:
        # The hook's headers reach JSON and 429 heads through JSONResponse, not as late
        # headers: adding them as late headers too (same values, sent once) lets the
        # middleware expose their names on every shape.
        if self.cors_origins and self.fix:
            late_headers(request).update(headers)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # The upstream speaks plain bytes: relayed chunks are passed on as they come.
        async with httpx.AsyncClient(
            base_url=self.upstream_url,
            timeout=self.upstream_timeout,
            headers={"accept-encoding": "identity"},
        ) as client:
            self._client = client
            try:
                yield
            finally:
                self._client = None
                await self.limiter.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError(
                "the gateway's upstream client is opened by the app's lifespan, which did not "
                "run; serve Gateway.app with lifespan events on (uvicorn --lifespan on)"
            )
        return self._client

    async def generate_key(self, request: Request) -> Response:
        """``POST /key/generate`` under the master key: ``{"models", "rpm_limit", "tpm_limit"}``."""
        if _presented_key(request) != self.master_key:
            return _error(401, "creating keys needs the master key as Bearer token", "auth_error")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body must be a JSON object", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object", "invalid_request_error")
        models = body.get("models") or []
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            return _error(400, "'models' must be a list of model names", "invalid_request_error")
        limits: dict[str, int | None] = {}
        for name in ("rpm_limit", "tpm_limit"):
            value = body.get(name)
            if value is not None and (type(value) is not int or value < 1):
                return _error(
                    400,
                    f"{name!r} must be a positive integer or null, got {value!r}",
                    "invalid_request_error",
                )
            limits[name] = value
        key = "sk-" + secrets.token_urlsafe(18)
        try:
            await self.keys.put(key, VirtualKey(tuple(models), KeyLimits(**limits)))
        except StoreUnavailable:
            logger.exception("could not store a new key")
            return _store_unavailable()
        return JSONResponse({"key": key, "models": models, **limits})

    async def forward(self, request: Request) -> Response:
        """Check the key, count the request, forward it, and attach the headers."""
        presented = _presented_key(request)
        virtual_key: VirtualKey | None = None
        if presented == self.master_key:
            virtual_key = VirtualKey((), KeyLimits())
        elif presented is not None:
            try:
                virtual_key = await self.keys.get(presented)
            except StoreUnavailable:
                logger.exception("could not look up a key")
                return _store_unavailable()
        if presented is None or virtual_key is None:
            return _error(401, "invalid or missing API key", "auth_error")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body must be a JSON object", "invalid_request_error")
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or model not in MODEL_LIST:
            return _error(
                400,
                f"unknown model {model!r}; use one of {sorted(MODEL_LIST)}",
                "invalid_request_error",
            )
        if virtual_key.models and model not in virtual_key.models:
            return _error(401, f"this key may not use model {model!r}", "auth_error")

        try:
            # A network round trip with the Redis back end.
            decision = await self.limiter.check_and_reserve(
                presented, virtual_key.limits, estimate_tokens(body)
            )
        except StoreUnavailable:
            if self.on_store_error == "error":
                logger.exception("the rate limiter's store is unreachable")
                return _store_unavailable()
            logger.warning(
                "the rate limiter's store is unreachable; serving without counting",
                exc_info=True,
            )
            decision = Decision(True, {})
        self._expose(request, decision.headers)
        if not decision.allowed:
            return _error(
                429,
                f"Rate limit exceeded for api_key: {decision.exceeded} per minute; "
                f"retry after {decision.retry_after}s",
                "rate_limit_error",
                {**decision.headers, "retry-after": str(decision.retry_after)},
            )

        context = CallContext(presented, model, decision)
        path = request.url.path
        upstream_request = self.client.build_request(
            "POST",
            path,
            json={**body, "model": MODEL_LIST[model]},
            headers=self._upstream_headers(request, path),
        )
        if body.get("stream"):
            return await self._relay_stream(context, upstream_request)
        return await self._relay_json(context, path, upstream_request)

    def _upstream_headers(self, request: Request, path: str) -> dict[str, str]:
        if path == "/v1/messages":
            version = request.headers.get("anthropic-version", ANTHROPIC_VERSION)
            return {"x-api-key": "dummy", "anthropic-version": version}
        return {"authorization": "Bearer dummy"}

    async def _relay_json(
        self, context: CallContext, path: str, upstream_request: httpx.Request
    ) -> Response:
        passed_on: dict[str, str] = {}
        try:
            upstream = await self.client.send(upstream_request)
            payload = upstream.json()
            status = upstream.status_code
            if not upstream.is_success:
                passed_on = _passed_on(upstream)
        except (httpx.HTTPError, ValueError):
            payload, status = None, 502
        if not isinstance(payload, dict):
            payload, status = (
                _error_body(502, "the upstream failed to answer", "upstream_error"),
                502,
            )
        if self.fix:
            result = normalize_response(payload)
        elif path == "/v1/messages" or status >= 400:
            result = payload  # LiteLLM passes these through as plain dicts
        else:
            result = ModelResponse(payload)
        result = await rate_limit_post_call_hook(context, result)
        headers = {**passed_on, **get_additional_headers(result)}
        content = result.data if isinstance(result, ModelResponse) else result
        return JSONResponse(content, status_code=status, headers=headers)

    async def _relay_stream(
        self, context: CallContext, upstream_request: httpx.Request
    ) -> StreamingResponse:
        stream = StreamWrapper(self._relay(upstream_request))
        if not self.fix:
            # LiteLLM's path: the head goes out first, the hook runs afterwards.
            return StreamingResponse(
                stream.chunks,
                media_type=SSE_MEDIA_TYPE,
                background=BackgroundTask(rate_limit_post_call_hook, context, stream),
            )

        async def resolve_headers(first_chunk: object) -> dict[str, str]:
            # Runs after this endpoint returned, before the head is sent.
            await rate_limit_post_call_hook(context, stream)
            return get_additional_headers(stream)

        return HeaderFirstStreamingResponse(
            stream.chunks,
            media_type=SSE_MEDIA_TYPE,
            header_resolver=resolve_headers,
            peek_first_chunk=True,
            early_error_handler=upstream_error_response,
        )

    async def _relay(self, upstream_request: httpx.Request) -> AsyncIterator[bytes]:
        upstream = await self.client.send(upstream_request, stream=True)
        try:
            if not upstream.is_success:
                await upstream.aread()
                raise httpx.HTTPStatusError(
                    f"the upstream answered {upstream.status_code}",
                    request=upstream_request,
                    response=upstream,
                )
            # Raw chunks, passed on as they arrive: no buffering, no re-framing.
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()
