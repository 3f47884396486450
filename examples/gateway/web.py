"""The chat page of ``scripts/demo --serve``, served from its own origin.

The page (``web/index.html``: plain HTML and JavaScript, no build step, nothing from a
CDN) streams a completion from the gateway with ``fetch()`` and shows the
``x-ratelimit-api_key-*`` headers of each stream. The gateway is on another port, so
every call is a real cross-origin request: the browser lets the page read those headers
only because the gateway lists them in ``Access-Control-Expose-Headers``.
"""

from __future__ import annotations

from importlib.resources import files

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

INDEX = files(__package__).joinpath("web", "index.html")


def create_page_app(gateway_url: str, key: str) -> Starlette:
    """The page, and ``config.json`` telling it where the gateway is and which key to use."""
    html = INDEX.read_text(encoding="utf-8")

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(html)

    async def config(request: Request) -> JSONResponse:
        return JSONResponse({"gateway": gateway_url, "key": key})

    return Starlette(routes=[Route("/", index), Route("/config.json", config)])
