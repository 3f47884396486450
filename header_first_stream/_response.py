"""`HeaderFirstStreamingResponse`: Starlette's `StreamingResponse`, with its head held back
until the late headers are known.

Invariants, enforced in `__call__`, `_respond` and `_prepare` below:

1. ``http.response.start`` is sent exactly once, and only after the header resolver
   returned (or failed, in which case the head is that of an error response: a failed
   resolver never leads to a ``200``).
2. Nothing of the body is pulled from the iterator before the resolver returned, except
   the first chunk when ``peek_first_chunk=True`` asked for it.
3. Every header sent was validated after its last change: no CR, LF or other control
   character reaches the server, whatever the server itself checks.
4. The body iterator is closed when the response ends for any reason: finished, raised,
   client disconnected, cancelled, HEAD, or an error response sent instead.
5. One task prepares the head, pulls every chunk and closes the iterator: the request's
   own, while the listener runs beside it (`_watch.py`), so a generator that holds a
   context variable across its yields (a tracing span) sees one task and one context from
   its first chunk to its ``finally``; one that holds a cancel scope (a deadline) works
   when it runs to its end, but, as anyio and trio document for async generators, not
   when it is closed early.
6. One signal says "stop": the watch's (`Watch.stop`, or `Stopped` from `first_of`), given
   by the disconnect listener (the client left) or the server-exit watcher; a
   cancellation from outside propagates. No head is sent once it was given, even if the
   resolver ended without noticing.
7. No message object and no headers list this class sends is shared with another
   response: any middleware may change what it is given.

Divergences from `starlette.responses.StreamingResponse` (each pinned by a parity test):

- HEAD: the resolver runs and the head is sent, but the body is never iterated (an
  endless stream would otherwise hang a HEAD request); the iterator is closed. A scope's
  method is compared case-insensitively, as sse-starlette does.
- The body iterator is closed (``aclose()``/``close()``) on every exit; Starlette leaves an
  abandoned generator to the garbage collector.
- Headers are validated before sending; an invalid one gives a 500, never a split head.
  Its own ``transfer-encoding``, or a ``content-length`` that is not one number, is
  invalid (the server frames the stream; one decimal ``content-length`` for a body of
  known size is kept, as in Starlette), and so is a head over ``max_head_size`` or a value
  over ``max_header_value_size`` (see ``docs/headers.md``).
- While the head is held back, a disconnect is watched for on both ASGI paths (Starlette
  watches only below spec 2.4), so that a client that left cancels the resolver.
- A disconnect (or the server's exit) seen while the final body message is being sent
  cancels it only if it is still stalled `FINAL_SEND_GRACE` seconds later: a server that
  closes the connection inside it (hypercorn's trio worker, on ``Connection: close``) is
  not cut off half-way, which with Starlette's class leaves the connection open.
- Background tasks also run after the error responses this class sends itself.

The paths, chosen once per request in `__call__`: a websocket denial (no listener); the
listener to the end (spec below 2.4, or work that lasts the stream: `end_on_shutdown`, a
subclass's tasks); the listener until the head is out (spec 2.4, a peek or an overridden
`stream_response`: the body is entered before the head); the client watched only while a
resolver runs (spec 2.4); nothing to wait for. All of them are `_respond`, and the first
three run it inside one `run_watched`.

Hooks for subclasses within this package (`HeaderFirstEventSourceResponse` uses them;
Starlette's public extension points are in the class docstring; the listener's three are
defined in `_listening.py`, the body's closing in `_body.py`):

- `_send_body(send, first_chunk)`: send the body after the head (encode, interleave);
- `_encode_first(chunk)`: encode the peeked first chunk as `_send_body` encodes the rest;
- `_wait_for_disconnect(receive, until)`: the listener's wait, with work of its own
  (pings) in the same cancel scope;
- `_listens_to_the_end()` and `_start_tasks(watch)`: tasks that run beside the whole
  response, on every spec version.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from ._body import ClosingBody
from ._errors import early_error_response
from ._headers import (
    DEFAULT_MAX_HEAD_SIZE,
    DEFAULT_MAX_HEADER_VALUE_SIZE,
    HeaderValidationError,
    check_head_size,
    merge_headers,
    validate_own_headers,
)
from ._late import take_late_headers
from ._listening import Listening
from ._own_stream import Answered, HeadFirstSend
from ._prepared import Prepared, error_head, start_message
from ._resolve import (
    ResolverAttributes,
    ResolverFailed,
    ResolverOptions,
)
from ._scope import is_head, spec_at_least_2_4
from ._shutdown import (
    check_shutdown_options,
    unwatched,
)
from ._types import (
    BYTES_TYPES,
    ChunkHeaderResolver,
    EarlyErrorHandler,
    HeaderResolver,
    RawHeaders,
    ResolverErrorPolicy,
)
from ._watch import Stopped, Watch, first_of, run_watched

__all__ = ["HeaderFirstStreamingResponse"]

logger = logging.getLogger("header_first_stream")


def _deny_websocket(send: Send) -> Send:
    # As Starlette's `Response._wrap_websocket_denial_send` (private, so mirrored here).
    async def wrapped(message: Message) -> None:
        message_type = message["type"]
        if message_type in ("http.response.start", "http.response.body"):
            message = {**message, "type": "websocket." + message_type}
        await send(message)

    return wrapped


class HeaderFirstStreamingResponse(ClosingBody, Listening, StreamingResponse, ResolverAttributes):
    """A `StreamingResponse` that sends its head only once its late headers are known.

    A drop-in replacement for `starlette.responses.StreamingResponse` (same positional
    arguments); the options below are keyword-only. Without any of them it behaves like
    Starlette's, except for the divergences in this module's docstring.

    Headers are merged in this order, a later source replacing every header of the same
    name from an earlier one: the response's own headers, the request's `late_headers`,
    then the resolver's. A resolver may set ``content-type`` (for the stream: an error
    response sent instead keeps its own); it may not set framing (``content-length``,
    ``transfer-encoding``), connection-specific or server-owned fields
    (``REFUSED_LATE_HEADERS``, listed in ``docs/headers.md``), which is an invalid-header
    failure.

    Subclasses: Starlette's extension points work as in Starlette.

    - ``stream_response(send)``: override it to frame the body yourself. The head it sends
      is held back and merged with the late headers, validated and, if the resolver fails,
      replaced by the error response (the override is then stopped). It cannot be combined
      with ``peek_first_chunk`` (the override pulls the body itself): a `TypeError` at
      construction. HEAD is then the override's to answer.
    - ``listen_for_disconnect(receive)``: the disconnect listener's wait, on every path
      where this class listens.
    - ``init_headers``, ``set_cookie``, ``delete_cookie``, ``headers``: as in Starlette.

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
        end_on_shutdown: End the stream when the server shuts down (see
            `begin_shutdown`; uvicorn's exit signal is noticed by itself), so that an
            endless stream does not hold the server's graceful shutdown until its
            timeout. The generator is closed (its ``finally`` runs) and the stream is cut
            off without its final chunk, so the client sees an incomplete response, not
            a finished one.
        shutdown_event: With ``end_on_shutdown=True``: set when the shutdown is noticed,
            so the generator can end by itself (say goodbye) before it is cut off.
        shutdown_grace_period: Seconds between setting ``shutdown_event`` and cutting
            the stream off; ``0`` cuts it off at once.

    Raises:
        ValueError: An option is out of range.
        TypeError: ``header_resolver`` or ``early_error_handler`` is not callable, or a
            subclass that overrides ``stream_response`` asks for ``peek_first_chunk``.
    """

    # Set per subclass: whether it frames the body in its own `stream_response`.
    _own_stream_response = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._own_stream_response = (
            cls.stream_response is not HeaderFirstStreamingResponse.stream_response
        )

    max_header_value_size: int = DEFAULT_MAX_HEADER_VALUE_SIZE
    """Bytes one header value may hold; a longer one is an invalid header."""

    max_head_size: int = DEFAULT_MAX_HEAD_SIZE
    """Bytes the headers of the head may hold, counted as ``name: value\\r\\n`` each."""

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
        self._resolver_options = ResolverOptions.checked(
            option="header_resolver",
            resolver=header_resolver,
            timeout=resolver_timeout,
            policy=on_resolver_error,
        )
        if early_error_handler is not None and not callable(early_error_handler):
            raise TypeError(
                "early_error_handler must be a callable taking the exception, "
                f"got {type(early_error_handler).__name__}"
            )
        if early_error_handler is not None and not peek_first_chunk:
            raise ValueError(
                "early_error_handler needs peek_first_chunk=True: without the peek, the head "
                "is sent before the first chunk, so there is no early error to answer"
            )
        if peek_first_chunk and self._own_stream_response:
            raise TypeError(
                f"{type(self).__name__} overrides stream_response(), which pulls the body "
                "itself, so peek_first_chunk=True cannot be honoured; peek in your "
                "stream_response, or do not override it"
            )
        if end_on_shutdown or shutdown_event is not None or shutdown_grace_period != 0:
            check_shutdown_options(end_on_shutdown, shutdown_event, shutdown_grace_period)
        super().__init__(content, status_code, headers, media_type, background)
        # Starlette wraps a sync iterable in a thread-pool async generator; closing that
        # wrapper does not close the iterable itself, so keep it to close it too.
        if self.body_iterator is not content:
            self._sync_content = content
        # The options' defaults are class attributes: only what differs is set (per request).
        if peek_first_chunk:
            self.peek_first_chunk = peek_first_chunk
        if early_error_handler is not None:
            self.early_error_handler = early_error_handler
        if end_on_shutdown:
            self.end_on_shutdown = end_on_shutdown
            self.shutdown_event = shutdown_event
            self.shutdown_grace_period = shutdown_grace_period

    # Options, as given to the constructor (the defaults here; the shutdown options'
    # are in `Listening`).
    peek_first_chunk = False
    early_error_handler: EarlyErrorHandler | None = None

    # -- orchestration -------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Every path is `_respond`, which closes the body however it ends (invariant 4).
        if scope["type"] == "websocket":
            await self._respond(scope, _deny_websocket(send))
        elif not spec_at_least_2_4(scope):
            await self._respond_beside_listener(scope, receive, send, until_head=False)
        else:
            # From spec 2.4 a disconnect shows as OSError from send(); a listener is
            # needed only while the head waits, or for work that lasts the stream.
            try:
                if self._listens_to_the_end():
                    await self._respond_beside_listener(scope, receive, send, until_head=False)
                elif self.peek_first_chunk or self._own_stream_response:
                    # The body is entered before the head: it is also streamed and closed
                    # inside the watch (a generator that holds a cancel scope across its
                    # yields needs that, on trio).
                    await self._respond_beside_listener(scope, receive, send, until_head=True)
                elif self.header_resolver is not None:
                    # Listened to only while the head is held back, and only if the
                    # resolver waits at all (one that returns at once starts nothing).
                    await self._respond(scope, send, receive=receive)
                else:
                    await self._respond(scope, send)  # nothing to wait for
            except OSError as exc:
                raise ClientDisconnect() from exc
        if self.background is not None:
            await self.background()

    async def _respond_beside_listener(
        self, scope: Scope, receive: Receive, send: Send, *, until_head: bool
    ) -> None:
        # As Starlette's listening path, but the response runs in this task and the
        # listener beside it: the client leaving stops the watch (invariant 6). With
        # `until_head` the listening stops once the head went out.
        await run_watched(self._respond_watched, scope, receive, send, until_head)

    async def _respond_watched(
        self, watch: Watch, scope: Scope, receive: Receive, send: Send, until_head: bool
    ) -> None:
        listening = anyio.CancelScope() if until_head else None
        # HEAD sends no body, so nothing runs beside it.
        stop = unwatched if is_head(scope) else self._start_tasks(watch)
        try:
            watch.start_soon(self._listen, receive, watch, listening)
            await self._respond(scope, send, listening)
        finally:
            stop()

    async def _respond(
        self,
        scope: Scope,
        send: Send,
        listening: anyio.CancelScope | None = None,
        receive: Receive | None = None,
    ) -> None:
        """Decide the head, send it and the body, then close the body, in this task.

        ``listening``: the listener's scope, to cancel once the head is out (``None``: the
        listener, if any, listens to the end). ``receive``: no listener runs; watch the
        client (`first_of`) while the resolver runs.
        """
        try:
            if self._own_stream_response:
                with suppress(Answered):
                    await self.stream_response(HeadFirstSend(self, scope, send, listening))
                return
            if receive is not None:
                try:
                    prepared = await first_of(
                        self._prepare(scope), self._wait_for_disconnect, receive
                    )
                except Stopped:
                    return  # the client left while the head was held back: send nothing
            elif self.peek_first_chunk or self._resolver_options.resolver is not None:
                prepared = await self._prepare(scope)
                # The client left, or the request was cancelled, while the head was held
                # back: send nothing, even if the resolver ended without noticing (a
                # shielded scope, a worker thread). Raises only then.
                await anyio.lowlevel.checkpoint_if_cancelled()
            else:
                prepared = self._head(scope, [])  # nothing to wait for
            if listening is not None:
                listening.cancel()
            await send(prepared.start)
            if prepared.error_body is not None:
                await self._send_last(send, prepared.error_body)
            elif prepared.body_ended or is_head(scope):
                await self._send_last(send, b"")
            else:
                await self._send_body(send, prepared.first_chunk)
        finally:
            if self._must_close():  # inside the watch that iterated it, in its context
                await self._close_body()  # the one place the body is closed

    # -- the head ------------------------------------------------------------------------

    async def _prepare(self, scope: Scope) -> Prepared:
        """Decide the head: run the peek and the resolver; send nothing."""
        if self.peek_first_chunk and not is_head(scope):
            return self._checked(scope, await self._decide_after_peek(scope))
        resolved: RawHeaders = []
        if self._resolver_options.resolver is not None:  # the common path, inline
            try:
                # A resolver for the peek gets no chunk on HEAD, whose body is never read.
                resolved = await self._resolve(scope, (None,) if self.peek_first_chunk else ())
            except ResolverFailed as failure:
                return self._checked(scope, self._failed(scope, failure))
        return self._head(scope, resolved)

    def _head(self, scope: Scope, resolved: RawHeaders) -> Prepared:
        """The head of the stream, with the late headers (taken only now: a resolver may
        itself add request-scoped headers) and the resolver's."""
        late = take_late_headers(scope, resolved)
        return self._checked(
            scope, self._merged_head(scope, self.status_code, self.raw_headers, late, resolved)
        )

    def _failed(self, scope: Scope, failure: ResolverFailed) -> Prepared:
        return error_head(failure.status, failure.reason, take_late_headers(scope))

    def _checked(self, scope: Scope, prepared: Prepared) -> Prepared:
        try:  # once per head, whichever head was decided
            check_head_size(
                prepared.start["headers"], self.max_header_value_size, self.max_head_size
            )
        except HeaderValidationError:
            logger.exception("response head too large for %s", scope.get("path", ""))
            # The late headers or the app's own made it so: an error without either.
            return error_head(500, "Internal Server Error", [])
        return prepared

    async def _decide_after_peek(self, scope: Scope) -> Prepared:
        first_chunk: bytes | memoryview | None = None
        first_item: Any = None  # the first chunk as the iterator gave it, for the resolver
        body_ended = False
        early_error: Exception | None = None
        try:
            first_item = await anext(self._body())
            # Encoded now: a chunk that cannot be sent is an early error, not a 200.
            first_chunk = self._encode_first(first_item)
        except StopAsyncIteration:
            body_ended = self._exhausted = True
        except Exception as exc:
            early_error = exc
            first_item = None  # the resolver sees no chunk of a failed body
        resolved: RawHeaders = []
        if self._resolver_options.resolver is not None:
            try:
                resolved = await self._resolve(scope, (first_item,))
            except ResolverFailed as failure:
                return self._failed(scope, failure)
        late = take_late_headers(scope, resolved)
        if early_error is not None:
            return self._early_error(scope, early_error, merge_headers(late, resolved))
        head = self._merged_head(scope, self.status_code, self.raw_headers, late, resolved)
        return Prepared(head.start, first_chunk, body_ended, head.error_body)

    def _merged_head(
        self,
        scope: Scope,
        status: int,
        own: RawHeaders,
        late: RawHeaders,
        resolved: RawHeaders,
    ) -> Prepared:
        try:
            validate_own_headers(own, type(self).__name__)
        except HeaderValidationError:
            logger.exception("invalid response header for %s", scope.get("path", ""))
            return error_head(500, "Internal Server Error", late)
        # A list of its own: the response's `raw_headers` stays the response's.
        headers = merge_headers(merge_headers(list(own), late), resolved)
        return Prepared(start_message(status, headers))

    _resolver_options: ResolverOptions[HeaderResolver | ChunkHeaderResolver]

    @property
    def header_resolver(self) -> HeaderResolver | ChunkHeaderResolver | None:
        return self._resolver_options.resolver

    @header_resolver.setter
    def header_resolver(self, value: HeaderResolver | ChunkHeaderResolver | None) -> None:
        self._resolver_options = self._resolver_options.replaced(resolver=value)

    async def _resolve(self, scope: Scope, args: tuple[Any, ...]) -> RawHeaders:
        # ``args``: the peeked first chunk with `peek_first_chunk`, else nothing.
        return await self._resolver_options.run(
            args, scope.get("path", ""), self.max_header_value_size, self.max_head_size
        )

    def _early_error(self, scope: Scope, exc: Exception, late: RawHeaders) -> Prepared:
        status, headers, body = early_error_response(
            self.early_error_handler, exc, late, scope.get("path", "")
        )
        return Prepared(start_message(status, headers), error_body=body)

    # -- the body ------------------------------------------------------------------------

    async def _send_last(self, send: Send, body: bytes | memoryview) -> None:
        """Send the final body message, which a disconnect listener must not cut short."""
        # A server may close the connection inside the last send() (hypercorn does, on
        # `Connection: close`); the listener then sees http.disconnect and must not cancel
        # that very send half-way, leaving the socket open. It checks this flag: cheaper
        # than a shielded cancel scope per response.
        self._ending = True
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _send_body(self, send: Send, first_chunk: bytes | memoryview | None) -> None:
        """Send the body after the head: the peeked chunk (if any), the rest, the end.

        The hook a subclass overrides to encode or interleave the body differently.
        """
        if first_chunk is not None:
            await send({"type": "http.response.body", "body": first_chunk, "more_body": True})
        # The per-chunk loop: keep it as lean as Starlette's own.
        charset = self.charset
        async for chunk in self._body():
            if not isinstance(chunk, BYTES_TYPES):
                chunk = chunk.encode(charset)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        self._exhausted = True
        self._ending = True  # `_send_last`, inline: one coroutine less per response
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _encode_first(self, chunk: Any) -> bytes | memoryview:
        """Encode the peeked first chunk; a subclass that encodes differently overrides it."""
        if isinstance(chunk, BYTES_TYPES):
            return chunk
        return chunk.encode(self.charset)  # type: ignore[no-any-return]
