"""`HeaderFirstStreamingResponse`: Starlette's `StreamingResponse`, with its head held back
until the late headers are known.

Invariants, enforced in `__call__` and `_prepare` below:

1. ``http.response.start`` is sent exactly once, and only after the header resolver
   returned (or failed, in which case the head is that of an error response: a failed
   resolver never leads to a ``200``).
2. Nothing of the body is pulled from the iterator before the resolver returned, except
   the first chunk when ``peek_first_chunk=True`` asked for it.
3. Every header sent was validated after its last change: no CR, LF or other control
   character reaches the server, whatever the server itself checks.
4. The body iterator is closed when the response ends for any reason: finished, raised,
   client disconnected, cancelled, HEAD, or an error response sent instead.
5. One task pulls every chunk and closes the iterator, so a generator that holds a context
   variable across its yields (a tracing span) sees one task and one context from its
   first chunk to its ``finally``; one that holds a cancel scope (a deadline) works when it
   runs to its end, but, as anyio and trio document for async generators, not when it is
   closed early.
6. A client that left while the head was held back gets nothing: no head is sent once the
   response's task was cancelled, even if the resolver ended without noticing.

Divergences from `starlette.responses.StreamingResponse` (each pinned by a parity test):

- HEAD: the resolver runs and the head is sent, but the body is never iterated (an
  endless stream would otherwise hang a HEAD request); the iterator is closed.
- The body iterator is closed (``aclose()``/``close()``) on every exit; Starlette leaves an
  abandoned generator to the garbage collector.
- Headers are validated before sending; an invalid one gives a 500, never a split head.
  Its own ``content-length`` or ``transfer-encoding`` is invalid (the server frames the
  stream), and so is a head over ``max_head_size`` or a value over
  ``max_header_value_size`` (see ``docs/headers.md``).
- While the head is held back, a disconnect is watched for on both ASGI paths (Starlette
  watches only below spec 2.4), so that a client that left cancels the resolver.
- The disconnect listener never cancels the final body message: a server that closes
  the connection inside it (hypercorn's trio worker, on ``Connection: close``) is not cut
  off half-way, which with Starlette's class leaves the connection open.
- Background tasks also run after the error responses this class sends itself.
"""

from __future__ import annotations

import logging
import math
import types
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeAlias

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from ._headers import (
    DEFAULT_MAX_HEAD_SIZE,
    DEFAULT_MAX_HEADER_VALUE_SIZE,
    HeaderValidationError,
    check_head_size,
    frame_complete_response,
    merge_headers,
    validate_own_headers,
)
from ._late import take_late_headers
from ._resolve import (
    ResolverErrorPolicy,
    ResolverFailed,
    check_options,
    plain_error,
    resolve,
    without_content_type,
)
from ._types import ChunkHeaderResolver, EarlyErrorHandler, HeaderResolver, RawHeaders

__all__ = ["HeaderFirstStreamingResponse"]

logger = logging.getLogger("header_first_stream")


# Markers for the first chunk: not pulled yet, or the iterator ended before giving one.
_NOT_PEEKED: Any = object()
_EMPTY: Any = object()

_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}

# A tuple built once: `isinstance(x, bytes | memoryview)` builds a union on every call,
# ~70 ns, a quarter of what raw ASGI costs per chunk.
_BYTES_TYPES = (bytes, memoryview)

# A prepared response: the start message, the first chunk (or a marker), and for a
# complete response that replaces the stream (an error), its body.
_Plan: TypeAlias = tuple[Message, Any, bytes | memoryview | None]


@contextmanager
def _collapse_excgroups() -> Iterator[None]:
    # anyio's task groups wrap even a single exception in a group; callers and
    # Starlette's error middleware expect the exception itself, as Starlette gives it.
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        exc = group.exceptions[0]
        context = None if exc.__suppress_context__ else exc.__context__
        raise exc from exc.__cause__ or context


