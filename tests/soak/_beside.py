"""The soak server's endpoints for the ``outer`` and ``shutdown`` scenarios.

``outer``: responses whose ASGI call is cancelled from outside (as a timeout middleware, a
server's nursery or a gateway abandoning the request do), mid-stream or while the resolver
runs. `OuterCancel` wraps the app; every side callable of the response (a
``listen_for_disconnect`` override, the SSE ``data_sender_callable`` and close handler, and
every ``send``, the pings' included) counts itself alive until its ``finally`` has run, an
``await`` in a shielded scope included. When the wrapped call returns, what is still alive
is added to ``alive_after_return``: it must stay 0.

``shutdown``: ``end_on_shutdown`` streams of three kinds that live for a given time (or
forever), for clients that open and leave them while the runner gives the shutdown notice
(``/_soak/begin-shutdown`` or ``/_soak/exit-flag``, see `tests.soak._app.Tracker`).
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar

import anyio
import anyio.lowlevel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from header_first_stream import (
    HeaderFirstEventSourceResponse,
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
)

from ._counters import COUNTERS

OUTER_CHUNKS = 20
"""Body messages of an ``outer`` response, 2 ms apart."""


class Beside:
    """One ``outer`` request: its outer scope, and what of it still runs.

    ``point``: where it is cut: ``none``, from outside ``mid-stream`` (once ``after`` body
    messages went out) or while ``resolving``, or ``client-leaves`` (by the runner).
    """

    def __init__(self, point: str, after: int) -> None:
        self.point = point
        self.after = after  # mid-stream: cancelled once this many body messages went out
        self.scope = anyio.CancelScope()
        self.alive = 0  # side callables whose `finally` has not run to its end
        self.sending = 0  # sends in flight
        self.bodies = 0
        self.done = False


BESIDE: ContextVar[Beside] = ContextVar("soak.beside")


async def side(name: str, wait: Callable[[], Awaitable[object]]) -> None:
    """Run ``wait()`` as a side callable of the request, counted alive until its clean-up
    (which awaits, shielded, as users' clean-up does) has run."""
    beside = BESIDE.get()
    beside.alive += 1
    COUNTERS.add(f"side_started:{name}")
    try:
        await wait()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.lowlevel.checkpoint()
        beside.alive -= 1
        COUNTERS.add(f"side_ended:{name}")


class OuterCancel:
    """Cancels the wrapped app from outside, at the request's point; counts what outlives it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # pragma: no cover - no lifespan here
            return
        point, after = scope["path"].rstrip("/").rsplit("/", 2)[-2:]
        beside = Beside(point, int(after))
        token = BESIDE.set(beside)

        async def counting_send(message: Message) -> None:
            beside.sending += 1
            try:
                await send(message)
            finally:
                beside.sending -= 1
            if message["type"] == "http.response.body":
                beside.bodies += 1
                if beside.point == "mid-stream" and beside.bodies == beside.after:
                    beside.scope.cancel()

        try:
            with beside.scope:
                await self.app(scope, receive, counting_send)
        finally:
            beside.done = True
            COUNTERS.add("outer_returned")
            if beside.scope.cancelled_caught:
                COUNTERS.add(f"outer_cancelled:{point}")
            COUNTERS.add("alive_after_return", beside.alive + beside.sending)
            BESIDE.reset(token)


async def outer_body(family: str) -> AsyncIterator[bytes]:
    beside = BESIDE.get()
    COUNTERS.add(f"outer:{family}:gen_entered")
    try:
        for _ in range(OUTER_CHUNKS):
            await anyio.sleep(0.002)
            yield b"data: x\r\n\r\n"
    finally:
        COUNTERS.add(f"outer:{family}:gen_closed_" + ("late" if beside.done else "in_request"))


async def outer_resolver() -> dict[str, str]:
    beside = BESIDE.get()
    if beside.point == "resolving":
        beside.scope.cancel()  # as a timeout firing while the resolver waits
    await anyio.sleep(random.uniform(0.001, 0.005))
    return {"x-soak-resolved": "1"}


class OuterStream(HeaderFirstStreamingResponse):
    async def listen_for_disconnect(self, receive: Receive) -> None:
        await side("listener", lambda: super(OuterStream, self).listen_for_disconnect(receive))


class OuterEvents(HeaderFirstEventSourceResponse):
    async def listen_for_disconnect(self, receive: Receive) -> None:
        await side("listener", lambda: super(OuterEvents, self).listen_for_disconnect(receive))


async def _close_handler(message: Message) -> None:
    await side("close handler", lambda: anyio.sleep(0.005))


async def _data_sender() -> None:
    await side("sender", anyio.sleep_forever)


async def outer(request: Request) -> Response:
    family = request.path_params["family"]
    if family == "sse":
        return OuterEvents(
            outer_body(family),
            ping=0.005,
            data_sender_callable=_data_sender,
            client_close_handler_callable=_close_handler,
            header_resolver=outer_resolver,
        )
    # end_on_shutdown: the listener lasts the whole response on every spec version.
    return OuterStream(
        outer_body(family),
        media_type="text/plain",
        header_resolver=outer_resolver,
        end_on_shutdown=True,
    )


# --- shutdown churn ----------------------------------------------------------------------


CHURN_TICK = 0.01
"""Seconds between two chunks of a churn stream, on a grid shared by every stream."""

CHURN_END_TICK = 0.1
"""Churn streams end on a coarser grid of their own."""


async def churn_body(lifetime_ms: int, item: bytes | str) -> AsyncIterator[bytes | str]:
    """A chunk at every tick of the shared grid, for about ``lifetime_ms`` (negative:
    forever), ending on a `CHURN_END_TICK`.

    On the grids, streams wake, and end, in the same event-loop pass: the interleavings in
    which the stream that polls for the server's exit ends beside the one it hands over to.
    """
    COUNTERS.add("churn_entered")
    now = anyio.current_time()
    end = now + lifetime_ms / 1000
    deadline = math.inf if lifetime_ms < 0 else math.ceil(end / CHURN_END_TICK) * CHURN_END_TICK
    try:
        while now < deadline:
            yield item
            now = anyio.current_time()
            await anyio.sleep((math.floor(now / CHURN_TICK) + 1) * CHURN_TICK - now)
            now = anyio.current_time()
    finally:
        COUNTERS.add("churn_closed")


async def churn(request: Request) -> Response:
    given = request.path_params["lifetime"]
    lifetime = -1 if given == "forever" else int(given)
    if request.path_params["kind"] == "sse":
        return HeaderFirstEventSourceResponse(churn_body(lifetime, "tick"), ping=0.05)
    return HeaderFirstStreamingResponse(
        churn_body(lifetime, b"tick\n"), media_type="text/plain", end_on_shutdown=True
    )


def routes() -> list[BaseRoute]:
    """The routes of both scenarios, mounted at the soak app's root."""
    outer_routes = [Route("/{family}/{point}/{after:int}", outer)]
    churn_routes = [Route("/{kind}/{lifetime}", churn)]  # milliseconds, or "forever"
    return [
        Mount("/outer", OuterCancel(Starlette(routes=outer_routes))),
        Mount("/mw-outer", OuterCancel(HeaderFirstMiddleware(Starlette(routes=outer_routes)))),
        Mount("/churn", Starlette(routes=churn_routes)),
        Mount("/mw-churn", HeaderFirstMiddleware(Starlette(routes=churn_routes))),
    ]
