"""`HeaderFirstMiddleware` around Starlette's response classes (ASGI level) and around
Starlette and FastAPI apps (in-process clients: content only).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi import Request as FastAPIRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from header_first_stream import HeaderFirstMiddleware, late_headers

from ._asgi import Recorder, call, header_values, http_scope

# --- Starlette response classes, ASGI level -------------------------------------------------


def _starlette_app(endpoint: Any) -> Starlette:
    app = Starlette(routes=[Route("/", endpoint, methods=["GET", "HEAD"])])
    app.add_middleware(HeaderFirstMiddleware)
    return app


def _add_id(request: Request) -> None:
    late_headers(request).add("x-request-id", "req-1")
    late_headers().add("x-deep", "yes")


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.txt"
    path.write_bytes(b"file contents")
    return path


@pytest.mark.anyio
@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
@pytest.mark.parametrize(
    ("shape", "expected_body"),
    [
        ("json", b'{"ok":true}'),
        ("plain-text", b"plain"),
        ("streaming", b"ab"),
        ("file", b"file contents"),
        ("file-pathsend", b""),
    ],
)
async def test_every_starlette_response_class_carries_the_late_headers(
    shape: str, expected_body: bytes, spec_version: str, text_file: Path
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"a"
        late_headers().add("x-too-late", "1")
        yield b"b"

    async def endpoint(request: Request) -> Response:
        _add_id(request)
        if shape == "json":
            return JSONResponse({"ok": True})
        if shape == "plain-text":
            return PlainTextResponse("plain")
        if shape == "streaming":
            return StreamingResponse(chunks(), media_type="text/plain")
        return FileResponse(text_file)

    extensions: dict[str, Any] = {"http.response.pathsend": {}} if shape == "file-pathsend" else {}
    scope = http_scope(spec_version=spec_version, extensions=extensions)
    recorder = await call(_starlette_app(endpoint), scope)
    assert recorder.status == 200
    assert header_values(recorder, b"x-request-id") == [b"req-1"]
    assert header_values(recorder, b"x-deep") == [b"yes"]
    assert header_values(recorder, b"x-too-late") == []
    assert recorder.body == expected_body
    if shape == "file-pathsend":
        assert recorder.messages[-1][1] == {
            "type": "http.response.pathsend",
            "path": str(text_file),
        }


@pytest.mark.anyio
async def test_a_head_request_carries_the_late_headers() -> None:
    async def endpoint(request: Request) -> Response:
        _add_id(request)
        return JSONResponse({"ok": True})

    recorder = await call(_starlette_app(endpoint), http_scope(method="HEAD"))
    assert header_values(recorder, b"x-request-id") == [b"req-1"]
    assert header_values(recorder, b"content-length") == [b"11"]
    assert recorder.body == b'{"ok":true}'  # as Starlette sends it; the server drops it


# --- in-process content: sync endpoints in the thread pool, FastAPI -------------------------


def _sync_helper_deep_in_a_thread() -> None:
    late_headers().add("x-thread", "worker")


def sync_endpoint(request: Request) -> Response:
    _sync_helper_deep_in_a_thread()
    late_headers(request).add("x-request", "1")

    def sync_chunks() -> Iterator[bytes]:
        yield b"sync"

    return StreamingResponse(sync_chunks())


@pytest.mark.anyio
async def test_late_headers_without_a_request_work_in_sync_endpoints_in_the_thread_pool() -> None:
    app = Starlette(routes=[Route("/sync", sync_endpoint)])
    app.add_middleware(HeaderFirstMiddleware)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/sync")
    assert response.status_code == 200
    assert response.headers["x-thread"] == "worker"
    assert response.headers["x-request"] == "1"
    assert response.content == b"sync"


def _fastapi_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(HeaderFirstMiddleware)

    async def rate_limit(request: FastAPIRequest) -> None:
        late_headers(request).update(
            {"x-ratelimit-remaining-requests": 41, "x-ratelimit-limit-requests": 42}
        )

    def record_cost(tokens: int) -> None:
        late_headers().add("x-cost-tokens", tokens)

    @app.post("/v1/messages", dependencies=[Depends(rate_limit)])
    async def messages() -> dict[str, str]:
        record_cost(12)
        return {"type": "message"}

    @app.post("/v1/sync", dependencies=[Depends(rate_limit)])
    def sync_messages() -> dict[str, str]:
        record_cost(7)
        return {"type": "message"}

    @app.post("/v1/stream", dependencies=[Depends(rate_limit)])
    async def stream() -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            record_cost(3)  # before the first chunk: the head is still held
            yield "data: 1\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "cost", "content"),
    [
        ("/v1/messages", "12", b'{"type":"message"}'),
        ("/v1/sync", "7", b'{"type":"message"}'),
        ("/v1/stream", "3", b"data: 1\n\n"),
    ],
)
async def test_a_fastapi_dependency_and_a_deep_helper_both_reach_the_client(
    path: str, cost: str, content: bytes
) -> None:
    transport = httpx.ASGITransport(app=_fastapi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post(path, json={})
    assert response.status_code == 200
    assert response.headers["x-ratelimit-remaining-requests"] == "41"
    assert response.headers["x-ratelimit-limit-requests"] == "42"
    assert response.headers["x-cost-tokens"] == cost
    assert response.content == content


@pytest.mark.anyio
async def test_sse_starlettes_event_source_response_carries_the_late_headers() -> None:
    from sse_starlette import EventSourceResponse  # imported on use: it patches uvicorn

    async def events() -> AsyncIterator[dict[str, str]]:
        late_headers().add("x-in-generator", "1")  # the start is already held
        yield {"data": "hello"}

    async def endpoint(request: Request) -> Response:
        _add_id(request)
        return EventSourceResponse(events())

    with anyio.fail_after(5):
        recorder = await call(_starlette_app(endpoint), http_scope())
    assert recorder.status == 200
    assert header_values(recorder, b"x-request-id") == [b"req-1"]
    assert header_values(recorder, b"x-in-generator") == [b"1"]
    assert recorder.body == b"data: hello\r\n\r\n"


# --- an app's exception handler, and a stream that fails before its first chunk ----------


def _failing_stream_app(handled: list[str]) -> FastAPI:
    app = FastAPI()

    @app.exception_handler(Exception)
    async def on_error(request: FastAPIRequest, exc: Exception) -> JSONResponse:
        handled.append(str(exc))
        return JSONResponse({"error": str(exc)}, status_code=503)

    async def body() -> AsyncIterator[bytes]:
        raise RuntimeError("upstream down")
        yield b""  # pragma: no cover - an async generator that fails at once

    @app.get("/")
    async def stream() -> StreamingResponse:
        return StreamingResponse(body())

    return app


@pytest.mark.anyio
async def test_added_inside_server_error_middleware_the_handlers_answer_is_sent() -> None:
    # The held head never reached ServerErrorMiddleware, which calls the app's handler for
    # Exception, sends its answer and raises on, as for any unhandled exception.
    handled: list[str] = []
    app = _failing_stream_app(handled)
    app.add_middleware(HeaderFirstMiddleware)
    recorder = Recorder()
    with pytest.raises(RuntimeError, match="upstream down"):
        await call(app, send=recorder)
    assert handled == ["upstream down"]
    assert recorder.status == 503
    assert header_values(recorder, b"content-type") == [b"application/json"]
    assert recorder.body == b'{"error":"upstream down"}'


@pytest.mark.anyio
async def test_wrapped_outside_server_error_middleware_the_handlers_answer_is_dropped() -> None:
    # ServerErrorMiddleware saw the app's head go out (into the held head): it still calls
    # the handler, but does not send its answer, and raises on; the middleware sends
    # nothing, and the server answers its own 500 (docs/differences.md).
    handled: list[str] = []
    recorder = Recorder()
    with pytest.raises(RuntimeError, match="upstream down"):
        await call(HeaderFirstMiddleware(_failing_stream_app(handled)), send=recorder)
    assert handled == ["upstream down"]
    assert recorder.messages == []
