from __future__ import annotations

import httpx
import pytest

from header_first_stream import HeaderFirstStreamingResponse
from starlette.types import Receive, Scope, Send

from ._servers import SERVERS, serve


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        yield b"a"
        yield b"b"

    async def resolver() -> dict[str, int]:
        return {"x-late": 1}

    await HeaderFirstStreamingResponse(chunks(), header_resolver=resolver)(scope, receive, send)


@pytest.mark.parametrize("server", SERVERS)
def test_smoke(server: str) -> None:
    with serve(_app, server) as url, httpx.Client() as client:
        response = client.get(url + "/")
    assert response.headers["x-late"] == "1"
    assert response.content == b"ab"
