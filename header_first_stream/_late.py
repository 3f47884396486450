"""Request-scoped late headers: a place to put headers from anywhere that handles a request.

The store for a request lives in its ASGI scope (under `SCOPE_KEY`), so it is found from
the scope, from a Starlette `Request`, or, inside `HeaderFirstMiddleware`, from a context
variable that the middleware sets for the request's own task. Each request gets its own
store, created for its own scope: nothing of one request can reach another.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Protocol, runtime_checkable

from starlette.types import Scope

from ._headers import HeaderValidationError, merge_headers, render_headers
from ._types import HeaderSource, HeaderValue, RawHeaders

__all__ = [
    "SCOPE_KEY",
    "CURRENT",
    "HasScope",
    "LateHeaders",
    "add_late_headers",
    "end_without_head",
    "head_taken_inside",
    "late_headers",
    "late_names",
    "take_late_headers",
]

logger = logging.getLogger("header_first_stream")

SCOPE_KEY = "header_first_stream.late_headers"


@runtime_checkable
class HasScope(Protocol):
    """Anything that carries an ASGI scope: a Starlette or FastAPI `Request`, a `WebSocket`."""

    @property
    def scope(self) -> Scope: ...


class LateHeaders:
    """The headers added for one request before its response head goes out.

    Later additions replace earlier ones of the same name. Once the head has been sent,
    additions are not sent: they are logged at WARNING, named, and `add`/`update`
    return ``False``.
    """

    __slots__ = ("_decided", "_holders", "_path", "_pending", "_raw", "_resolved", "_sent")

    def __init__(self, path: str = "") -> None:
        self._raw: RawHeaders = []  # every header added
        self._pending: RawHeaders = []  # added since a head last took them
        self._sent = False
        self._path = path
        # How many components of ours hold the head outside whoever takes the headers
        # (`HeaderFirstMiddleware`s): the store closes when the outermost sends its head.
        self._holders = 0
        self._decided = False  # a response of ours took them into the head it decided
        # The headers a HeaderFirstStreamingResponse's own resolver put in the same head:
        # not the store's to send, but the middleware exposes their names to browsers.
        self._resolved: RawHeaders = []

    def __del__(self) -> None:
        # Never silent: headers that no head took are named when the request's scope is
        # freed: a response that is not ours without HeaderFirstMiddleware around the app,
        # where nothing of ours runs at the end of the request. On CPython that is when the
        # server drops the scope: at the end of the request on hypercorn and granian; uvicorn
        # keeps a connection's last scope until its next request or the garbage collector.
        # Where a component of ours ran, it ends the store itself (`end_without_head`).
        if self._pending and not self._sent:
            logger.warning(
                "late headers %s for %s were never sent: no response head took them "
                "(return a HeaderFirstStreamingResponse, or add HeaderFirstMiddleware "
                "around the app for any response class)",
                [name.decode("latin-1") for name, _ in self._pending],
                self._path,
            )

    @property
    def sent(self) -> bool:
        """``True`` once a response head has taken these headers."""
        return self._sent

    def add(self, name: str, value: HeaderValue) -> bool:
        """Set one header for this request's response.

        Args:
            name: The header name (any case; sent lower-case).
            value: A `str`, or an `int` rendered as decimal text.

        Returns:
            ``True`` if the header will be sent, ``False`` if the head already went out.

        Raises:
            HeaderValidationError: The name or value may not be sent, or the name is one
                that late headers may not set (framing, connection-specific and
                server-owned fields; see ``docs/headers.md``).
        """
        return self.update([(name, value)])

    def update(self, headers: HeaderSource) -> bool:
        """Set several headers at once; see `add`."""
        return self._update_raw(render_headers(headers))

    def _update_raw(self, raw: RawHeaders) -> bool:
        if self._sent:
            logger.warning(
                "late headers %s for %s were added after the response head was sent "
                "and are not sent; add them before the response starts",
                [name.decode("latin-1") for name, _ in raw],
                self._path,
            )
            return False
        self._raw = merge_headers(self._raw, raw)
        self._pending = merge_headers(self._pending, raw)
        return True

    def items(self) -> list[tuple[str, str]]:
        """The headers added so far, as (name, value) pairs."""
        return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in self._raw]

    def take(self) -> list[tuple[bytes, bytes]]:
        """Mark the headers as sent and return them all (validated raw pairs)."""
        self._sent = True
        self._pending = []
        return self._raw

    def _end(self, client_left: bool) -> None:
        """The request ended and no head took the pending headers: drop them.

        Named at WARNING now, deterministically, unless the client left before any head
        (then nothing at all was sent, and the headers are not what went missing). `sent`
        stays ``False``: no head took them.
        """
        if self._pending and not client_left:
            logger.warning(
                "late headers %s for %s were never sent: the request ended before a response "
                "head went out (the app raised, or sent no response)",
                [name.decode("latin-1") for name, _ in self._pending],
                self._path,
            )
        self._pending = []

    def _hold(self) -> int:
        """Register one more holder of the head (a middleware); return how many are outside it."""
        outside = self._holders
        self._holders += 1
        return outside

    def _take(self, outside: int | None, resolved: RawHeaders | None) -> RawHeaders:
        """The headers not yet in a head; closes the store if no holder is ``outside``.

        ``outside``: the holders outside the taker (``None``: all of them, for a response).
        """
        if resolved:
            self._resolved = self._resolved + resolved
        if outside is None:
            self._decided = True
        pending, self._pending = self._pending, []
        if not (self._holders if outside is None else outside):
            self._sent = True
        return pending


# Put in the scope by a head that went out before any store was asked for: a store asked
# for later knows that its headers can no longer be sent. A marker, not a store, so that
# responses whose requests never add a header allocate nothing.
_HEAD_SENT = object()


CURRENT: ContextVar[LateHeaders] = ContextVar("header_first_stream.current")


def late_headers(request: Scope | HasScope | None = None) -> LateHeaders:
    """Return the late-headers store of a request.

    Headers added to it before the response head goes out are sent with the response by
    `HeaderFirstStreamingResponse` (found through the scope) and, for any response class,
    by `HeaderFirstMiddleware`. Added later, they are not sent (see `LateHeaders`).

    Example:
        In a FastAPI dependency, with the request at hand::

            async def rate_limit(request: Request) -> None:
                late_headers(request).add("x-ratelimit-remaining-requests", 41)

        In a LiteLLM-style hook that gets only the response object (a stream, a model or a
        plain dict), inside an app wrapped in `HeaderFirstMiddleware`::

            async def async_post_call_success_hook(data, user_api_key_dict, response):
                late_headers().update({"x-ratelimit-api_key-remaining-tokens": 99_000})
                return response

    Args:
        request: A Starlette/FastAPI `Request` (or any object with a ``scope``), an ASGI
            scope, or ``None`` for the request being handled, which needs
            `HeaderFirstMiddleware` around the app.

    Raises:
        LookupError: ``request`` is ``None`` and no request handled by
            `HeaderFirstMiddleware` is active in this context.
    """
    if request is None:
        try:
            return CURRENT.get()
        except LookupError:
            raise LookupError(
                "late_headers() without a request needs HeaderFirstMiddleware around the app; "
                "add the middleware, or pass the Request or ASGI scope"
            ) from None
    scope: Scope = request if isinstance(request, dict) else request.scope  # type: ignore[union-attr]
    store: LateHeaders | object | None = scope.get(SCOPE_KEY)
    if isinstance(store, LateHeaders):
        return store
    created = scope[SCOPE_KEY] = LateHeaders(scope.get("path", ""))
    if store is _HEAD_SENT:
        created._sent = True  # the head went out before anything asked for the store
    return created


_missing_middleware_warned = False  # one WARNING per process, however many hooks call


def add_late_headers(headers: HeaderSource, request: Scope | HasScope | None = None) -> bool:
    """Add headers to the current request's response if that can be done; never raise.

    The form for hook, plugin and library authors, who cannot know whether the operator
    installed `HeaderFirstMiddleware`: a header is never worth failing a request for.
    App authors who want mistakes raised use `late_headers` instead.

    - Without ``request``, the store is the one `HeaderFirstMiddleware` made current for
      the request being handled. Without the middleware nothing is sent, and the first
      such call in the process logs one WARNING that says what to install.
    - With ``request`` (a Starlette/FastAPI `Request`, or an ASGI scope), the store is the
      request's own, created in its scope if need be: the middleware or a
      `HeaderFirstStreamingResponse` for that request sends it. With neither, nothing
      sends it, and nothing can tell at this point.
    - An invalid header (name, value, a framing header) is dropped with a WARNING that
      names it and says why; the valid headers of the same call are still added.
    - Headers added after the response head went out are not sent (a WARNING names them).

    Example:
        In a LiteLLM-style callback that gets no request::

            async def async_post_call_success_hook(data, user_api_key_dict, response):
                add_late_headers({"x-ratelimit-remaining-requests": 41})
                return response

    Args:
        headers: A mapping or (name, value) pairs; `int` values are sent as decimal text.
        request: A Starlette/FastAPI `Request` (or any object with a ``scope``), an ASGI
            scope, or ``None`` for the request being handled by `HeaderFirstMiddleware`.

    Returns:
        ``True`` if every header given will be sent with the response head; ``False`` if
        any was dropped (invalid), came too late, or found no request to go with.
    """
    global _missing_middleware_warned
    if request is None:
        store = CURRENT.get(None)
        if store is None:
            if not _missing_middleware_warned:
                _missing_middleware_warned = True
                logger.warning(
                    "add_late_headers() was called outside a request handled by "
                    "HeaderFirstMiddleware, so its headers are not sent (logged once per "
                    "process); add the middleware: app.add_middleware(HeaderFirstMiddleware), "
                    "or header_first_stream.install_middleware(app) from code that runs "
                    "after start-up"
                )
            return False
    else:
        scope = request if isinstance(request, dict) else getattr(request, "scope", None)
        if not isinstance(scope, dict):
            logger.warning(
                "add_late_headers() got request=%r, which is neither an ASGI scope nor has "
                "one; its headers are not sent (pass the Request, its scope, or nothing)",
                request,
            )
            return False
        store = late_headers(scope)
    raw, complete = _render_valid(headers, store._path)
    return store._update_raw(raw) and complete


def _render_valid(headers: HeaderSource, path: str) -> tuple[RawHeaders, bool]:
    """The valid headers of ``headers`` (each invalid one logged and dropped); all valid?"""
    entries: list[object]
    if isinstance(headers, Mapping):
        entries = list(headers.items())
    elif isinstance(headers, Iterable) and not isinstance(headers, str | bytes):
        entries = list(headers)
    else:
        logger.warning(
            "late headers dropped for %s: got %s (pass a mapping or (name, value) pairs)",
            path,
            type(headers).__name__,
        )
        return [], False
    raw: RawHeaders = []
    complete = True
    for entry in entries:
        try:
            raw += render_headers([entry])  # type: ignore[list-item]
        except HeaderValidationError as exc:
            complete = False
            logger.warning("late header dropped for %s: %s", path, exc)
    return raw, complete


def take_late_headers(
    scope: Scope, resolved: RawHeaders | None = None, outside: int | None = None
) -> tuple[RawHeaders, RawHeaders]:
    """The request's late headers not yet in a head, and all of them; ``[]`` without any.

    The store closes (later additions are refused) unless a holder of ours is ``outside``
    the taker (``None``: the response's case, every holder is). ``resolved``: the headers
    the taker's own resolver adds to the same head, recorded for
    `HeaderFirstMiddleware(expose_late_headers=True)`.
    """
    store: LateHeaders | object | None = scope.get(SCOPE_KEY)
    if isinstance(store, LateHeaders):
        return store._take(outside, resolved), store._raw
    scope[SCOPE_KEY] = _HEAD_SENT
    return _NONE_TAKEN


# `take_late_headers` without a store: one pair for every response (its lists are read,
# never changed, by every caller).
_NONE_TAKEN: tuple[RawHeaders, RawHeaders] = ([], [])


def end_without_head(scope: Scope) -> None:
    """A response of ours was stopped (its client left, or the server exits): drop the
    headers no head took, quietly; nothing at all was sent.

    Only when no `HeaderFirstMiddleware` holds the head outside it; the outermost one ends
    the store at the end of its request.
    """
    store = scope.get(SCOPE_KEY)
    if isinstance(store, LateHeaders) and not store._holders:
        store._end(client_left=True)


def head_taken_inside(scope: Scope) -> bool:
    """Whether a response of ours inside already decided the head (it took the headers)."""
    store = scope.get(SCOPE_KEY)
    return isinstance(store, LateHeaders) and store._decided


def late_names(scope: Scope) -> list[bytes]:
    """The names of every late header of the request, its resolvers' included.

    For `HeaderFirstMiddleware`, whose store is always in the scope; the resolvers' are those
    `take_late_headers` recorded (an inner response's, then the middleware's own).
    """
    store: LateHeaders = scope[SCOPE_KEY]
    return [name for name, _ in (*store._raw, *store._resolved)]
