"""`HeaderFirstEventSourceResponse`: Server-Sent Events on `HeaderFirstStreamingResponse`.

A subclass of both `HeaderFirstStreamingResponse` and `sse_starlette.EventSourceResponse`
(so ``isinstance`` checks written for sse-starlette hold), with sse-starlette's whole
signature: its positional arguments in its order, its class constants, its validation and
``enable_compression()``. Events are encoded by sse-starlette itself (`ensure_bytes`,
`ServerSentEvent`), so an endpoint written for `sse_starlette.EventSourceResponse` yields
the same bytes here (`bytes` and one-line `str` events take a shortcut that gives the same
bytes, property-tested). The head, the resolver, the first-chunk peek, early errors and
the end on server shutdown are `HeaderFirstStreamingResponse`'s own: this class replaces
how the body is sent (`_send_body`), what the listener does while it waits (pings, the
close handler) and which tasks run beside the body (``data_sender_callable``). This module
imports sse-starlette, which patches uvicorn's ``Server.handle_exit`` when imported; the
package imports this module only when the class is first used.

Invariants, enforced in `_send_body`, `_send_events`, `_wait_for_disconnect` and
`_ping_once` below:

1. Only one ``send`` is in flight at a time: an event waits for a ping being sent, and a
   ping is skipped while an event is being sent (that event keeps the connection alive).
   Two flags coordinate this; there is no lock and no cancel scope per event. The
   disconnect listener task sends the pings between two waits for ``receive()``, at the
   cost of one cancel scope per ping interval. A websocket denial response, which has no
   listener, sends no pings.
2. Every event is one ``http.response.body`` message, so a ping never lands inside one.
3. Pings start after the head and stop before the final empty body message (a ping in
   flight is waited for, never cancelled, unless the response fails).

Differences from `sse_starlette.EventSourceResponse` (each pinned by a parity test in
``tests/test_sse_*.py``):

- The head waits for the header resolver, and ``peek_first_chunk`` turns an error before
  the first event into a real error response (see `HeaderFirstStreamingResponse`).
- ``connection: keep-alive`` is sent over HTTP/1.x only, as sse-starlette sends it there:
  over HTTP/2 and HTTP/3 a connection-specific header makes the response malformed.
- A ping is skipped, not queued, when its tick finds an event being sent.
- ``send_timeout`` bounds event and ping sends and HEAD's messages, not the head of a
  stream, which waits for the resolver. Below ASGI spec 2.4 a timeout raises
  sse-starlette's `SendTimeoutError`; from spec 2.4 on, where a failed send means the client
  left, it surfaces as Starlette's `ClientDisconnect` (the `SendTimeoutError` as its
  context), as any `OSError` from ``send`` does there.
- The server's shutdown is noticed without a task of sse-starlette's (`_shutdown`: one
  polling task per event loop, anyio, so trio too); ``shutdown_event`` and
  ``shutdown_grace_period`` behave as sse-starlette documents them. A stream cut off at
  shutdown is closed (its ``finally`` runs) and ends without its final chunk, as in
  sse-starlette. ``end_on_shutdown=False`` keeps a stream open through a shutdown.
- The body iterator is closed on every exit (sse-starlette closes it only after an
  encoding or send failure), bounded by ``cleanup_timeout``.
- The disconnect listener runs for the whole response on every ASGI spec version (as in
  sse-starlette), beside the body, which runs in the request's own task (`_lifeline.py`);
  the listener also sends the pings, between the waits of ``listen_for_disconnect``.
- HEAD sends the same head as GET, the resolver included; as in sse-starlette the body
  iterator is never iterated (it is closed), and ``data_sender_callable`` is not started.
- Its private methods and attributes (``_ping``, ``_listen_for_exit_signal``, ``active``,
  ``_send_lock``, ...) are not sse-starlette's: nothing of its internals is called.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio
from starlette.background import BackgroundTask
from starlette.types import Message, Receive, Scope, Send

from ._body import started
from ._lifeline import Lifeline
from ._listen import on_server_exit
from ._response import HeaderFirstStreamingResponse
from ._scope import is_head
from ._shutdown import unwatched, wait_for_server_exit
from ._types import EarlyErrorHandler, EventHeaderResolver, HeaderResolver, ResolverErrorPolicy

try:
    from sse_starlette.event import ServerSentEvent, ensure_bytes
    from sse_starlette.sse import EventSourceResponse, SendTimeoutError
except ModuleNotFoundError as exc:
    raise ImportError(
        f"HeaderFirstEventSourceResponse needs sse-starlette ({exc}); install the 'sse' "
        "extra: pip install 'header-first-stream[sse]'"
    ) from exc

__all__ = ["HeaderFirstEventSourceResponse"]

_HTTP_1 = ("1.1", "1.0")


def _replaced(response: object, name: str) -> bool:
    """Whether ``name`` is no longer `HeaderFirstEventSourceResponse`'s own method."""
    method = getattr(response, name)
    return getattr(method, "__func__", method) is not getattr(HeaderFirstEventSourceResponse, name)


