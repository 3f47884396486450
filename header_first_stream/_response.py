"""`HeaderFirstStreamingResponse`: Starlette's `StreamingResponse`, with its head held back
until the late headers are known.

One path for every request: plan (how long the client is listened to) -> decide the head
(`_head.decide_head`, after the peek and the resolver) -> send the head -> send the body ->
close the body. The work beside it (the listener, the server-exit watch, a subclass's
tasks) belongs to the request's `Lifeline` (`_lifeline.py`), which waits for all of it.

Invariants, enforced in `__call__` and `_respond` below:

1. ``http.response.start`` is sent exactly once, and only after the header resolver
   returned (or failed, in which case the head is that of an error response: a failed
   resolver never leads to a ``200``).
2. Nothing of the body is pulled from the iterator before the resolver returned, except
   the first chunk when ``peek_first_chunk=True`` asked for it.
3. Every head is decided by `decide_head`, whichever path sends it: the same validation,
   size caps, merge order and late headers everywhere.
4. The body iterator is closed when the response ends for any reason: finished, raised,
   client disconnected, cancelled, HEAD, or an error response sent instead.
5. One task decides the head, pulls every chunk and closes the iterator: the request's
   own, so a generator that holds a context variable across its yields (a tracing span)
   sees one task and one context from its first chunk to its ``finally``.
6. One signal says "stop": the lifeline's (`Lifeline.stop`, or `Stopped` from
   `Waiting.finish`), given by the listener (the client left) or the server-exit watch; a
   cancellation from outside propagates. No head is sent once it was given, even if the
   resolver ended without noticing.
7. No message object and no headers list this class sends is shared with another
   response: any middleware may change what it is given.

How long the client is listened to (`Listen`), chosen once per request: to the end below
ASGI spec 2.4 (as Starlette) or for work that lasts the stream (``end_on_shutdown``, the SSE
class's pings and tasks); until the head is out at 2.4 when the body is entered before it (a
peek, an overridden `stream_response`); only while a resolver waits at 2.4
(`ResolverOptions.start`: a call of code known to step safely that returns at once costs no
listener and no cancel scope, `_lifeline.step`); never for a websocket denial or when
nothing waits.

Hooks for the SSE class (Starlette's public extension points are in the class docstring):
`_send_body(send, first_chunk)`, if defined, sends the body after the head (this class
sends its own in `_respond`, one coroutine less per open stream); `_encode_first(chunk)`
encodes a peeked chunk as the body is encoded; `_wait_for_disconnect(receive, until)` is the
listener's wait; `_listens_to_the_end()`, if defined, and `_start_tasks(lifeline)` add work
beside the whole response.
"""

from __future__ import annotations

import enum
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import suppress
from typing import Any

import anyio
import anyio.lowlevel
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from ._body import close, must_close, started
from ._head import (
    decide_head,
    decide_response_head,
    take_peek_options,
)
from ._late import end_without_head
from ._lifeline import Lifeline, Side
from ._listen import listen, on_server_exit, wait_for_disconnect
from ._resolve import Failed, Option, ResolverOptions, Waiting, take_resolver_options
from ._scope import is_head, spec_at_least_2_4
from ._shutdown import take_shutdown_options, unwatched, watch_server_exit
from ._types import (
    BYTES_TYPES,
    ChunkHeaderResolver,
    EarlyErrorHandler,
    HeaderResolver,
    RawHeaders,
    ResolverErrorPolicy,
)

__all__ = ["HeaderFirstStreamingResponse"]


class Listen(enum.Enum):
    """How long a response listens for the client leaving."""

    NEVER = "never"
    WHILE_RESOLVING = "while the resolver waits"
    UNTIL_HEAD = "until the head is out"
    TO_THE_END = "to the end"


def _deny_websocket(send: Send) -> Send:
    # As Starlette's `Response._wrap_websocket_denial_send` (private, so mirrored here).
    async def wrapped(message: Message) -> None:
        message_type = message["type"]
        if message_type in ("http.response.start", "http.response.body"):
            message = {**message, "type": "websocket." + message_type}
        await send(message)

    return wrapped


class _Answered(Exception):
    """A subclass's `stream_response` is stopped: an error response was sent instead."""


