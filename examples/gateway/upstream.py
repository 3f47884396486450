"""A mock LLM provider: the OpenAI and Anthropic endpoints the gateway forwards to.

It answers like the real APIs closely enough that the official ``openai`` and
``anthropic`` SDKs parse its bodies and streams: ``/v1/chat/completions`` (JSON, or SSE
chunks ending in ``data: [DONE]``, with a usage chunk when
``stream_options.include_usage`` is set), ``/v1/embeddings`` (float or base64),
``/v1/responses`` (JSON, or ``response.created`` … ``response.completed`` events) and
Anthropic's ``/v1/messages`` (JSON, or ``message_start`` … ``message_stop`` events).

Every answer is the same short reply, `REPLY`, so tests can compare exact text. A request
for the model `OVERLOADED_MODEL` gets a ``429`` with the provider's own rate-limit headers
(`OVERLOADED_HEADERS`), as a real provider answers when it is overloaded.
"""

from __future__ import annotations

import base64
import json
import secrets
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

REPLY = "Hello from the mock upstream."
# The reply as a model streams it: one delta per token-ish piece.
REPLY_PIECES = ("Hello", " from", " the", " mock", " upstream", ".")

OVERLOADED_MODEL = "overloaded-model"
"""A model name that makes the upstream answer ``429`` (see `OVERLOADED_HEADERS`)."""

OVERLOADED_HEADERS = {
    "retry-after": "7",
    "x-ratelimit-limit-requests": "500",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "7s",
}
"""The headers of the upstream's ``429``; a gateway should pass them on to its client."""

EMBEDDING_DIMENSIONS = 8

SSE_MEDIA_TYPE = "text/event-stream"


