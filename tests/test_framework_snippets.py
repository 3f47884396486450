"""The "Using it with …" programs of docs/frameworks.md, run as they are on real servers.

Each snippet is taken from the Markdown, written to a file and served by a real server in
a child process of its own (uvicorn on asyncio for every framework; hypercorn's trio
worker for those that run on trio: FastAPI, Starlette, Litestar and Falcon. Django and
Quart run on asyncio only). Every route is asked once by httpx, and its status, its late
headers and its body are checked exactly.

The two "FastAPI's own streaming" programs (`fastapi.sse` and JSON-lines generator
endpoints) run the same way: behind the middleware, the header added inside the generator
is in the head; with only the class substituted it is not, and the server logs one WARNING
per request that names it.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ._programs import ROOT, python_snippets, serve_program

DOC = ROOT / "docs" / "frameworks.md"
SNIPPETS = python_snippets(DOC, "Using it with ")

WAIT = 30.0  # a child process imports its framework first: Django and Litestar take a while

SSE = b"data: hello\n\ndata: world\n\n"
STREAM_LATE = {"x-ratelimit-remaining-requests": "41", "x-ratelimit-remaining-tokens": "99000"}
JSON_LATE = {"x-ratelimit-remaining-requests": "41"}

# Per framework: path -> (content-type, body, late headers).
Expected = dict[str, tuple[str, bytes, dict[str, str]]]


def routes(
    stream_type: str = "text/event-stream",
    json: bytes = b'{"ok":true}',
    stream_late: dict[str, str] = STREAM_LATE,
) -> Expected:
    """A snippet's ``/stream`` and ``/json``: their content types and bodies differ by
    framework (a charset or not; JSON with a space, or a newline)."""
    return {
        "/stream": (stream_type, SSE, stream_late),
        "/json": ("application/json", json, JSON_LATE),
    }


SSE_UTF8 = "text/event-stream; charset=utf-8"
SPACED_JSON = b'{"ok": true}'
EXPECTED: dict[str, Expected] = {
    "FastAPI": routes(SSE_UTF8, stream_late={**STREAM_LATE, "x-request-cost": "0.002"}),
    "Starlette": routes(SSE_UTF8),
    "Litestar": routes(SSE_UTF8),
    "Django": {
        **routes(json=SPACED_JSON),
        "/sync-stream": ("text/event-stream", SSE, STREAM_LATE),
    },
    "Quart": routes(json=b'{"ok":true}\n'),
    "Falcon": routes(json=SPACED_JSON),
}

ON_TRIO = ["FastAPI", "Starlette", "Litestar", "Falcon"]

CASES = [
    *[pytest.param(name, "uvicorn", id=f"{name}-uvicorn") for name in EXPECTED],
    *[pytest.param(name, "hypercorn-trio", id=f"{name}-hypercorn-trio") for name in ON_TRIO],
]


def test_every_framework_has_exactly_one_snippet() -> None:
    assert sorted(SNIPPETS) == sorted(EXPECTED)


@pytest.mark.parametrize(("framework", "server"), CASES)
def test_the_snippet_sends_its_late_headers_on_every_route(
    framework: str, server: str, tmp_path: Path
) -> None:
    module = f"snippet_{framework.lower()}"
    with (
        serve_program(SNIPPETS[framework], tmp_path, module, server) as url,
        httpx.Client(timeout=WAIT) as client,
    ):
        responses = {path: client.get(url + path) for path in EXPECTED[framework]}
    for path, (content_type, body, late) in EXPECTED[framework].items():
        response = responses[path]
        assert response.status_code == 200, (path, response.text)
        assert response.headers.get_list("content-type") == [content_type], path
        for name, value in late.items():
            assert response.headers.get_list(name) == [value], (path, name)
        assert response.content == body, path


STREAMING = python_snippets(DOC, "FastAPI's own streaming, ")
# path -> (content-type, body, headers other than the late ones)
STREAMING_ROUTES = {
    "/events": (
        SSE_UTF8,
        b'data: {"token":"hello"}\n\ndata: {"token":"world"}\n\n',
        {"cache-control": "no-cache", "x-accel-buffering": "no"},
    ),
    "/lines": ("application/jsonl", b'{"token":"hello"}\n{"token":"world"}\n', {}),
}
SERVERS = ["uvicorn", "hypercorn-trio"]


def test_fastapi_streaming_has_its_two_snippets() -> None:
    assert sorted(STREAMING) == ["behind the middleware", "the class substituted"]


def serve_streaming(
    snippet: str, server: str, tmp_path: Path
) -> tuple[dict[str, httpx.Response], str]:
    """Each of the snippet's routes asked once, and the server's output after it stopped."""
    module = "snippet_" + snippet.replace(" ", "_")
    with (
        serve_program(STREAMING[snippet], tmp_path, module, server) as url,
        httpx.Client(timeout=WAIT) as client,
    ):
        responses = {path: client.get(url + path) for path in STREAMING_ROUTES}
    return responses, (tmp_path / f"{module}.log").read_text(errors="replace")


def check_streaming(responses: dict[str, httpx.Response], late: dict[str, list[str]]) -> None:
    for path, (content_type, body, headers) in STREAMING_ROUTES.items():
        response = responses[path]
        assert response.status_code == 200, (path, response.text)
        assert response.headers.get_list("content-type") == [content_type], path
        for name, value in headers.items():
            assert response.headers.get_list(name) == [value], (path, name)
        for name, values in late.items():
            assert response.headers.get_list(name) == values, (path, name)
        assert response.content == body, path


def too_late(path: str) -> str:
    return (
        f"late headers ['x-ratelimit-remaining-tokens'] for {path} were added after the "
        "response head was sent and are not sent"
    )


@pytest.mark.parametrize("server", SERVERS)
def test_fastapi_streaming_behind_the_middleware_sends_the_generators_header(
    server: str, tmp_path: Path
) -> None:
    responses, log = serve_streaming("behind the middleware", server, tmp_path)
    check_streaming(
        responses,
        {"x-ratelimit-remaining-requests": ["41"], "x-ratelimit-remaining-tokens": ["99000"]},
    )
    assert "late headers" not in log


@pytest.mark.parametrize("server", SERVERS)
def test_fastapi_streaming_with_the_class_substituted_refuses_the_generators_header(
    server: str, tmp_path: Path
) -> None:
    responses, log = serve_streaming("the class substituted", server, tmp_path)
    check_streaming(
        responses,
        {"x-ratelimit-remaining-requests": ["41"], "x-ratelimit-remaining-tokens": []},
    )
    for path in STREAMING_ROUTES:
        assert log.count(too_late(path)) == 1, log