class HeaderFirstStreamingResponse(StreamingResponse):
    """A `StreamingResponse` that sends its head only once its late headers are known.

    A drop-in replacement for `starlette.responses.StreamingResponse` (same positional
    arguments); the options below are keyword-only. Without any of them it behaves like
    Starlette's, except for the divergences listed in ``docs/differences.md``.

    Headers are merged in this order, a later source replacing every header of the same
    name: the response's own, the request's `late_headers`, then the resolver's (which may
    set ``content-type``, but not the fields ``docs/headers.md`` lists as refused).
    Starlette's extension points work as in Starlette: an overridden ``stream_response``
    gets a ``send`` whose head is decided as this class decides its own (not with
    ``peek_first_chunk``: a `TypeError`), and ``listen_for_disconnect`` is the listener's
    wait wherever this class listens (``docs/behaviours.md``).

    Args:
        content: An async iterable, or a sync iterable (iterated in a thread), of
            `str`/`bytes`/`memoryview` chunks.
        status_code: The status of a successful response.
        headers: The response's own headers.
        media_type: The ``content-type``; ``text/*`` gets ``charset=utf-8``.
        background: Run after the response was sent (also after an error response
            sent by this class), as in Starlette.
        header_resolver: An async callable that returns the late headers, as a mapping
            or (name, value) pairs; `int` values are rendered as decimal text. It is
            awaited just before the head is sent, after the endpoint returned. With
            ``peek_first_chunk=True`` it takes one argument: the first chunk, or ``None``
            if the body is empty or failed.
        resolver_timeout: Seconds to wait for the resolver; ``None`` waits as long as it
            takes.
        on_resolver_error: What a failed, timed-out or invalid resolver leads to.
            ``"error"`` (default): a ``500`` (``504`` on timeout) with a short plain-text
            body, the exception logged with the request path. ``"degrade"``: the stream
            is sent without the resolver's headers, logged at WARNING.
        peek_first_chunk: Pull the first chunk before sending the head, so that an
            exception before it becomes a real error response instead of ``200`` and a
            broken stream.
        early_error_handler: With ``peek_first_chunk=True``: maps an exception raised
            before the first chunk to the `Response` to send (its status, headers and
            body; the late headers are added). Return ``None`` for the default ``502``
            with a JSON body ``{"error": {...}}`` that leaks nothing of the exception.
        end_on_shutdown: End the stream when the server shuts down (`begin_shutdown`, or
            uvicorn's exit), so that an endless stream does not hold a graceful shutdown:
            the generator is closed and the stream cut off without its final chunk (the
            client sees an incomplete response, not a finished one).
        shutdown_event: With ``end_on_shutdown=True``: set when the shutdown is noticed,
            so the generator can end by itself (say goodbye) before it is cut off.
        shutdown_grace_period: Seconds between setting ``shutdown_event`` and cutting
            the stream off; ``0`` cuts it off at once.

    Raises:
        ValueError: An option is out of range.
        TypeError: ``header_resolver`` or ``early_error_handler`` is not callable, or a
            subclass that overrides ``stream_response`` asks for ``peek_first_chunk``.
    """

    # `_headers.DEFAULT_MAX_*` written out (a test pins them), for the API reference.
    max_header_value_size: int = 8192
    """Bytes one header value may hold; a longer one is an invalid header."""

    max_head_size: int = 16384
    """Bytes the headers of the head may hold, counted as ``name: value\\r\\n`` each."""

    cleanup_timeout: float | None = 30.0
    """Seconds closing the body iterator may take before it is abandoned (logged)."""

    # Options as given: defaults here, set per request only when they differ.
    _resolver_options: ResolverOptions[Any] = ResolverOptions(None, None, "error")
    header_resolver = Option("resolver")
    resolver_timeout = Option("timeout")
    on_resolver_error = Option("policy")
    peek_first_chunk = False
    early_error_handler: EarlyErrorHandler | None = None
    end_on_shutdown = False
    shutdown_event: anyio.Event | None = None
    shutdown_grace_period: float = 0

    # Per-request state, class-level defaults until it changes. The iterator the peek and
    # the loop share is created on first use: an app may replace `body_iterator` until then.
    _sync_content: object = None  # a sync iterable Starlette wrapped, to close it too
    _iterating: AsyncIterator[Any] | None = None
    _exhausted = False  # the iterator ended by itself
    _ending = False  # the final body message is being sent: the listener must not cut it
    _polls_later = False  # it watches the server's exit (the listener starts the polling)
    _own_stream_response = False  # per subclass: it frames the body in `stream_response`
    # A subclass that frames the body itself (the SSE class) defines it as
    # ``async def _send_body(self, send, first_chunk)``: the peeked chunk, the rest, the end.
    _send_body: Callable[[Send, bytes | memoryview | None], Awaitable[None]] | None = None
    # A subclass with work that lasts the whole response (the SSE class's pings) defines it
    # as ``def _listens_to_the_end(self) -> bool``: whether this response has any.
    _listens_to_the_end: Callable[[], bool] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._own_stream_response = (
            cls.stream_response is not HeaderFirstStreamingResponse.stream_response
        )

    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: BackgroundTask | None = None,
        *,
        header_resolver: HeaderResolver | ChunkHeaderResolver | None = None,
        resolver_timeout: float | None = None,
        on_resolver_error: ResolverErrorPolicy = "error",
        peek_first_chunk: bool = False,
        early_error_handler: EarlyErrorHandler | None = None,
        end_on_shutdown: bool = False,
        shutdown_event: anyio.Event | None = None,
        shutdown_grace_period: float = 0,
    ) -> None:
        take_resolver_options(self, header_resolver, resolver_timeout, on_resolver_error)
        if peek_first_chunk or early_error_handler is not None:
            take_peek_options(self, peek_first_chunk, early_error_handler)
        if end_on_shutdown or shutdown_event is not None or shutdown_grace_period != 0:
            take_shutdown_options(self, end_on_shutdown, shutdown_event, shutdown_grace_period)
        super().__init__(content, status_code, headers, media_type, background)
        if self.body_iterator is not content:  # Starlette wrapped a sync iterable
            self._sync_content = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        listening = _plan(self, scope)
        try:
            if listening is Listen.NEVER or listening is Listen.WHILE_RESOLVING:
                await self._respond(None, scope, receive, send, listening)
            else:
                lifeline = Lifeline()
                await lifeline.run(self._respond, scope, receive, send, listening)
                if lifeline.stopped:  # the client left (or the server exits), maybe before the head
                    end_without_head(scope)
        except OSError as exc:
            if not spec_at_least_2_4(scope):
                raise
            # From spec 2.4 a client that left shows as OSError from send().
            raise ClientDisconnect() from exc
        if self.background is not None:
            await self.background()

    async def _respond(
        self, lifeline: Lifeline | None, scope: Scope, receive: Receive, send: Send, how: Listen
    ) -> None:
        """Decide the head, send it and the body, then close the body, in this task."""
        if scope["type"] == "websocket":
            send = _deny_websocket(send)
        listener: Side | None = None
        stop_tasks: Callable[[], None] = unwatched
        try:
            if lifeline is not None:
                if not is_head(scope):  # HEAD sends no body, so nothing runs beside it
                    stop_tasks = self._start_tasks(lifeline)
                listener = lifeline.start_soon(listen, self, receive, lifeline)
            if self._own_stream_response:
                with suppress(_Answered):
                    await self.stream_response(_HeldHeadSend(self, scope, send, listener))
                return
            if how is not Listen.WHILE_RESOLVING and (
                self.peek_first_chunk or self._resolver_options.resolver is not None
            ):
                prepared = await decide_response_head(self, scope)  # the peek, the resolver
            else:
                # (No more local variables than needed: this frame lasts the stream.)
                outcome: RawHeaders | Failed | Waiting | None
                if how is Listen.WHILE_RESOLVING:  # spec 2.4: listen only while it waits
                    outcome = self._resolver_options.start((), scope, self)
                    if isinstance(outcome, Waiting):  # it did not return at once
                        outcome = await outcome.finish(self._wait_for_disconnect, receive)
                        if outcome is None:  # the client left: nothing sent, headers kept
                            end_without_head(scope)
                            return
                else:
                    outcome = []  # nothing to wait for
                prepared = decide_head(
                    scope,
                    self.status_code,
                    self.raw_headers,
                    outcome,
                    self,
                    owner=type(self).__name__,
                )
                del outcome  # taken into the head: an open stream keeps none of it
            if how is Listen.UNTIL_HEAD and listener is not None:
                listener.cancel()
            await send(prepared.start)
            if prepared.error_body is not None:
                await self._send_last(send, prepared.error_body)
            elif prepared.body_ended or (scope.get("method") != "GET" and is_head(scope)):
                await self._send_last(send, b"")
            else:
                first_chunk = prepared.first_chunk
                del prepared  # its head is the server's now: an open stream keeps none of it
                if self._send_body is not None:  # a subclass frames its body (the SSE class)
                    await self._send_body(send, first_chunk)
                    return
                # The body, here rather than in a method: one coroutine less per open stream.
                if first_chunk is not None:
                    await send(
                        {"type": "http.response.body", "body": first_chunk, "more_body": True}
                    )
                # The per-chunk loop: keep it as lean as Starlette's own.
                async for chunk in started(self):  # peeked, or started now
                    if not isinstance(chunk, BYTES_TYPES):
                        chunk = chunk.encode(self.charset)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._exhausted = True
                self._ending = True  # `_send_last`, inline: one coroutine less per response
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if stop_tasks is not unwatched:
                stop_tasks()
            if must_close(self._iterating, self._exhausted, self._sync_content):
                await close(self)

    def _start_tasks(self, lifeline: Lifeline) -> Callable[[], None]:
        """Start what runs beside the body; return the call that stops it."""
        if not self.end_on_shutdown:
            return unwatched
        self._polls_later = True
        return watch_server_exit(lifeline, lambda: on_server_exit(self, lifeline))

    async def _wait_for_disconnect(self, receive: Receive, until: float = math.inf) -> bool:
        """The listener's wait: ``True`` once the client left, ``False`` at ``until``."""
        return await wait_for_disconnect(self.listen_for_disconnect, receive, until)

    async def _send_last(self, send: Send, body: bytes | memoryview) -> None:
        """Send the final body message, which the listener must not cut short (a server
        may close the connection inside it, as hypercorn does on ``Connection: close``)."""
        self._ending = True
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _encode_first(self, chunk: Any) -> bytes | memoryview:
        """Encode the peeked first chunk; a subclass that encodes differently overrides it."""
        if isinstance(chunk, BYTES_TYPES):
            return chunk
        return chunk.encode(self.charset)  # type: ignore[no-any-return]


