"""Request-scoped late headers: a place to put headers from anywhere that handles a request.

The store for a request lives in its ASGI scope (under `SCOPE_KEY`), so it is found from
the scope, from a Starlette `Request`, or, inside `HeaderFirstMiddleware`, from a context
variable that the middleware sets for the request's own task. Each request gets its own
store, created for its own scope: nothing of one request can reach another.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Protocol

from starlette.types import Scope

from ._headers import merge_headers, render_headers
from ._types import HeaderSource, HeaderValue, RawHeaders

__all__ = ["SCOPE_KEY", "CURRENT", "LateHeaders", "late_headers", "take_late_headers"]

logger = logging.getLogger("header_first_stream")

SCOPE_KEY = "header_first_stream.late_headers"


class _HasScope(Protocol):
    @property
    def scope(self) -> Scope: ...


class LateHeaders:
    """The headers added for one request before its response head goes out.

    Later additions replace earlier ones of the same name. Once the head has been sent,
    additions are not sent: they are logged at WARNING, named, and `add`/`update`
    return ``False``.
    """

    __slots__ = ("_path", "_raw", "_sent")

    def __init__(self, path: str = "") -> None:
        self._raw: RawHeaders = []
        self._sent = False
        self._path = path

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
        raw = render_headers(headers)
        if self._sent:
            logger.warning(
                "late headers %s for %s were added after the response head was sent "
                "and are not sent; add them before the response starts",
                [name.decode("latin-1") for name, _ in raw],
                self._path,
            )
            return False
        self._raw = merge_headers(self._raw, raw)
        return True

    def items(self) -> list[tuple[str, str]]:
        """The headers added so far, as (name, value) pairs."""
        return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in self._raw]

    def take(self) -> RawHeaders:
        """Mark the headers as sent and return them (validated raw pairs)."""
        self._sent = True
        return self._raw


CURRENT: ContextVar[LateHeaders] = ContextVar("header_first_stream.current")


def late_headers(request: Scope | _HasScope | None = None) -> LateHeaders:
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
    store: LateHeaders | None = scope.get(SCOPE_KEY)
    if store is None:
        store = scope[SCOPE_KEY] = LateHeaders(scope.get("path", ""))
    return store


def take_late_headers(scope: Scope) -> RawHeaders:
    """Return the request's late headers and mark them sent; ``[]`` when it has none."""
    store: LateHeaders | None = scope.get(SCOPE_KEY)
    if store is None:
        return []
    return store.take()