def _check_sse_options(
    response: EventSourceResponse,
    sep: str | None,
    ping: float | None,
    cleanup_timeout: float | None,
    send_timeout: float | None,
    *callables: object,
) -> None:
    """sse-starlette's own checks and messages, in its order."""
    if sep not in (None, "\r\n", "\r", "\n"):
        raise ValueError(f"sep must be one of: \\r\\n, \\r, \\n, got: {sep}")
    # Its property validates: TypeError for a non-number, ValueError below zero.
    response.ping_interval = response.DEFAULT_PING_INTERVAL if ping is None else ping
    if cleanup_timeout is not None and cleanup_timeout < 0:
        raise ValueError("cleanup_timeout must be >= 0")
    names = ("ping_message_factory", "data_sender_callable", "client_close_handler_callable")
    for name, value in zip(names, callables, strict=True):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    if send_timeout is not None and not send_timeout > 0:
        raise ValueError(
            f"send_timeout must be a positive number of seconds or None, got {send_timeout!r}"
        )


def _event_stream_headers(raw_headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers sse-starlette adds, as it adds them."""
    # A proxy that caches for fan-out sets its own cache-control (so sse-starlette keeps
    # it). The others are forced; `connection` is dropped again for HTTP/2 and HTTP/3,
    # where a connection-specific header makes the response malformed.
    cache = [] if any(name == b"cache-control" for name, _ in raw_headers) else [_NO_STORE]
    forced = (b"connection", b"x-accel-buffering")
    kept = [pair for pair in raw_headers if pair[0] not in forced]
    return [*kept, *cache, (b"connection", b"keep-alive"), (b"x-accel-buffering", b"no")]


_NO_STORE = (b"cache-control", b"no-store")


def _with_timeout(send: Send, timeout: float) -> Send:
    async def timed_send(message: Message) -> None:
        with anyio.move_on_after(timeout) as deadline:
            await send(message)
        if deadline.cancelled_caught:
            raise SendTimeoutError(
                f"sending to the client took over {timeout}s (send_timeout); "
                "the client is not reading"
            )

    return timed_send


class HeaderFirstEventSourceResponse(HeaderFirstStreamingResponse, EventSourceResponse):  # type: ignore[misc]
    """A Server-Sent Events response whose head waits for its late headers.

    Takes what `sse_starlette.EventSourceResponse` takes, in the same order, and encodes
    events the same way, with sse-starlette's `ensure_bytes`: `ServerSentEvent` objects,
    dicts of `ServerSentEvent` arguments, `str` (sent as ``data:`` lines) and `bytes`
    (sent as they are). Sends ``content-type: text/event-stream; charset=utf-8``,
    ``x-accel-buffering: no`` and, unless it sets its own, ``cache-control: no-store``.
    The differences from sse-starlette are listed in ``docs/differences.md``.

    Args:
        content: An async iterable, or a sync iterable (iterated in a thread), of events.
        status_code: The status of a successful response.
        headers: The response's own headers.
        media_type: The ``content-type``; ``charset=utf-8`` is added.
        background: Run after the response was sent, as in Starlette.
        ping: Seconds between keep-alive pings (comment lines); ``0`` sends none.
        sep: The line separator of events and pings: ``"\\r\\n"`` (default), ``"\\r"``
            or ``"\\n"``.
        ping_message_factory: Returns the `ServerSentEvent` to send as a ping; the
            default is a comment ``: ping - <UTC time>``.
        data_sender_callable: An async callable started beside the stream (once the
            response starts, before its head is decided), for push-based streams that
            feed the content from another source; always called (also when the response
            ends at once), cancelled when the stream ends, and its clean-up has run when
            the response returns.
        send_timeout: Seconds an event or ping send may take before the response fails
            with `SendTimeoutError`; ``None`` waits as long as it takes.
        client_close_handler_callable: Awaited with the ``http.disconnect`` message when
            the client leaves.
        shutdown_event: Set when the server's shutdown is noticed, so the generator can
            send a last event and end by itself.
        shutdown_grace_period: Seconds from ``shutdown_event`` to cutting the stream off.
        cleanup_timeout: Seconds closing the body iterator may take (``None``: no
            limit); on expiry it is abandoned and a WARNING is logged.
        header_resolver: As in `HeaderFirstStreamingResponse`; with
            ``peek_first_chunk=True`` it receives the first item as the iterator yielded
            it (a `ServerSentEvent`, dict, `str` or `bytes`), before encoding.
        resolver_timeout: As in `HeaderFirstStreamingResponse`.
        on_resolver_error: As in `HeaderFirstStreamingResponse`.
        peek_first_chunk: As in `HeaderFirstStreamingResponse`: an exception before the
            first event becomes an error response instead of ``200`` and a broken stream.
        early_error_handler: As in `HeaderFirstStreamingResponse`.
        end_on_shutdown: End the stream when the server shuts down, as sse-starlette
            does (default); ``False`` keeps it open until it ends by itself.

    Raises:
        ValueError: ``sep`` is not one of the three separators, or a number is out of range.
        TypeError: ``ping`` is not a number, or a callable option is not callable.
    """

    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str = "text/event-stream",
        background: BackgroundTask | None = None,
        ping: float | None = None,
        sep: str | None = None,
        ping_message_factory: Callable[[], ServerSentEvent] | None = None,
        data_sender_callable: Callable[[], Coroutine[None, None, None]] | None = None,
        send_timeout: float | None = None,
        client_close_handler_callable: Callable[[Message], Awaitable[None]] | None = None,
        shutdown_event: anyio.Event | None = None,
        shutdown_grace_period: float = 0,
        cleanup_timeout: float | None = EventSourceResponse.DEFAULT_CLEANUP_TIMEOUT,
        *,
        header_resolver: HeaderResolver | EventHeaderResolver | None = None,
        resolver_timeout: float | None = None,
        on_resolver_error: ResolverErrorPolicy = "error",
        peek_first_chunk: bool = False,
        early_error_handler: EarlyErrorHandler | None = None,
        end_on_shutdown: bool = True,
    ) -> None:
        _check_sse_options(
            self,
            sep,
            ping,
            cleanup_timeout,
            send_timeout,
            ping_message_factory,
            data_sender_callable,
            client_close_handler_callable,
        )
        super().__init__(
            content,
            status_code,
            headers,
            media_type,
            background,
            header_resolver=header_resolver,
            resolver_timeout=resolver_timeout,
            on_resolver_error=on_resolver_error,
            peek_first_chunk=peek_first_chunk,
            early_error_handler=early_error_handler,
            end_on_shutdown=end_on_shutdown,
            shutdown_event=shutdown_event,
            shutdown_grace_period=shutdown_grace_period,
        )
        self.raw_headers = _event_stream_headers(self.raw_headers)
        self.sep = sep or self.DEFAULT_SEPARATOR
        self.ping_message_factory = ping_message_factory
        self.data_sender_callable = data_sender_callable
        self.send_timeout = send_timeout
        self.client_close_handler_callable = client_close_handler_callable
        self.cleanup_timeout = cleanup_timeout
        # Send coordination (invariant 1): the event loop sets `_event_in_flight` around
        # each send; a ping sets `_ping_in_flight` to an Event that is set when it is done.
        self._event_in_flight = False
        self._ping_in_flight: anyio.Event | None = None
        # The send the listener pings with, while the body is being sent, and when.
        self._ping_send: Send | None = None
        self._next_ping_at: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope.get("http_version", "1.1") not in _HTTP_1:
                self.raw_headers = [pair for pair in self.raw_headers if pair[0] != b"connection"]
            if self.send_timeout is not None and is_head(scope):
                # As sse-starlette: HEAD's two messages are bounded too.
                send = _with_timeout(send, self.send_timeout)
        await super().__call__(scope, receive, send)

    async def _listen_for_exit_signal(self) -> None:  # type: ignore[override]
        """Return when the server shuts down: sse-starlette's hook (called only if replaced,
        on an instance or a subclass, as its users do: the stream then ends when it returns)."""
        await wait_for_server_exit()

    def _listens_to_the_end(self) -> bool:
        return (
            self.ping_interval > 0
            or self.data_sender_callable is not None
            or self.client_close_handler_callable is not None
        )

    def _start_tasks(self, lifeline: Lifeline) -> Callable[[], None]:
        # User callables are always called, as sse-starlette's task group calls them: a
        # sender that owns a memory stream closes it in its own clean-up.
        if self.data_sender_callable is not None:
            lifeline.start(self.data_sender_callable)
        if self.end_on_shutdown and _replaced(self, "_listen_for_exit_signal"):
            # sse-starlette's hook, replaced on the instance (as its users and tests do):
            # the stream ends when it returns.
            lifeline.start(self._end_when_exit_signalled, lifeline)
            return unwatched
        return super()._start_tasks(lifeline)

    async def _end_when_exit_signalled(self, lifeline: Lifeline) -> None:
        await self._listen_for_exit_signal()
        on_server_exit(self, lifeline)

    async def _send_body(self, send: Send, first_chunk: bytes | memoryview | None) -> None:
        events_send = send if self.send_timeout is None else _with_timeout(send, self.send_timeout)
        if self.ping_interval <= 0:
            await self._send_events(events_send, first_chunk)
        else:
            # The disconnect listener sends the pings (`_wait_for_disconnect`): a task of
            # its own would double the cost of a response.
            self._ping_send = events_send
            try:
                await self._send_events(events_send, first_chunk)
            finally:
                self._ping_send = None  # no ping starts after this
            await self._wait_for_ping()  # nor does one still in flight overlap the end
        await self._send_last(send, b"")

    def _encode_first(self, chunk: Any) -> bytes:
        return ensure_bytes(chunk, self.sep)

    async def _wait_for_disconnect(self, receive: Receive, until: float = math.inf) -> bool:
        interval = self.ping_interval
        message: Message = {"type": "http.disconnect"}

        async def receiving() -> Message:  # what the close handler is given
            nonlocal message
            message = await receive()
            return message

        while True:
            # The wait is ``listen_for_disconnect`` (Starlette's extension point, which a
            # subclass may override), cut short at every ping and at `until`. That is
            # safe: servers keep a message that was not delivered for the next call, which
            # Starlette's own `Request.is_disconnected()` relies on too.
            if interval > 0 and self._next_ping_at is None:
                self._next_ping_at = anyio.current_time() + interval
            with anyio.CancelScope(deadline=min(self._next_ping_at or until, until)):
                await self.listen_for_disconnect(receiving)
                break
            if self._next_ping_at is None or anyio.current_time() < self._next_ping_at:
                return False  # cut at `until`, before the next ping
            self._next_ping_at = None  # this one is due; the next an interval after it
            ping_send = self._ping_send
            if ping_send is not None:
                await self._ping_once(ping_send)
        if self.client_close_handler_callable is not None:
            await self.client_close_handler_callable(message)
        return True

    async def _send_events(self, send: Send, first_chunk: bytes | memoryview | None) -> None:
        sep = self.sep
        if first_chunk is not None:
            # No ping can be in flight yet: pings start only once this method has begun.
            self._event_in_flight = True  # encoded by `_encode_first`
            await send({"type": "http.response.body", "body": first_chunk, "more_body": True})
            self._event_in_flight = False
        # The per-event loop: two flag writes and one read beyond Starlette's own loop.
        tail = sep + sep
        async for item in started(self):
            # Fast paths for the two commonest items, byte for byte what `ensure_bytes`
            # gives (pinned by a property test): `bytes` are sent as they are, and a
            # one-line `str` is one ``data:`` line. Everything else goes to
            # `ensure_bytes`, whose `ServerSentEvent` costs ~1.4 us an event.
            cls = item.__class__
            if cls is bytes:
                chunk = item
            elif cls is str and "\n" not in item and "\r" not in item:
                chunk = f"data: {item}{tail}".encode()
            else:
                chunk = ensure_bytes(item, sep)
            if self._ping_in_flight is not None:
                await self._wait_for_ping()
            self._event_in_flight = True
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self._event_in_flight = False
        self._exhausted = True

    async def _wait_for_ping(self) -> None:
        # A loop, not one wait: once woken, a new ping may have started before this
        # task runs again (with a very short interval on a busy loop).
        while (ping := self._ping_in_flight) is not None:
            await ping.wait()

    async def _ping_once(self, send: Send) -> None:
        if self._event_in_flight:
            return  # that event keeps the connection alive; never interleave
        if self.ping_message_factory is not None:
            event = self.ping_message_factory()
        else:
            event = ServerSentEvent(comment=f"ping - {datetime.now(UTC)}", sep=self.sep)
        body = ensure_bytes(event, self.sep)
        done = self._ping_in_flight = anyio.Event()
        try:
            await send({"type": "http.response.body", "body": body, "more_body": True})
        finally:
            self._ping_in_flight = None
            done.set()
