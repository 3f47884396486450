"""The soak server's app: every response shape the library sends, instrumented.

Runs in the server process (`tests.soak._server`). Counters (`tests.soak._counters`) are
read by the runner through ``GET /_soak/counters``: what the client cannot see (a
generator's ``finally``, a resolver's cancellation, a head sent after one) is counted where
it happens. The endpoints of the ``outer`` and ``shutdown`` scenarios are in
`tests.soak._beside`.

The `Tracker` around the whole app marks each request's start and end, so that a body
generator can tell whether it was closed inside its request or later (by the garbage
collector), and counts every ``http.response.start`` sent after that request's resolver
was cancelled.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
from fastapi import Depends, FastAPI
from fastapi import Request as FastAPIRequest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from header_first_stream import (
    HeaderFirstEventSourceResponse,
    HeaderFirstMiddleware,
    HeaderFirstStreamingResponse,
    begin_shutdown,
    late_headers,
)

from . import _beside
from ._counters import COUNTERS
from ._hostile import ROWS

RESOLVER_TIMEOUT = 0.2
"""The resolver timeout of the fault endpoints; the hanging resolver sleeps far longer."""

CHUNK = b"x" * 1024
ENDLESS_CHUNK = b"e" * 16384


@dataclass
class Track:
    """One request, as the tracker sees it."""

    done: bool = False
    resolver_cancelled: bool = False


TRACK: ContextVar[Track] = ContextVar("soak.track")


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")  # pragma: no cover


class Tracker:
    """The outermost ASGI app: request bookkeeping and the ``/_soak`` control endpoints."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith("/_soak/"):
            await self.control(scope, receive, send)
            return
        track = Track()
        token = TRACK.set(track)
        COUNTERS.request_started()

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start" and track.resolver_cancelled:
                COUNTERS.add("heads_after_cancelled_resolver")
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except BaseException as exc:
            COUNTERS.add(f"app_raised:{type(exc).__name__}")
            raise
        finally:
            track.done = True
            COUNTERS.request_ended()
            TRACK.reset(token)

    async def control(self, scope: Scope, receive: Receive, send: Send) -> None:
        action = scope["path"].removeprefix("/_soak/")
        if action == "gc":
            gc.collect()
            # Finalizers of collected async generators run as tasks: let them run.
            await anyio.sleep(0.2)
            gc.collect()
        elif action == "reset":
            COUNTERS.reset()
        elif action == "begin-shutdown":  # the notice a server's shutdown hook gives
            begin_shutdown()
        elif action == "exit-flag":  # what sse-starlette's patched uvicorn exit handler sets
            from sse_starlette.sse import AppStatus

            AppStatus.should_exit = True
        response = JSONResponse({"counters": COUNTERS.snapshot(), "rss": rss_bytes()})
        await response(scope, receive, send)


# --- disconnect chaos ------------------------------------------------------------------


async def chaos_body(family: str, chunks: int) -> AsyncIterator[bytes]:
    track = TRACK.get()
    COUNTERS.add(f"{family}:gen_entered")
    try:
        for _ in range(chunks):
            await anyio.sleep(0.002)
            yield CHUNK
    finally:
        COUNTERS.add(f"{family}:gen_closed_" + ("late" if track.done else "in_request"))


async def _chaos_resolve(prefix: str) -> dict[str, str]:
    track = TRACK.get()
    COUNTERS.add(f"{prefix}_started")
    try:
        await anyio.sleep(random.uniform(0.005, 0.03))
    except anyio.get_cancelled_exc_class():
        track.resolver_cancelled = True
        COUNTERS.add(f"{prefix}_cancelled")
        raise
    COUNTERS.add(f"{prefix}_finished")
    return {"x-soak-resolved": "1"}


async def chaos_hfs_resolver() -> dict[str, str]:
    return await _chaos_resolve("resolver")


async def chaos_mw_resolver(scope: Scope) -> dict[str, str]:
    return await _chaos_resolve("mw_resolver")


async def chaos_hfs(request: Request) -> Response:
    family = request.path_params["family"]
    return HeaderFirstStreamingResponse(
        chaos_body(family, request.path_params["chunks"]),
        media_type="text/plain",
        header_resolver=chaos_hfs_resolver,
    )


async def chaos_starlette(request: Request) -> Response:
    family = request.path_params["family"]
    return StreamingResponse(
        chaos_body(family, request.path_params["chunks"]), media_type="text/plain"
    )


# --- isolation ---------------------------------------------------------------------------