def _deny_websocket(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        await send({**message, "type": "websocket." + message["type"]})

    return wrapped


# Parsed spec versions; a server sends the same string on every request.
_SPEC_AT_LEAST_2_4: dict[str, bool] = {}


def spec_at_least_2_4(scope: Scope) -> bool:
    version: str = scope.get("asgi", {}).get("spec_version", "2.0")
    known = _SPEC_AT_LEAST_2_4.get(version)
    if known is None:
        # As Starlette reads it, so "2.4.1" or "3" is accepted too.
        parsed = tuple(map(int, version.split(".")))
        known = _SPEC_AT_LEAST_2_4[version] = parsed >= (2, 4)
    return known


def _simple(status: int, raw_headers: RawHeaders, body: bytes | memoryview) -> _Plan:
    start = {"type": "http.response.start", "status": status, "headers": raw_headers}
    return start, _NOT_PEEKED, body


def _plain_error(status: int, reason: str, late: RawHeaders) -> _Plan:
    return _simple(status, *plain_error(reason, late))


def _default_early_error() -> Response:
    return JSONResponse(
        {
            "error": {
                "message": "The upstream service failed before sending a response.",
                "type": "upstream_error",
                "code": 502,
            }
        },
        status_code=502,
    )


class HeaderFirstStreamingResponse(StreamingResponse):
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

    Raises:
        ValueError: An option is out of range.
        TypeError: ``header_resolver`` or ``early_error_handler`` is not callable.
    """

    cleanup_timeout: float | None = 30.0
    """Seconds closing the body iterator may take before it is abandoned (logged)."""

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
    ) -> None:
        check_options("header_resolver", header_resolver, resolver_timeout, on_resolver_error, "")
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
        super().__init__(content, status_code, headers, media_type, background)
        # Starlette wraps a sync iterable in a thread-pool async generator; closing that
        # wrapper does not close the iterable itself, so keep it to close it too.
        self._sync_content: object = None if self.body_iterator is content else content
        self.header_resolver = header_resolver
        self.resolver_timeout = resolver_timeout
        self.on_resolver_error: ResolverErrorPolicy = on_resolver_error
        self.peek_first_chunk = peek_first_chunk
        self.early_error_handler = early_error_handler
        # The iterator the peek and the loop share; created on first use, because an app
        # may still replace `body_iterator` after construction, as with Starlette's.
        self._started: AsyncIterator[Any] | None = None
        self._finished = False
        self._closed = False
        # The task group of the disconnect listener, while the whole response runs in it
        # (below ASGI spec 2.4); a subclass may start its own tasks there.
        self._task_group: anyio.abc.TaskGroup | None = None
        self._ending = False  # the final body message is being sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope["type"] != "http":
                send = _deny_websocket(send)
                await self._stream(scope, send, await self._prepare(scope))
            elif spec_at_least_2_4(scope):
                await self._call_spec_2_4(scope, receive, send)
            else:
                await self._call_listening(scope, receive, send)
        finally:
            await self._close_once()
        if self.background is not None:
            await self.background()

    async def _call_spec_2_4(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Here a disconnect shows as OSError from send(). While the head is held back
        # nothing is sent, so a listener task watches for the disconnect until the head
        # is ready, and no longer: the stream then holds no task group (memory per open
        # stream), and this task peeks, streams and closes (one task for the body).
        if self.peek_first_chunk:
            # The peek enters the body, so the task that peeks must also stream and close
            # inside one task group: a generator holding a cancel scope across its yields
            # (a deadline) would otherwise have it nested in a group exited before it.
            try:
                with _collapse_excgroups():
                    async with anyio.create_task_group() as task_group:
                        listening = anyio.CancelScope()
                        task_group.start_soon(
                            self._respond_then_cancel, scope, send, task_group, listening
                        )
                        with listening:  # cancelled by the response once its head is ready
                            await self.listen_for_disconnect(receive)
                            task_group.cancel_scope.cancel()
            except OSError as exc:
                raise ClientDisconnect() from exc
            return
        if self.header_resolver is None:
            plan = await self._prepare(scope)  # nothing to wait for
        else:
            left: list[bool] = []
            with _collapse_excgroups():
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(self._cancel_on_disconnect, receive, task_group, left)
                    plan = await self._prepare(scope)
                    task_group.cancel_scope.cancel()
            # The client left while the head was held back: send nothing, even if
            # `_prepare` ended without noticing (a shielded resolver, a worker thread).
            # An outer cancellation (a timeout middleware, the server) that the task group
            # absorbed on asyncio while a shielded resolver ran: re-raised, not streamed over.
            if left or anyio.current_effective_deadline() == -math.inf:
                await anyio.lowlevel.checkpoint_if_cancelled()
                return
        try:
            await self._stream(scope, send, plan)
        except OSError as exc:
            raise ClientDisconnect() from exc

    async def _cancel_on_disconnect(
        self, receive: Receive, task_group: anyio.abc.TaskGroup, left: list[bool]
    ) -> None:
        await self.listen_for_disconnect(receive)
        left.append(True)
        task_group.cancel_scope.cancel()

    async def _call_listening(self, scope: Scope, receive: Receive, send: Send) -> None:
        # As in Starlette: the response runs in a child task while this one listens; the
        # first of the two to finish cancels the other.
        with _collapse_excgroups():
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                task_group.start_soon(self._respond_then_cancel, scope, send, task_group)
                await self._listen(receive, send)
                # A disconnect seen while the last message is being sent must not cut
                # that send short (see `_send_last`): the group waits for it instead.
                if not self._ending:
                    task_group.cancel_scope.cancel()

    async def _listen(self, receive: Receive, send: Send) -> None:
        """The listener task's work below spec 2.4; a subclass may do more in it."""
        await self.listen_for_disconnect(receive)

    async def _respond_then_cancel(
        self,
        scope: Scope,
        send: Send,
        task_group: anyio.abc.TaskGroup,
        listening: anyio.CancelScope | None = None,
    ) -> None:
        try:
            plan = await self._prepare(scope)
            # The client left while the head was held back: send nothing, even if
            # `_prepare` ended without noticing (a shielded resolver, a worker thread).
            # A flag check, not a checkpoint: no event-loop pass per response.
            if task_group.cancel_scope.cancel_called:
                return
            if listening is not None:
                listening.cancel()
            await self._stream(scope, send, plan)
        finally:
            await self._close_once()  # in the task that iterated it, in its context
        task_group.cancel_scope.cancel()

    async def _prepare(self, scope: Scope) -> _Plan:
        """Decide the head: run the peek and the resolver; send nothing."""
        plan = await self._decide(scope)
        try:  # once per head, whichever head was decided
            check_head_size(plan[0]["headers"], self.max_header_value_size, self.max_head_size)
        except HeaderValidationError:
            logger.exception("response head too large for %s", scope.get("path", ""))
            # The late headers or the app's own made it so: an error without either.
            return _plain_error(500, "Internal Server Error", [])
        return plan

    async def _decide(self, scope: Scope) -> _Plan:
        first: Any = _NOT_PEEKED
        item: Any = None  # the first chunk as the iterator gave it, for the resolver
        early_error: Exception | None = None
        if self.peek_first_chunk and not _is_head(scope):
            try:
                item = await anext(self._iterator())
                # Encoded now: a chunk that cannot be sent is an early error, not a 200.
                first = self._encode_first(item)
            except StopAsyncIteration:
                first = _EMPTY
                self._finished = True
            except Exception as exc:
                early_error = exc
                item = None  # the resolver sees no chunk of a failed body
        resolved: RawHeaders = []
        if self.header_resolver is not None:
            try:
                resolved = await self._resolve(scope, item)
            except ResolverFailed as failure:
                return _plain_error(failure.status, failure.reason, take_late_headers(scope))
        # Taken only now: a resolver may itself add request-scoped headers.
        late = take_late_headers(scope)
        if early_error is not None:
            return self._early_error_plan(scope, early_error, merge_headers(late, resolved))
        try:
            validate_own_headers(self.raw_headers, type(self).__name__)
        except HeaderValidationError:
            logger.exception("invalid response header for %s", scope.get("path", ""))
            return _plain_error(500, "Internal Server Error", late)
        headers = merge_headers(merge_headers(self.raw_headers, late), resolved)
        return (
            {"type": "http.response.start", "status": self.status_code, "headers": headers},
            first,
            None,
        )

    async def _resolve(self, scope: Scope, first: Any) -> RawHeaders:
        # Called only with a resolver; which of the two signatures depends on the peek.
        resolver: Any = self.header_resolver
        call: Any = (lambda: resolver(first)) if self.peek_first_chunk else resolver
        return await resolve(
            call,
            self.resolver_timeout,
            self.on_resolver_error,
            scope.get("path", ""),
            self.max_header_value_size,
            self.max_head_size,
            # On the listening path this runs in a child task of the response's own task
            # group, out of reach of a native asyncio cancellation.
            native_cancel=self._task_group is None,
        )

    def _early_error_plan(self, scope: Scope, exc: Exception, late: RawHeaders) -> _Plan:
        path = scope.get("path", "")
        response: Response | None = None
        if self.early_error_handler is not None:
            try:
                response = self.early_error_handler(exc)
            except Exception:
                logger.exception("early_error_handler failed for %s", path)
        if response is None:
            logger.error("body iterator failed before its first chunk for %s", path, exc_info=exc)
            response = _default_early_error()
        else:
            logger.info(
                "body iterator failed before its first chunk for %s: answered %s",
                path,
                response.status_code,
            )
        if not isinstance(getattr(response, "body", None), _BYTES_TYPES):
            logger.error(
                "early_error_handler returned %s for %s, which has no body; answered 502 "
                "(return a Response with a body, such as JSONResponse)",
                type(response).__name__,
                path,
            )
            response = _default_early_error()
        body: bytes | memoryview = response.body
        try:
            # This package sends that response itself: its framing is computed here.
            own = frame_complete_response(response.status_code, response.raw_headers, body, path)
        except HeaderValidationError:
            logger.exception("invalid header in the early error response for %s", path)
            response = _default_early_error()
            body = response.body
            own = response.raw_headers
        headers = merge_headers(own, without_content_type(late))
        return _simple(response.status_code, headers, body)

    async def _stream(self, scope: Scope, send: Send, plan: _Plan) -> None:
        start, first, body = plan
        await send(start)
        if body is not None:
            await self._send_last(
                send, {"type": "http.response.body", "body": body, "more_body": False}
            )
            return
        if _is_head(scope) or first is _EMPTY:
            await self._send_last(send, _END)
            return
        await self._stream_body(send, first)

    async def _send_last(self, send: Send, message: Message) -> None:
        """Send the final body message, which a disconnect listener must not cut short."""
        # A server may close the connection inside the last send() (hypercorn does, on
        # `Connection: close`); the listener then sees http.disconnect and must not cancel
        # that very send half-way, leaving the socket open. It checks this flag: cheaper
        # than a shielded cancel scope per response.
        self._ending = True
        await send(message)

    async def _stream_body(self, send: Send, first: Any) -> None:
        """Send the body after the head: ``first`` (unless `_NOT_PEEKED`), the rest, the end.

        The hook a subclass overrides to encode or interleave the body differently.
        """
        if first is not _NOT_PEEKED:  # encoded by _prepare
            await send({"type": "http.response.body", "body": first, "more_body": True})
        # The per-chunk loop: keep it as lean as Starlette's own.
        charset = self.charset
        async for chunk in self._iterator():
            if not isinstance(chunk, _BYTES_TYPES):
                chunk = chunk.encode(charset)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        self._finished = True
        await self._send_last(send, _END)

    def _encode_first(self, chunk: Any) -> bytes | memoryview:
        """Encode the peeked first chunk; a subclass that encodes differently overrides it."""
        if isinstance(chunk, _BYTES_TYPES):
            return chunk
        return chunk.encode(self.charset)  # type: ignore[no-any-return]

    def _iterator(self) -> AsyncIterator[Any]:
        if self._started is None:
            self._started = aiter(self.body_iterator)
        return self._started

    def _needs_closing(self) -> bool:
        # A native generator that ran to its end is closed already: no cancel scope to pay
        # for on the common path. Any other iterator (an SDK's stream object) may hold its
        # connection until aclose()/close(), even after its last chunk.
        if not self._finished or not isinstance(self._started, types.AsyncGeneratorType):
            return True
        sync = self._sync_content
        return hasattr(sync, "close") and not isinstance(sync, types.GeneratorType)

    async def _close_once(self) -> None:
        # Called where the response ends in the task that iterated the body, and again
        # by `__call__` for every other exit; only the first call closes.
        if self._closed:
            return
        self._closed = True
        if self._needs_closing():
            await self._close_body()

    async def _close_body(self) -> None:
        # Shielded: on a disconnect this runs inside a cancelled scope, and the
        # generator's own `finally` may need to await (closing an upstream connection).
        with anyio.move_on_after(self.cleanup_timeout, shield=True) as deadline:
            aclose = getattr(self._started or self.body_iterator, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    logger.exception("closing the body iterator failed")
            close = getattr(self._sync_content, "close", None)
            if close is not None:
                try:
                    # Abandoned, not waited for, when it outlasts cleanup_timeout.
                    await anyio.to_thread.run_sync(close, abandon_on_cancel=True)
                except Exception:
                    logger.exception("closing the body iterator failed")
        if deadline.cancelled_caught:
            logger.warning("closing the body iterator took over %ss", self.cleanup_timeout)


def _is_head(scope: Scope) -> bool:
    return scope["type"] == "http" and bool(scope["method"] == "HEAD")
