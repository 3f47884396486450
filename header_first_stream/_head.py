"""The one head decision: every head this package sends is decided by `decide_head`.

The response's own head, a subclass's `stream_response` head, the head after a peek, the
error responses sent instead (a failed resolver, an early error, a head over a size cap)
and the middleware's head all come from here, so the same rules hold on every path:

1. Merge order: the component's own headers, then the request's late headers (taken from
   its store only now, so that a resolver may still add some), then the resolver's; a
   later source replaces every header of the same name (``set-cookie`` is added to).
2. Validation: the own headers of a response of ours are checked (an invalid one: a
   ``500`` with the late headers); the app's own head that the middleware passes on is the
   app's, and only its sizes are checked. Late and resolved headers were validated when
   added or rendered.
3. Size caps, once per head, whichever head was decided: no value over
   ``max_header_value_size``, no head over ``max_head_size``; over a cap, a ``500``
   without the late headers (logged). An error response carries the request's late
   headers, less ``content-type``.
4. The late-header store closes only when the outermost holder of ours decides its head
   (`take_late_headers`); an inner one takes what is there and leaves it open.
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple, Protocol

import anyio.lowlevel
from starlette.types import Message, Receive, Scope

from ._body import Body, started
from ._errors import early_error_response, plain_error
from ._headers import (
    HeaderValidationError,
    check_head_size,
    merge_headers,
    validate_own_headers,
)
from ._late import late_names, take_late_headers
from ._resolve import Failed, ResolverOptions
from ._scope import is_head
from ._types import EarlyErrorHandler, RawHeaders

__all__ = [
    "EarlyError",
    "Limits",
    "Prepared",
    "take_peek_options",
    "decide_head",
    "decide_response_head",
    "start_message",
]

logger = logging.getLogger("header_first_stream")

_EXPOSE = b"access-control-expose-headers"


class Limits(Protocol):
    """The size caps of whoever decides a head (class attributes of each component)."""

    max_header_value_size: int
    max_head_size: int


class _Response(Body, Protocol):
    """What a response's head decision reads (`HeaderFirstStreamingResponse`)."""

    status_code: int
    raw_headers: list[tuple[bytes, bytes]]
    max_header_value_size: int
    max_head_size: int
    peek_first_chunk: bool
    early_error_handler: EarlyErrorHandler | None
    _resolver_options: ResolverOptions[Any]

    def _encode_first(self, chunk: Any) -> bytes | memoryview: ...
    async def _wait_for_disconnect(self, receive: Receive, until: float = math.inf) -> bool: ...


class EarlyError(NamedTuple):
    """The body failed before its first chunk (with ``peek_first_chunk``)."""

    exc: Exception
    handler: EarlyErrorHandler | None
    resolved: RawHeaders  # the resolver's headers, which the error response carries too


class Prepared(NamedTuple):
    """The head decided on, and what follows it; nothing of it sent yet."""

    start: Message
    """The ``http.response.start`` message, never one another response can see."""
    error_body: bytes | memoryview | None = None
    """The body of an error response sent instead of the stream."""
    first_chunk: bytes | memoryview | None = None
    """The peeked first chunk, encoded; ``None`` when there was no peek."""
    body_ended: bool = False
    """The body ended during the peek, before its first chunk."""


def take_peek_options(
    response: _Response, peek_first_chunk: bool, early_error_handler: EarlyErrorHandler | None
) -> None:
    """Set a response's peek options; TypeError/ValueError for ones that cannot work."""
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
    if peek_first_chunk and getattr(response, "_own_stream_response", False):
        raise TypeError(
            f"{type(response).__name__} overrides stream_response(), which pulls the body "
            "itself, so peek_first_chunk=True cannot be honoured; peek in your "
            "stream_response, or do not override it"
        )
    response.peek_first_chunk = peek_first_chunk
    response.early_error_handler = early_error_handler


def start_message(status: int, headers: RawHeaders) -> Message:
    """A new ``http.response.start`` message (never one another response can see)."""
    return {"type": "http.response.start", "status": status, "headers": headers}


