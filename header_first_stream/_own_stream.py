"""The ``send`` a subclass's own `stream_response` gets, so that its head waits as ours does.

A subclass of `HeaderFirstStreamingResponse` may frame the body itself by overriding
`stream_response(send)` (Starlette's extension point). `HeadFirstSend` keeps invariants 1,
3 and 6 of `_response.py` for it: the first ``http.response.start`` it is given is held
back while the resolver runs, merged with the late headers and validated; if that ends in
an error response, the error is sent instead and `Answered` stops the override.
"""

from __future__ import annotations

from typing import Any, Protocol

import anyio
import anyio.lowlevel
from starlette.types import Message, Scope, Send

from ._late import take_late_headers
from ._prepared import Prepared, error_head
from ._resolve import ResolverFailed
from ._types import RawHeaders

__all__ = ["Answered", "HeadFirstSend"]


class Answered(Exception):
    """A subclass's `stream_response` is stopped: an error response was sent instead."""


class _Response(Protocol):
    """What `HeadFirstSend` uses of the response (`HeaderFirstStreamingResponse`)."""

    status_code: int
    _ending: bool

    @property
    def header_resolver(self) -> Any: ...

    async def _resolve(self, scope: Scope, args: tuple[Any, ...]) -> RawHeaders: ...

    def _merged_head(
        self, scope: Scope, status: int, own: RawHeaders, late: RawHeaders, resolved: RawHeaders
    ) -> Prepared: ...

    def _checked(self, scope: Scope, prepared: Prepared) -> Prepared: ...

    async def _send_last(self, send: Send, body: bytes | memoryview) -> None: ...


class HeadFirstSend:
    """The ``send`` given to an overridden `stream_response`: its head waits."""

    __slots__ = ("_head_sent", "_listening", "_response", "_scope", "_send")

    def __init__(
        self,
        response: _Response,
        scope: Scope,
        send: Send,
        listening: anyio.CancelScope | None,
    ) -> None:
        self._response = response
        self._scope = scope
        self._send = send
        self._listening = listening  # the listener's scope, to cancel once the head is out
        self._head_sent = False

    async def __call__(self, message: Message) -> None:
        if self._head_sent or message["type"] != "http.response.start":
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self._response._ending = True
            await self._send(message)
            return
        prepared = await self._decide(message)
        await anyio.lowlevel.checkpoint_if_cancelled()  # invariant 6
        if self._listening is not None:
            self._listening.cancel()
        self._head_sent = True
        if prepared.error_body is None:
            await self._send({**message, **prepared.start})
            return
        await self._send(prepared.start)
        await self._response._send_last(self._send, prepared.error_body)
        raise Answered

    async def _decide(self, message: Message) -> Prepared:
        response, scope = self._response, self._scope
        resolved: RawHeaders = []
        failed: ResolverFailed | None = None
        if response.header_resolver is not None:
            try:
                resolved = await response._resolve(scope, ())
            except ResolverFailed as failure:
                failed = failure
        late = take_late_headers(scope, resolved)
        if failed is not None:
            return error_head(failed.status, failed.reason, late)
        own = [(bytes(name), bytes(value)) for name, value in message.get("headers", ())]
        status = message.get("status", response.status_code)
        return response._checked(scope, response._merged_head(scope, status, own, late, resolved))