def estimate_tokens(body: dict[str, Any]) -> int:
    """Estimate the prompt tokens of a request body: about four characters per token.

    Counts the text in ``messages``, ``input`` and ``system``, in every shape the
    OpenAI and Anthropic APIs accept (a string, content parts, input items). Both the
    mock upstream (for ``usage``) and the gateway (for its token reservation) use it.
    """
    chars = sum(
        len(text) for key in ("messages", "input", "system") for text in _texts(body.get(key))
    )
    return max(1, chars // 4)


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in ("role", "type", "id", "status"):
                yield from _texts(item)


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event is not None else ""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"{head}data: {payload}\n\n".encode()


class _Streamer:
    """Yields SSE events, pausing ``delay`` seconds between them as a model would."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def events(self, events: list[bytes]) -> AsyncIterator[bytes]:
        for index, event in enumerate(events):
            if index and self.delay:
                await anyio.sleep(self.delay)
            yield event


def _overloaded(anthropic: bool) -> Response:
    message = f"Rate limit reached for {OVERLOADED_MODEL}: please retry after 7s."
    body: dict[str, Any]
    if anthropic:
        body = {"type": "error", "error": {"type": "rate_limit_error", "message": message}}
    else:
        body = {
            "error": {
                "message": message,
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
    return JSONResponse(body, status_code=429, headers=OVERLOADED_HEADERS)


def _chat_usage(prompt: int) -> dict[str, Any]:
    completion = len(REPLY_PIECES)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_events(model: str, prompt: int, include_usage: bool) -> list[bytes]:
    base = {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": None,
    }
    # OpenAI sends "usage": null on every chunk once usage was asked for.
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**base, "choices": [choice], **extra})

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": piece}) for piece in REPLY_PIECES]
    events.append(chunk({}, "stop"))
    if include_usage:
        events.append(_sse({**base, "choices": [], "usage": _chat_usage(prompt)}))
    events.append(_sse("[DONE]"))
    return events


def _anthropic_message(model: str, prompt: int, *, streaming: bool) -> dict[str, Any]:
    return {
        "id": f"msg_{secrets.token_hex(12)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [] if streaming else [{"type": "text", "text": REPLY}],
        "stop_reason": None if streaming else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": prompt,
            "output_tokens": 1 if streaming else len(REPLY_PIECES),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        },
    }


def _message_events(model: str, prompt: int) -> list[bytes]:
    start = {"type": "message_start", "message": _anthropic_message(model, prompt, streaming=True)}
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    events = [
        _sse(start, "message_start"),
        _sse(block, "content_block_start"),
        _sse({"type": "ping"}, "ping"),
    ]
    for piece in REPLY_PIECES:
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": piece},
        }
        events.append(_sse(delta, "content_block_delta"))
    message_delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": len(REPLY_PIECES)},
    }
    events += [
        _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _sse(message_delta, "message_delta"),
        _sse({"type": "message_stop"}, "message_stop"),
    ]
    return events


def _response_object(
    response_id: str, item_id: str, model: str, prompt: int, *, status: str
) -> dict[str, Any]:
    done = status == "completed"
    message = {
        "id": item_id,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": REPLY, "annotations": [], "logprobs": []}],
    }
    completion = len(REPLY_PIECES)
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": [message] if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage if done else None,
        "user": None,
        "metadata": {},
    }


def _response_events(model: str, prompt: int) -> list[bytes]:
    response_id = f"resp_{secrets.token_hex(12)}"
    item_id = f"msg_{secrets.token_hex(12)}"
    location = {"item_id": item_id, "output_index": 0, "content_index": 0}
    empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    full_part = {**empty_part, "text": REPLY}
    item = {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant"}
    payloads: list[dict[str, Any]] = [
        {
            "type": "response.created",
            "response": _response_object(response_id, item_id, model, prompt, status="in_progress"),
        },
        {
            "type": "response.in_progress",
            "response": _response_object(response_id, item_id, model, prompt, status="in_progress"),
        },
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "content": []}},
        {"type": "response.content_part.added", **location, "part": empty_part},
    ]
    payloads += [
        {"type": "response.output_text.delta", **location, "delta": piece, "logprobs": []}
        for piece in REPLY_PIECES
    ]
    payloads += [
        {"type": "response.output_text.done", **location, "text": REPLY, "logprobs": []},
        {"type": "response.content_part.done", **location, "part": full_part},
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": {**item, "status": "completed", "content": [full_part]},
        },
        {
            "type": "response.completed",
            "response": _response_object(response_id, item_id, model, prompt, status="completed"),
        },
    ]
    return [
        _sse({**payload, "sequence_number": number}, payload["type"])
        for number, payload in enumerate(payloads)
    ]


def _embedding(index: int, text: str, encoding_format: str) -> dict[str, Any]:
    # Deterministic vectors: the same text always embeds the same way.
    seed = sum(text.encode()) + index
    vector = [round(((seed * (i + 7)) % 97) / 97 - 0.5, 4) for i in range(EMBEDDING_DIMENSIONS)]
    embedding: list[float] | str = vector
    if encoding_format == "base64":
        embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return {"object": "embedding", "index": index, "embedding": embedding}


def _endpoint(
    answer: Callable[[dict[str, Any], str, int], Response], *, anthropic: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint that reads the request's JSON body and answers with ``answer(body,
    model, prompt tokens)``, or with the provider's ``429`` for `OVERLOADED_MODEL`."""

    async def endpoint(request: Request) -> Response:
        body = await request.json()
        model = body["model"]
        if model == OVERLOADED_MODEL:
            return _overloaded(anthropic)
        return answer(body, model, estimate_tokens(body))

    return endpoint


def create_upstream_app(*, chunk_delay: float = 0.0) -> Starlette:
    """Return the mock provider as an ASGI app.

    Args:
        chunk_delay: Seconds between two streamed events, to make streams overlap in
            time as real model output does.
    """
    streamer = _Streamer(chunk_delay)

    def stream(events: list[bytes]) -> StreamingResponse:
        return StreamingResponse(streamer.events(events), media_type=SSE_MEDIA_TYPE)

    def chat_completions(body: dict[str, Any], model: str, prompt: int) -> Response:
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return stream(_chat_events(model, prompt, include_usage))
        message: dict[str, Any] = {
            "role": "assistant",
            "content": REPLY,
            "refusal": None,
            "annotations": [],
        }
        return JSONResponse(
            {
                "id": f"chatcmpl-{secrets.token_hex(12)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
                ],
                "usage": _chat_usage(prompt),
                "service_tier": "default",
                "system_fingerprint": None,
            }
        )

    def embeddings(body: dict[str, Any], model: str, prompt: int) -> Response:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        encoding_format = body.get("encoding_format") or "float"
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    _embedding(index, str(text), encoding_format)
                    for index, text in enumerate(inputs)
                ],
                "model": model,
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
            }
        )

    def responses(body: dict[str, Any], model: str, prompt: int) -> Response:
        if body.get("stream"):
            return stream(_response_events(model, prompt))
        response_id = f"resp_{secrets.token_hex(12)}"
        item_id = f"msg_{secrets.token_hex(12)}"
        return JSONResponse(
            _response_object(response_id, item_id, model, prompt, status="completed")
        )

    def messages(body: dict[str, Any], model: str, prompt: int) -> Response:
        if body.get("stream"):
            return stream(_message_events(model, prompt))
        return JSONResponse(_anthropic_message(model, prompt, streaming=False))

    return Starlette(
        routes=[
            Route("/v1/chat/completions", _endpoint(chat_completions), methods=["POST"]),
            Route("/v1/embeddings", _endpoint(embeddings), methods=["POST"]),
            Route("/v1/responses", _endpoint(responses), methods=["POST"]),
            Route("/v1/messages", _endpoint(messages, anthropic=True), methods=["POST"]),
        ]
    )