def decide_head(
    scope: Scope,
    status: int,
    own: RawHeaders,
    outcome: RawHeaders | Failed | EarlyError,
    limits: Limits,
    *,
    owner: str | None,
    message: Message | None = None,
    outside: int | None = None,
    expose: bool = False,
) -> Prepared:
    """Decide the head of a response: the one place the rules above are applied.

    Args:
        scope: The request's scope (its late-header store, its path for the log).
        status: The status of the response as its component would send it.
        own: The component's own headers (a new list is built; ``own`` is not changed).
        outcome: The resolver's headers (``[]`` without one), its failure, or the body's
            early error.
        limits: Whose size caps apply.
        owner: The response class whose own headers are validated; ``None`` for an app's
            head that the middleware passes on (unchanged, and unchecked, when nothing is
            added to it).
        message: The ``http.response.start`` that ``own`` came from, if any (an app's, an
            overridden `stream_response`'s): its other keys are kept.
        outside: Holders of the head outside the decider (the middleware's depth);
            ``None`` for a response, inside every holder.
        expose: Add the late headers' names to ``access-control-expose-headers``.
    """
    if not isinstance(outcome, list):  # the resolver failed, or the body did: answered
        return _answered(scope, outcome, limits, outside)
    resolved = outcome
    late, every_late = take_late_headers(scope, resolved, outside)
    names = late_names(scope) if expose else None  # `resolved`'s too: taken above
    added = late or resolved or names
    size = -1  # the head's size, once known to be within `max_header_value_size`
    if owner is None:
        if message is not None and not added:
            return Prepared(message)  # nothing added: the app's head, as the app built it
        # An app's head gets its names lower-cased: a late header replaces one of any case.
        headers = [(bytes(name).lower(), bytes(value)) for name, value in own]
    else:
        try:
            size = validate_own_headers(own, owner, limits.max_header_value_size)
        except HeaderValidationError:
            logger.exception("invalid response header for %s", scope.get("path", ""))
            return _within_caps(_error(500, "Internal Server Error", every_late), limits, scope)
        headers = list(own)  # a list of its own: the component's headers stay its own
    if added:
        size = -1
        if late:
            headers = merge_headers(headers, late)
        if resolved:
            headers = merge_headers(headers, resolved)
        if names:
            headers = _with_exposed(headers, names)
    try:  # invariant 3, once per head (measured already for own headers alone)
        if not 0 <= size <= limits.max_head_size:
            check_head_size(headers, limits.max_header_value_size, limits.max_head_size)
    except HeaderValidationError:
        logger.exception("response head too large for %s", scope.get("path", ""))
        return _error(500, "Internal Server Error", [])
    if message is None:
        start: Message = {"type": "http.response.start", "status": status, "headers": headers}
    else:
        start = {**message, "status": status, "headers": headers}
    # `Prepared(start)` without the named tuple's `__new__` in Python: once per response.
    return tuple.__new__(Prepared, (start, None, None, False))


def _answered(
    scope: Scope, outcome: Failed | EarlyError, limits: Limits, outside: int | None
) -> Prepared:
    """The error response sent instead: a failed resolver's, or an early error's."""
    _, every_late = take_late_headers(scope, [], outside)
    if isinstance(outcome, Failed):
        return _within_caps(_error(outcome.status, outcome.reason, every_late), limits, scope)
    late = merge_headers(every_late, outcome.resolved)
    path = scope.get("path", "")
    status, headers, body = early_error_response(outcome.handler, outcome.exc, late, path)
    return _within_caps(Prepared(start_message(status, headers), body), limits, scope)


def _within_caps(prepared: Prepared, limits: Limits, scope: Scope) -> Prepared:
    """``prepared``, or a bare ``500`` if its head is over a size cap (invariant 3)."""
    try:
        check_head_size(
            prepared.start["headers"], limits.max_header_value_size, limits.max_head_size
        )
    except HeaderValidationError:
        logger.exception("response head too large for %s", scope.get("path", ""))
        return _error(500, "Internal Server Error", [])
    return prepared


async def decide_response_head(response: _Response, scope: Scope) -> Prepared:
    """A response's head, after its peek and its resolver (listened to by its lifeline)."""
    prepared = await _prepare(response, scope)
    # Cancelled while the head was held back: send nothing, even if the resolver ended
    # without noticing (a shielded scope, a worker thread).
    await anyio.lowlevel.checkpoint_if_cancelled()
    return prepared


async def _prepare(response: _Response, scope: Scope) -> Prepared:
    """Run the peek and the resolver; decide the head."""
    options = response._resolver_options
    first_chunk: bytes | memoryview | None = None
    outcome: RawHeaders | Failed | EarlyError
    if not response.peek_first_chunk or is_head(scope):
        # A resolver for the peek gets no chunk on HEAD, whose body is never read.
        args = (None,) if response.peek_first_chunk else ()
        outcome = await options.run(args, scope, response)
    else:
        first_item: Any = None  # the first chunk as the iterator gave it, for the resolver
        early_error: Exception | None = None
        try:
            first_item = await anext(started(response))
            first_chunk = response._encode_first(first_item)  # one that cannot be sent: early
        except StopAsyncIteration:
            response._exhausted = True
        except Exception as exc:
            early_error, first_item = exc, None  # the resolver sees no chunk of a failed body
        outcome = await options.run((first_item,), scope, response)
        if early_error is not None and not isinstance(outcome, Failed):
            outcome = EarlyError(early_error, response.early_error_handler, outcome)
    prepared = decide_head(
        scope,
        response.status_code,
        response.raw_headers,
        outcome,
        response,
        owner=type(response).__name__,
    )
    if first_chunk is None and not response._exhausted:
        return prepared
    return prepared._replace(first_chunk=first_chunk, body_ended=response._exhausted)


def _error(status: int, reason: str, late: RawHeaders) -> Prepared:
    headers, body = plain_error(reason, late)
    return Prepared(start_message(status, headers), body)


def _with_exposed(headers: RawHeaders, names: list[bytes]) -> RawHeaders:
    """``headers`` with ``names`` added to ``access-control-expose-headers``.

    The names already listed (by `CORSMiddleware`, in one header or several) keep their
    order and spelling; a name is never listed twice, compared case-insensitively.
    """
    listed: list[bytes] = []
    rest: RawHeaders = []
    for name, value in headers:
        if name == _EXPOSE:
            listed += [item.strip() for item in value.split(b",") if item.strip()]
        else:
            rest.append((name, value))
    seen = {item.lower() for item in listed}
    for name in names:
        if name not in seen:
            seen.add(name)
            listed.append(name)
    return [*rest, (_EXPOSE, b", ".join(listed))]