def isolation_app() -> FastAPI:
    async def caller(request: FastAPIRequest, id: str) -> None:
        await anyio.sleep(random.uniform(0, 0.005))
        late_headers(request).add("x-dep", id)

    def sync_caller(request: FastAPIRequest, id: str) -> None:
        time.sleep(random.uniform(0, 0.002))
        late_headers(request).add("x-dep", id)

    def deep(id: str) -> None:
        late_headers().add("x-request-id", id)

    app = FastAPI()

    @app.get("/async/{id}", dependencies=[Depends(caller)])
    async def async_endpoint(id: str) -> dict[str, str]:
        async with anyio.create_task_group() as tasks:
            # A child task inherits the request's context, and so its store.
            async def child() -> None:
                await anyio.sleep(random.uniform(0, 0.005))
                late_headers().add("x-child", id)

            tasks.start_soon(child)
            deep(id)
        return {"id": id}

    @app.get("/sync/{id}", dependencies=[Depends(sync_caller)])
    def sync_endpoint(id: str) -> dict[str, str]:
        time.sleep(random.uniform(0, 0.002))
        deep(id)
        late_headers().add("x-child", id)
        return {"id": id}

    @app.get("/stream/{id}", dependencies=[Depends(caller)])
    async def stream_endpoint(id: str) -> StreamingResponse:
        deep(id)

        async def body() -> AsyncIterator[str]:
            await anyio.sleep(random.uniform(0, 0.005))
            late_headers().add("x-child", id)  # the middleware still holds the head
            yield f'{{"id":"{id}"}}'

        return StreamingResponse(body(), media_type="application/json")

    @app.get("/hfs/{id}", dependencies=[Depends(caller)])
    async def hfs_endpoint(id: str) -> HeaderFirstStreamingResponse:
        deep(id)

        async def resolver() -> dict[str, str]:
            await anyio.sleep(random.uniform(0, 0.005))
            return {"x-child": id}

        return HeaderFirstStreamingResponse(
            iter([f'{{"id":"{id}"}}']), media_type="application/json", header_resolver=resolver
        )

    return app


async def isolation_resolver(scope: Scope) -> dict[str, str]:
    await anyio.sleep(random.uniform(0, 0.003))
    return {"x-resolver-saw": dict(late_headers().items())["x-request-id"]}


# --- hostile headers ---------------------------------------------------------------------


def _row(request: Request) -> list[tuple[str, str]]:
    return [ROWS[request.path_params["row"]].pair]


async def _events() -> AsyncIterator[str]:
    yield "hello"


async def hostile(request: Request) -> Response:
    row = _row(request)
    path = request.path_params["path"]

    async def resolver() -> list[tuple[str, str]]:
        return row

    if path == "resolver":
        return HeaderFirstStreamingResponse(iter(["ok"]), header_resolver=resolver)
    if path == "late":
        late_headers(request).update(row)  # raises for an invalid header: Starlette's 500
        return HeaderFirstStreamingResponse(iter(["ok"]))
    if path == "own":
        return HeaderFirstStreamingResponse(iter(["ok"]), headers=dict(row))
    if path == "early":

        async def failing() -> AsyncIterator[str]:
            raise RuntimeError("upstream failed")
            yield "never"  # pragma: no cover

        return HeaderFirstStreamingResponse(
            failing(),
            peek_first_chunk=True,
            early_error_handler=lambda exc: PlainTextResponse(
                "upstream error", 503, headers=dict(row)
            ),
        )
    if path == "sse":
        return HeaderFirstEventSourceResponse(_events(), header_resolver=resolver)
    raise ValueError(f"unknown hostile path {path!r}")


async def mw_hostile(request: Request) -> Response:
    if request.path_params["path"] == "mw-late":
        late_headers().update(_row(request))  # raises for an invalid header: 500
    return JSONResponse({"ok": True})


async def mw_hostile_resolver(scope: Scope) -> list[tuple[str, str]]:
    parts = scope["path"].rstrip("/").split("/")
    if parts[-2] != "mw-resolver":
        return []
    return [ROWS[int(parts[-1])].pair]


# --- resolver faults ---------------------------------------------------------------------


async def fault_result(kind: str) -> Any:
    if kind == "raises":
        raise RuntimeError("resolver failed")
    if kind == "hangs":
        await anyio.sleep(30)
    if kind == "cancelled":
        # A CancelledError from an awaited future another task cancelled: not a
        # cancellation of this request.
        raise anyio.get_cancelled_exc_class()()
    if kind == "many":
        return {f"x-soak-{index}": "v" for index in range(10_000)}
    return FAULT_RETURNS[kind]