def _plan(response: HeaderFirstStreamingResponse, scope: Scope) -> Listen:
    """How long the client is listened to on this request."""
    if scope["type"] == "websocket":
        return Listen.NEVER
    if (
        not spec_at_least_2_4(scope)
        or response.end_on_shutdown
        or (response._listens_to_the_end is not None and response._listens_to_the_end())
    ):
        return Listen.TO_THE_END
    if response.peek_first_chunk or response._own_stream_response:
        return Listen.UNTIL_HEAD  # the body is entered before the head
    if response._resolver_options.resolver is not None:
        return Listen.WHILE_RESOLVING
    return Listen.NEVER


class _HeldHeadSend:
    """The ``send`` an overridden `stream_response` gets: its head is decided as ours is.

    The first ``http.response.start`` is held while the resolver runs, then decided by
    `decide_head` (merged, validated, or replaced by an error response, which stops the
    override with `_Answered`).
    """

    __slots__ = ("_head_sent", "_listener", "_response", "_scope", "_send")

    def __init__(
        self,
        response: HeaderFirstStreamingResponse,
        scope: Scope,
        send: Send,
        listener: Side | None,
    ) -> None:
        self._response = response
        self._scope = scope
        self._send = send
        self._listener = listener  # cancelled once the head is out
        self._head_sent = False

    async def __call__(self, message: Message) -> None:
        response = self._response
        if self._head_sent or message["type"] != "http.response.start":
            if message["type"] == "http.response.body" and not message.get("more_body"):
                response._ending = True
            await self._send(message)
            return
        outcome = await response._resolver_options.run((), self._scope, response)
        own = [(bytes(name), bytes(value)) for name, value in message.get("headers", ())]
        status = message.get("status", response.status_code)
        prepared = decide_head(
            self._scope,
            status,
            own,
            outcome,
            response,
            owner=type(response).__name__,
            message=message,
        )
        await anyio.lowlevel.checkpoint_if_cancelled()  # invariant 6
        if self._listener is not None:
            self._listener.cancel()
        self._head_sent = True
        await self._send(prepared.start)
        if prepared.error_body is not None:
            await response._send_last(self._send, prepared.error_body)
            raise _Answered
