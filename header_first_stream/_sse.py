"""`HeaderFirstEventSourceResponse`: Server-Sent Events on `HeaderFirstStreamingResponse`.

Events are encoded by sse-starlette itself (`ensure_bytes`, `ServerSentEvent`), so an
endpoint written for `sse_starlette.EventSourceResponse` yields the same bytes here (`bytes`
and one-line `str` events take a shortcut that gives the same bytes, property-tested). The
head, the resolver, the first-chunk peek and early errors are
`HeaderFirstStreamingResponse`'s own: this class only replaces how the body is sent
(`_stream_body`). This module imports sse-starlette, which patches uvicorn's
``Server.handle_exit`` when imported; the package imports this module only when the class
is first used.

Invariants, enforced in `_stream_body`, `_send_events`, `_listen` and `_ping_once` below:

1. Only one ``send`` is in flight at a time: an event waits for a ping being sent, and a
   ping is skipped while an event is being sent (that event keeps the connection alive).
   Two flags coordinate this; there is no lock and no cancel scope per event. The
   disconnect listener task sends the pings between two waits for ``receive()``, on
   every ASGI spec version when pings are on, at the cost of one cancel scope per ping
   interval. A websocket denial response, which has no listener, sends no pings.
2. Every event is one ``http.response.body`` message, so a ping never lands inside one.
3. Pings start after the head and stop before the final empty body message (a ping in
   flight is waited for, never cancelled, unless the response fails).

Differences from `sse_starlette.EventSourceResponse` (each pinned by a parity test in
``tests/test_sse.py``):

- The head waits for the header resolver, and ``peek_first_chunk`` turns an error before
  the first event into a real error response (see `HeaderFirstStreamingResponse`).
- No ``connection: keep-alive`` header: connection-specific headers are forbidden in
  HTTP/2, and HTTP/1.1 servers keep the connection alive by themselves.
- A ping is skipped, not queued, when its tick finds an event being sent.
- ``send_timeout`` bounds event and ping sends, not the head; it costs a cancel scope per
  send only when set. Below ASGI spec 2.4 a timeout raises sse-starlette's
  `SendTimeoutError`; from spec 2.4 on, where a failed send means the client left, it
  surfaces as Starlette's `ClientDisconnect` (the `SendTimeoutError` as its context).
- No server-shutdown watcher (``AppStatus``, ``shutdown_event``,
  ``shutdown_grace_period``): nothing process-global and no asyncio-only task, so it runs
  on trio too. As with any streaming response, a server's graceful shutdown waits for an
  open stream until the server's own limit (uvicorn: ``--timeout-graceful-shutdown``).
- No ``data_sender_callable`` or ``client_close_handler_callable``; the body iterator is
  closed on every exit (sse-starlette closes it only after an encoding or send failure),
  bounded by the class attribute ``cleanup_timeout``.
- With pings on, the disconnect listener runs for the whole response on every ASGI spec
  version (it sends the pings, and the body is entered and closed inside its task group);
  from spec 2.4 on a failed send still means the client left (`ClientDisconnect`). With
  ``ping=0`` the response behaves as `HeaderFirstStreamingResponse`.
- HEAD sends the same head as GET, the resolver included; as in sse-starlette the body
  iterator is never iterated (it is closed).
- The options after ``background`` are keyword-only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope, Send

from ._resolve import ResolverErrorPolicy
from ._response import (
    _END,
    _NOT_PEEKED,
    HeaderFirstStreamingResponse,
)
from ._types import EarlyErrorHandler, HeaderResolver, HeaderSource

try:
    from sse_starlette.event import ServerSentEvent, ensure_bytes
    from sse_starlette.sse import SendTimeoutError
except ModuleNotFoundError as exc:
    raise ImportError(
        f"HeaderFirstEventSourceResponse needs sse-starlette ({exc}); install the 'sse' "
        "extra: pip install 'header-first-stream[sse]'"
    ) from exc

__all__ = ["HeaderFirstEventSourceResponse"]

# With peek_first_chunk=True the resolver gets the first item as the iterator yielded it.
_EventHeaderResolver = Callable[[Any], Awaitable[HeaderSource]]

_SEPARATORS = ("\r\n", "\r", "\n")


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


class HeaderFirstEventSourceResponse(HeaderFirstStreamingResponse):
    """A Server-Sent Events response whose head waits for its late headers.

    Takes what `sse_starlette.EventSourceResponse` takes as content and encodes it the same
    way, with sse-starlette's `ensure_bytes`: `ServerSentEvent` objects, dicts of
    `ServerSentEvent` arguments, `str` (sent as ``data:`` lines) and `bytes` (sent as
    they are). Sends ``content-type: text/event-stream; charset=utf-8``,
    ``x-accel-buffering: no`` and, unless the response sets its own, ``cache-control:
    no-store``. The differences from sse-starlette are listed in this module's docstring.

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
        send_timeout: Seconds an event or ping send may take before the response fails
            with `SendTimeoutError`; ``None`` waits as long as it takes.
        header_resolver: As in `HeaderFirstStreamingResponse`; with
            ``peek_first_chunk=True`` it receives the first item as the iterator yielded
            it (a `ServerSentEvent`, dict, `str` or `bytes`), before encoding.
        resolver_timeout: As in `HeaderFirstStreamingResponse`.
        on_resolver_error: As in `HeaderFirstStreamingResponse`.
        peek_first_chunk: As in `HeaderFirstStreamingResponse`: an exception before the
            first event becomes an error response instead of ``200`` and a broken stream.
        early_error_handler: As in `HeaderFirstStreamingResponse`.

    Raises:
        ValueError: ``sep`` is not one of the three separators, or ``ping`` or
            ``send_timeout`` is out of range, or another option is.
        TypeError: ``ping`` is not a number, or ``ping_message_factory``,
            ``header_resolver`` or ``early_error_handler`` is not callable.
    """

    DEFAULT_PING_INTERVAL = 15
    DEFAULT_SEPARATOR = "\r\n"

    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str = "text/event-stream",
        background: BackgroundTask | None = None,
        *,
        ping: float | None = None,
        sep: str | None = None,
        ping_message_factory: Callable[[], ServerSentEvent] | None = None,
        send_timeout: float | None = None,
        header_resolver: HeaderResolver | _EventHeaderResolver | None = None,
        resolver_timeout: float | None = None,
        on_resolver_error: ResolverErrorPolicy = "error",
        peek_first_chunk: bool = False,
        early_error_handler: EarlyErrorHandler | None = None,
    ) -> None:
        if sep is not None and sep not in _SEPARATORS:
            raise ValueError(f"sep must be '\\r\\n', '\\r' or '\\n', got {sep!r}")
        if ping is not None:
            if isinstance(ping, bool) or not isinstance(ping, int | float):
                raise TypeError(
                    f"ping must be a number of seconds (0 disables pings), "
                    f"got {type(ping).__name__}"
                )
            if not ping >= 0:
                raise ValueError(
                    f"ping must be a number of seconds >= 0 (0 disables pings), got {ping!r}"
                )
        if ping_message_factory is not None and not callable(ping_message_factory):
            raise TypeError(
                "ping_message_factory must be a callable returning a ServerSentEvent, "
                f"got {type(ping_message_factory).__name__}"
            )
        if send_timeout is not None and not send_timeout > 0:
            raise ValueError(
                f"send_timeout must be a positive number of seconds or None, got {send_timeout!r}"
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
        )
        if all(name != b"cache-control" for name, _ in self.raw_headers):
            # A proxy that caches for fan-out sets its own (sse-starlette does the same).
            self.raw_headers.append((b"cache-control", b"no-store"))
        self.raw_headers = [pair for pair in self.raw_headers if pair[0] != b"x-accel-buffering"]
        self.raw_headers.append((b"x-accel-buffering", b"no"))
        self.sep = self.DEFAULT_SEPARATOR if sep is None else sep
        self.ping_interval: float = self.DEFAULT_PING_INTERVAL if ping is None else ping
        self.ping_message_factory = ping_message_factory
        self.send_timeout = send_timeout
        # Send coordination (invariant 1): the event loop sets `_event_in_flight` around
        # each send; a ping sets `_ping_in_flight` to an Event that is set when it is done.
        self._event_in_flight = False
        self._ping_in_flight: anyio.Event | None = None
        # The send the listener pings with, while the body is being sent.
        self._ping_send: Send | None = None

    async def _stream_body(self, send: Send, first: Any) -> None:
        if self.send_timeout is not None:
            send = _with_timeout(send, self.send_timeout)
        if self.ping_interval <= 0 or self._task_group is None:
            # No pings, or no listener to send them: a websocket denial response.
            await self._send_events(send, first)
        else:
            # The disconnect listener sends the pings (`_listen`): a task of its own
            # would double the cost of a response.
            self._ping_send = send
            try:
                await self._send_events(send, first)
            finally:
                self._ping_send = None  # no ping starts after this
            await self._wait_for_ping()  # nor does one still in flight overlap the end
        await self._send_last(send, _END)

    async def _call_spec_2_4(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.ping_interval <= 0:
            await super()._call_spec_2_4(scope, receive, send)
            return
        # Pings need a task group, and the body must be entered and closed inside it (a
        # generator's cancel scope across yields): the whole response runs as below 2.4,
        # the listener sending the pings; a failed send still means the client left.
        try:
            await self._call_listening(scope, receive, send)
        except OSError as exc:
            raise ClientDisconnect() from exc

    def _encode_first(self, chunk: Any) -> bytes:
        return ensure_bytes(chunk, self.sep)

    async def _listen(self, receive: Receive, send: Send) -> None:
        interval = self.ping_interval
        if interval <= 0:
            await self.listen_for_disconnect(receive)
            return
        while True:
            # Waiting for receive() is cut short at every ping interval. That is safe:
            # servers keep a message that was not delivered for the next call, which
            # Starlette's own `Request.is_disconnected()` relies on too.
            with anyio.move_on_after(interval):
                while (await receive())["type"] != "http.disconnect":
                    pass
                return
            ping_send = self._ping_send
            if ping_send is not None:
                await self._ping_once(ping_send)

    async def _send_events(self, send: Send, first: Any) -> None:
        sep = self.sep
        if first is not _NOT_PEEKED:
            # No ping can be in flight yet: pings start only once this method has begun.
            self._event_in_flight = True  # `first` was encoded by `_encode_first`
            await send({"type": "http.response.body", "body": first, "more_body": True})
            self._event_in_flight = False
        # The per-event loop: two flag writes and one read beyond Starlette's own loop.
        tail = sep + sep
        async for item in self._iterator():
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
        self._finished = True

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