FAULT_RETURNS: dict[str, Any] = {
    "none": None,
    "int": 5,
    "str": "x-soak: 1",
    "bytes": b"x-soak: 1",
    "list-of-ints": [1, 2],
    "triple": [("x-soak", "1", "2")],
    "bytes-value": {"x-soak": b"1"},
    "float-value": {"x-soak": 1.5},
    "bool-value": {"x-soak": True},
    "none-value": {"x-soak": None},
    "int-name": {1: "x"},
    "ok": {"x-soak-ok": "1"},
}

FAULT_KINDS = ["raises", "hangs", "cancelled", "many", *FAULT_RETURNS]


async def fault(request: Request) -> Response:
    kind = request.path_params["kind"]
    variant = request.path_params["variant"]

    async def resolver(*chunk: object) -> Any:
        return await fault_result(kind)

    if variant == "sse":
        return HeaderFirstEventSourceResponse(
            _events(), header_resolver=resolver, resolver_timeout=RESOLVER_TIMEOUT
        )
    return HeaderFirstStreamingResponse(
        iter(["body"] * 3),
        media_type="text/plain",
        header_resolver=resolver,
        resolver_timeout=RESOLVER_TIMEOUT,
        on_resolver_error="degrade" if variant == "hfs-degrade" else "error",
        peek_first_chunk=variant == "hfs-peek",
    )


async def mw_fault_resolver(scope: Scope) -> Any:
    return await fault_result(scope["path"].rstrip("/").rsplit("/", 1)[-1])


async def mw_fault(request: Request) -> Response:
    return StreamingResponse(iter(["body"] * 3), media_type="text/plain")


# --- endless stream ----------------------------------------------------------------------


async def endless(request: Request) -> Response:
    def body() -> Iterator[bytes]:
        # A sync generator, iterated in the thread pool: no await of its own, so only
        # the server's backpressure on send() can pace it.
        try:
            while True:
                COUNTERS.add("endless_produced", len(ENDLESS_CHUNK))
                yield ENDLESS_CHUNK
        finally:
            COUNTERS.add("endless_closed")

    async def abody() -> AsyncIterator[bytes]:
        try:
            while True:
                # A checkpoint, as an upstream read would be: an async generator that never
                # awaits spins forever once the client left (uvicorn's send() returns
                # without yielding after a disconnect; Starlette's class alike).
                await anyio.lowlevel.checkpoint()
                COUNTERS.add("endless_produced", len(ENDLESS_CHUNK))
                yield ENDLESS_CHUNK
        finally:
            COUNTERS.add("endless_closed")

    content = body() if request.path_params["kind"] == "sync" else abody()
    return HeaderFirstStreamingResponse(content, media_type="application/octet-stream")


async def small(request: Request) -> Response:
    return PlainTextResponse("small")


def app() -> ASGIApp:
    """The soak app, behind the tracker."""

    def with_middleware(routes: list[Route], **options: Any) -> Starlette:
        return Starlette(routes=routes, middleware=[Middleware(HeaderFirstMiddleware, **options)])

    chaos_routes = [
        Route("/hfs/{family}/{chunks:int}", chaos_hfs),
        Route("/starlette/{family}/{chunks:int}", chaos_starlette),
    ]
    iso = isolation_app()
    # Held until the first body, however loaded the soak makes the loop: the isolation
    # scenario pins whose headers a held head gets, not the hold's bound.
    iso.add_middleware(HeaderFirstMiddleware, resolver=isolation_resolver, head_hold_timeout=None)
    return Tracker(
        Starlette(
            routes=[
                Mount("/chaos", routes=chaos_routes),
                Mount("/mw-chaos", with_middleware(chaos_routes, resolver=chaos_mw_resolver)),
                Mount("/iso", iso),
                Route("/hostile/{path}/{row:int}", hostile),
                Mount(
                    "/mw-hostile",
                    with_middleware(
                        [Route("/{path}/{row:int}", mw_hostile)], resolver=mw_hostile_resolver
                    ),
                ),
                Route("/fault/{variant}/{kind}", fault),
                Mount(
                    "/mw-fault-error",
                    with_middleware(
                        [Route("/{kind}", mw_fault)],
                        resolver=mw_fault_resolver,
                        resolver_timeout=RESOLVER_TIMEOUT,
                    ),
                ),
                Mount(
                    "/mw-fault-degrade",
                    with_middleware(
                        [Route("/{kind}", mw_fault)],
                        resolver=mw_fault_resolver,
                        resolver_timeout=RESOLVER_TIMEOUT,
                        on_resolver_error="degrade",
                    ),
                ),
                Route("/endless/{kind}", endless),
                Route("/small", small),
                *_beside.routes(),
            ]
        )
    )
