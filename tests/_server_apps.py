"""Tier-3 apps: the small Starlette apps, bodies and resolvers the real-server tests serve
(`tests/_servers.py` starts the servers), and the checks of what the app sent and logged."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._wire import LATE_HEADERS


def _app(*routes: Route) -> Starlette:
    return Starlette(routes=list(routes))


def _route(path: str, endpoint: object) -> Route:
    return Route(path, endpoint, methods=["GET", "HEAD"])  # type: ignore[arg-type]


class EndlessBody:
    """A body iterator that records every pull and its closing; it never ends."""

    def __init__(self) -> None:
        self.pulls = 0
        self.closed = threading.Event()

    def __aiter__(self) -> EndlessBody:
        return self

    async def __anext__(self) -> bytes:
        self.pulls += 1
        number = self.pulls - 1
        await anyio.sleep(0.01)
        return f"chunk {number}\n".encode()

    async def aclose(self) -> None:
        self.closed.set()


async def _late_after(seconds: float) -> dict[str, int]:
    await anyio.sleep(seconds)
    return LATE_HEADERS


def _recording(app: ASGIApp, sent: list[str]) -> ASGIApp:
    """Wrap ``app`` to record the type of every HTTP message it sends."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def recording_send(message: Message) -> None:
            sent.append(message["type"])
            await send(message)

        await app(scope, receive, recording_send)

    return wrapped


def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


class EndlessStream:
    """An endless body of numbered chunks, of one kind, that records how it ended.

    Kinds: an async generator and a sync generator (their ``finally`` sets `finished`),
    and an async iterator object, which only its ``aclose()`` can mark finished.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.finished = threading.Event()
        self.exits: list[str] = []

    def body(self) -> object:
        if self.kind == "async generator":
            return self._async_generator()
        if self.kind == "sync generator":
            return self._sync_generator()
        iterator = EndlessBody()
        iterator.closed = self.finished
        return iterator

    async def _async_generator(self) -> AsyncIterator[bytes]:
        i = 0
        try:
            while True:
                yield f"chunk {i}\n".encode()
                i += 1
                await anyio.sleep(0.01)
        except BaseException as exc:
            self.exits.append(type(exc).__name__)
            raise
        finally:
            self.finished.set()

    def _sync_generator(self) -> Iterator[bytes]:
        i = 0
        try:
            while True:
                yield f"chunk {i}\n".encode()
                i += 1
                time.sleep(0.01)
        except BaseException as exc:
            self.exits.append(type(exc).__name__)
            raise
        finally:
            self.finished.set()
