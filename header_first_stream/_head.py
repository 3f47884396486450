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
from collections.abc import AsyncIterator
from typing import Any, NamedTuple, Protocol

import anyio.lowlevel
from starlette.types import Message, Receive, Scope

from ._errors import early_error_response, plain_error
from ._headers import (
    HeaderValidationError,
    check_head_size,
    merge_headers,
    validate_own_headers,
)
from ._late import late_names, take_late_headers
from ._lifeline import Stopped, first_of
from ._resolve import Failed, ResolverOptions
from ._scope import is_head
from ._types import EarlyErrorHandler, RawHeaders

__all__ = [
    "EarlyError",
    "Limits",
    "Prepared",
    "check_response_options",
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


class _Response(Protocol):
    """What a response's head decision reads (`HeaderFirstStreamingResponse`)."""

    status_code: int
    raw_headers: list[tuple[bytes, bytes]]
    max_header_value_size: int
    max_head_size: int
    peek_first_chunk: bool
    early_error_handler: EarlyErrorHandler | None
    _resolver_options: ResolverOptions[Any]
    _exhausted: bool

    def _body(self) -> AsyncIterator[Any]: ...
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


def check_response_options(
    response: object, peek_first_chunk: bool, early_error_handler: object
) -> None:
    """Raise TypeError/ValueError for a response's peek options that cannot work."""
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
    resolved = outcome if isinstance(outcome, list) else []
    late, every_late = take_late_headers(scope, resolved, outside)
    path = scope.get("path", "")
    if isinstance(outcome, Failed):
        prepared = _error(outcome.status, outcome.reason, every_late)
    elif isinstance(outcome, EarlyError):
        late = merge_headers(every_late, outcome.resolved)
        status, headers, body = early_error_response(outcome.handler, outcome.exc, late, path)
        prepared = Prepared(start_message(status, headers), body)
    else:
        names = late_names(scope) if expose else []  # `resolved`'s too: taken above
        if owner is None and message is not None and not (late or resolved or names):
            return Prepared(message)  # nothing added: the app's head, as the app built it
        prepared = _merged(scope, status, own, late, every_late, resolved, owner, names, message)
    try:  # invariant 3, once per head, whichever head was decided
        check_head_size(
            prepared.start["headers"], limits.max_header_value_size, limits.max_head_size
        )
    except HeaderValidationError:
        logger.exception("response head too large for %s", path)
        return _error(500, "Internal Server Error", [])
    return prepared


async def decide_response_head(
    response: _Response, scope: Scope, watch: Receive | None
) -> Prepared | None:
    """A response's head: after its peek and its resolver; ``None`` if the client left.

    ``watch``: listen on it while the resolver runs (`first_of`; ASGI spec 2.4, where no
    listener runs beside the whole response).
    """
    if watch is not None:
        try:
            prepared = await first_of(
                _prepare(response, scope), response._wait_for_disconnect, watch
            )
        except Stopped:
            return None
    elif not response.peek_first_chunk and response._resolver_options.resolver is None:
        return _own(response, scope, [])  # nothing to wait for
    else:
        prepared = await _prepare(response, scope)
    # Stopped, or cancelled, while the head was held back: send nothing, even if the
    # resolver ended without noticing (a shielded scope, a worker thread).
    await anyio.lowlevel.checkpoint_if_cancelled()
    return prepared


async def _prepare(response: _Response, scope: Scope) -> Prepared:
    """Run the peek and the resolver; decide the head."""
    options = response._resolver_options
    if not response.peek_first_chunk or is_head(scope):
        # A resolver for the peek gets no chunk on HEAD, whose body is never read.
        args = (None,) if response.peek_first_chunk else ()
        return _own(response, scope, await options.run(args, scope, response))
    first_item: Any = None  # the first chunk as the iterator gave it, for the resolver
    first_chunk: bytes | memoryview | None = None
    early_error: Exception | None = None
    try:
        first_item = await anext(response._body())
        first_chunk = response._encode_first(first_item)  # one that cannot be sent: early
    except StopAsyncIteration:
        response._exhausted = True
    except Exception as exc:
        early_error, first_item = exc, None  # the resolver sees no chunk of a failed body
    resolved = await options.run((first_item,), scope, response)
    outcome: RawHeaders | Failed | EarlyError = resolved
    if early_error is not None and not isinstance(resolved, Failed):
        outcome = EarlyError(early_error, response.early_error_handler, resolved)
    prepared = _own(response, scope, outcome)
    return prepared._replace(first_chunk=first_chunk, body_ended=response._exhausted)


def _own(response: _Response, scope: Scope, outcome: RawHeaders | Failed | EarlyError) -> Prepared:
    owner = type(response).__name__
    return decide_head(
        scope, response.status_code, response.raw_headers, outcome, response, owner=owner
    )


def _merged(
    scope: Scope,
    status: int,
    own: RawHeaders,
    late: RawHeaders,
    every_late: RawHeaders,
    resolved: RawHeaders,
    owner: str | None,
    exposed: list[bytes],
    message: Message | None,
) -> Prepared:
    if owner is not None:
        try:
            validate_own_headers(own, owner)
        except HeaderValidationError:
            logger.exception("invalid response header for %s", scope.get("path", ""))
            return _error(500, "Internal Server Error", every_late)
    # A list of its own: the component's headers stay the component's. An app's head gets
    # its names lower-cased, so that a late header replaces one of any case.
    base = list(own) if owner is not None else [(bytes(n).lower(), bytes(v)) for n, v in own]
    headers = merge_headers(merge_headers(base, late), resolved)
    if exposed:
        headers = _with_exposed(headers, exposed)
    if message is None:
        return Prepared(start_message(status, headers))
    return Prepared({**message, "status": status, "headers": headers})


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
