"""`HeaderFirstMiddleware`: the request's late headers on every response of an ASGI app.

A pure ASGI middleware (Starlette's ``BaseHTTPMiddleware`` would break streaming and
context variables). For each HTTP request it puts a `LateHeaders` store in the scope, makes
it the current one for `late_headers()`, and holds the inner app's ``http.response.start``
back until the app sends the message after it; only then are the late headers known.

A request's state lives in a `_Responder`, made per request: the app is given its
`_Responder.receive_watching` and `_Responder.send_holding`. Invariants, enforced there:

1. The inner app's ``http.response.start`` goes out at most once, just before the message
   that follows it (normally its first body message), with every late header added until
   then; or, if the app returns without a body message, followed by an empty final body.
2. After the head, messages are passed on as they come, unbuffered; the only work per
   message is one branch.
3. Nothing is invented when the app fails: if it raises before its head went out, nothing is
   sent and the exception propagates (an error middleware outside still answers ``500``);
   an app that sent nothing sends nothing.
4. A client that left before the head went out (the app received ``http.disconnect``)
   gets nothing more: the resolver, if running, is cancelled, and no head is sent after it.
   The check is on the holding path only, never per chunk after the head.
5. `CURRENT` is set for one request, in that request's own context, and reset when the
   request ends, however it ends.
6. Headers the middleware adds were validated when they were added (`LateHeaders`) or
   rendered (the resolver's). The inner app's own head is passed on as the app built it
   when the middleware adds nothing to it. When it adds headers, the app's own are passed
   on in their order with their names lower-cased (so that a late header replaces the
   app's of the same name whatever its case), less those that a late or resolver header
   of the same name replaces (``set-cookie`` is added to, never replaced); their values
   are the app's, not validated, and only the sizes of the new head are checked. Under
   ``expose_late_headers=True``, on CORS requests only, the app's
   ``access-control-expose-headers`` rows become one, last, with the late headers' names
   added.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._errors import plain_error
from ._headers import (
    DEFAULT_MAX_HEAD_SIZE,
    DEFAULT_MAX_HEADER_VALUE_SIZE,
    HeaderValidationError,
    check_head_size,
    merge_headers,
)
from ._late import CURRENT, LateHeaders, late_headers
from ._resolve import ResolverAttributes, ResolverFailed, ResolverOptions
from ._scope import spec_at_least_2_4
from ._types import AnyASGIApp, RawHeaders, ResolverErrorPolicy, ScopeHeaderResolver

__all__ = ["HeaderFirstMiddleware", "ScopeHeaderResolver"]

logger = logging.getLogger("header_first_stream")

_EXPOSE = b"access-control-expose-headers"


def _is_cors(scope: Scope) -> bool:
    # Browsers send Origin on every cross-origin fetch (and on some same-origin ones,
    # where an exposed name is harmless); servers give header names in lower case.
    return any(name == b"origin" for name, _ in scope.get("headers", ()))


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


def _last_body(body: bytes) -> Message:
    # A new message each time: one sent is the next middleware's to change.
    return {"type": "http.response.body", "body": body, "more_body": False}


class _Answered(Exception):
    """Raised from the app's ``send`` once the middleware answered in its place.

    Stops an app that runs without a cancel scope (no resolver): only a head over a size
    limit is answered there, too rare to pay for a cancel scope on every request.
    """


class HeaderFirstMiddleware(ResolverAttributes):
    """Send every late header of a request on its response, whatever the response class.

    Wrap any ASGI app (Starlette, FastAPI or bare) and every response class in it
    (`JSONResponse`, Starlette's own `StreamingResponse`, `FileResponse`, a plain `dict`
    that FastAPI serialises, `HeaderFirstStreamingResponse`). Lifespan and websocket
    scopes pass through untouched.

    For an HTTP request, the middleware:

    - puts the request's `LateHeaders` store in its scope (copies of the scope share it)
      and makes it current, so that ``late_headers()`` without an argument finds it
      anywhere in the request's task: in dependencies, in hooks, in tasks it starts and in
      sync endpoints run in the thread pool;
    - holds the app's ``http.response.start`` back until the app's next message (its first
      body message), then sends the head with the late headers merged in, then that
      message; after that it passes every message straight through.

    Headers are merged in this order, a later source replacing every header of the same
    name from an earlier one: the app's own head, the request's late headers, then
    ``resolver``'s. When the response is a `HeaderFirstStreamingResponse`, which already put
    the late headers in its head, they are not merged again.

    Decisions (each pinned by a test):

    - Headers added after the head went out are not sent: `LateHeaders.add` logs a WARNING
      naming them and returns ``False``.
    - An app that sends its head and returns without a body message gets an empty final
      body message, so that the response is complete (servers treat a missing final body
      as a broken response).
    - If the app raises before its head went out, nothing is sent and the exception
      propagates; if it raises after, it propagates too.
    - A client that disconnected before the head went out (the app received
      ``http.disconnect``) gets nothing more: a running ``resolver`` is cancelled at once,
      no head is sent, and what the app still sends is dropped (from ASGI spec 2.4 on,
      ``send`` raises `OSError` instead, as the server's own would). The app receives
      that ``http.disconnect`` once the ``send`` that ran the resolver has returned, so
      that an app that then cancels its streaming task (Starlette's `StreamingResponse`
      does) cancels it inside its body generator, which closes it, instead of leaving it
      to the garbage collector.
    - The middleware never calls ``receive`` itself (the app owns it), so it learns of a
      disconnect only through the app: Starlette's `StreamingResponse` (below spec 2.4),
      `HeaderFirstStreamingResponse` and sse-starlette listen while they stream. An app
      that never listens (`JSONResponse`, a plain ``dict``, any response sent in one go)
      leaves a ``resolver`` for a client that left running until it returns, bounded by
      ``resolver_timeout``; its head then goes to a server that drops it.
    - ``resolver`` failures are answered as `HeaderFirstStreamingResponse` answers them: a
      ``500`` (``504`` on timeout) with a short plain-text body and the request's late
      headers, the exception logged with the path; the app is then cancelled, and anything
      it still sends is dropped. With ``on_resolver_error="degrade"`` the response goes out
      without the resolver's headers, logged at WARNING.
    - ``resolver`` runs in the request's own context, in the task that sends the first
      body message: context variables the app set while handling the request are visible
      to it, and so are ``late_headers()``/``add_late_headers()`` without a request. So is
      the code of a streamed body up to its first chunk, which still runs while the head
      is held (except context variables set in a sync endpoint's worker thread).
    - A head the middleware adds nothing to is passed on as the app built it. One it adds
      headers to keeps the app's own in their order, names lower-cased, so that a late
      header replaces the app's header of the same name whatever its case; only the
      headers the middleware adds are its to validate, and they were validated when added.
    - Error responses that Starlette's ``ServerErrorMiddleware`` (outside any
      ``add_middleware`` middleware) sends for an exception do not carry the late headers.
    - With ``expose_late_headers=True``, a request with an ``Origin`` header gets the
      names of the late headers sent (the request's and the resolver's, and those an inner
      `HeaderFirstStreamingResponse` put in its own head, its resolver's included) added to
      ``Access-Control-Expose-Headers``. It must sit *outside* Starlette's
      `CORSMiddleware`, to merge with the list that one sets; inside it, a
      ``CORSMiddleware(expose_headers=[...])`` replaces the merged list with its own.
      The middleware's own error responses (resolver failures) are not changed.
    - A head the middleware changed is checked against ``max_header_value_size`` (each
      value, the app's included) and ``max_head_size`` (the whole head); over a limit, the
      response
      is a ``500`` without the late headers, logged naming the header and the limit. A
      head it did not change is passed on unchecked.

    Example:
        A FastAPI dependency that knows a header, and a deep helper that has no request::

            from fastapi import Depends, FastAPI, Request
            from header_first_stream import HeaderFirstMiddleware, late_headers

            app = FastAPI()
            app.add_middleware(HeaderFirstMiddleware)

            async def rate_limit(request: Request) -> None:
                late_headers(request).add("x-ratelimit-remaining-requests", 41)

            def record_cost(tokens: int) -> None:  # deep inside, no request at hand
                late_headers().add("x-cost-tokens", tokens)

            @app.post("/v1/messages", dependencies=[Depends(rate_limit)])
            async def messages() -> dict[str, str]:
                record_cost(12)
                return {"type": "message"}  # a plain dict: the headers still go out

        A LiteLLM-style post-call hook, called with the response object only::

            async def async_post_call_success_hook(data, user_api_key_dict, response):
                late_headers().update(
                    {"x-ratelimit-api_key-remaining-requests": remaining, ...}
                )
                return response

        The headers reach the client whether ``response`` is a stream, a model or a
        plain dict.

    Args:
        app: The ASGI app to wrap, whatever built it (Starlette, FastAPI, Litestar,
            Django, Quart, Falcon, or a bare ASGI callable).
        resolver: An optional async callable taking the request's ASGI scope and returning
            more headers, as a mapping or (name, value) pairs (`int` values rendered as
            decimal text); awaited once per request, when the head is about to go out. It
            may not set framing, connection-specific or server-owned fields
            (``REFUSED_LATE_HEADERS``, listed in ``docs/headers.md``).
        resolver_timeout: Seconds to wait for ``resolver``; ``None`` waits as long as it
            takes.
        on_resolver_error: What a failed, timed-out or invalid ``resolver`` leads to:
            ``"error"`` (default) or ``"degrade"``, as for `HeaderFirstStreamingResponse`.
        expose_late_headers: On CORS requests (with an ``Origin`` header), list the late
            headers' names in ``Access-Control-Expose-Headers``, so that a browser's
            ``fetch()`` can read them; see above for where to put the middleware.

    Raises:
        TypeError: ``resolver`` is not callable.
        ValueError: ``resolver_timeout`` or ``on_resolver_error`` is out of range.
    """

    max_header_value_size: int = DEFAULT_MAX_HEADER_VALUE_SIZE
    """Bytes one value of a head the middleware changed may hold (the app's values too)."""

    max_head_size: int = DEFAULT_MAX_HEAD_SIZE
    """Bytes the headers of a head the middleware changed may hold (``name: value\\r\\n``)."""

    def __init__(
        self,
        app: AnyASGIApp,
        *,
        resolver: ScopeHeaderResolver | None = None,
        resolver_timeout: float | None = None,
        on_resolver_error: ResolverErrorPolicy = "error",
        expose_late_headers: bool = False,
    ) -> None:
        # Litestar, Quart and Falcon type their ASGI callables with narrower scopes and
        # messages than Starlette's `ASGIApp`; the middleware takes any of them as it is.
        self.app: ASGIApp = app
        self._resolver_options = ResolverOptions.checked(
            option="resolver",
            resolver=resolver,
            timeout=resolver_timeout,
            policy=on_resolver_error,
            takes="the ASGI scope",
        )
        self.expose_late_headers = expose_late_headers

    _resolver_options: ResolverOptions[ScopeHeaderResolver]

    @property
    def resolver(self) -> ScopeHeaderResolver | None:
        return self._resolver_options.resolver

    @resolver.setter
    def resolver(self, value: ScopeHeaderResolver | None) -> None:
        self._resolver_options = self._resolver_options.replaced(resolver=value)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        store = late_headers(scope)
        token = CURRENT.set(store)
        try:
            await _Responder(self, scope, receive, send, store).respond()
        finally:
            CURRENT.reset(token)


def _forwarding(
    to: Callable[[Message], Awaitable[None]],
) -> tuple[Send, Callable[[Send], None]]:
    """The ``send`` an app gets, forwarding to ``to``, and the call that redirects it.

    The per-chunk path: a plain function with no branch, that returns the awaitable of
    what it forwards to as it is, so that no coroutine of ours is created per chunk. Its
    target lives in a closure cell, not an attribute: a bound method or an attribute read
    costs ~13 ns more per chunk (measured; Starlette's own cost is ~350 ns a chunk).
    """

    def send(message: Message) -> Awaitable[None]:
        return to(message)

    def redirect(target: Send) -> None:
        nonlocal to
        to = target

    return send, redirect


class _Responder:
    """One HTTP request through `HeaderFirstMiddleware`: the app's head, held, then released.

    The app gets `receive_watching` and `send_holding` in place of the server's
    ``receive`` and ``send``.
    """

    __slots__ = (
        "answered",
        "app_scope",
        "disconnected",
        "forward_to",
        "held",
        "middleware",
        "passthrough",
        "receive",
        "resolver_left",
        "resolving",
        "scope",
        "send",
        "send_holding",
        "store",
    )

    def __init__(
        self,
        middleware: HeaderFirstMiddleware,
        scope: Scope,
        receive: Receive,
        send: Send,
        store: LateHeaders,
    ) -> None:
        self.middleware = middleware
        self.scope = scope
        self.receive = receive  # the server's
        self.send = send  # the server's
        self.store = store
        # Response state.
        self.held: Message | None = None  # the app's start message, once it sent it
        self.passthrough = False  # the head went out: every message goes straight on
        # The app's send: `hold` until the head went out, the server's own after.
        self.send_holding, self.forward_to = _forwarding(self.hold)
        self.answered = False  # the middleware sent its own error response instead
        # Client state.
        self.disconnected = False  # the app received http.disconnect
        # Resolver state (with a resolver only).
        self.resolving: anyio.CancelScope | None = None  # while the resolver runs
        self.resolver_left: anyio.Event | None = None  # set when the resolver's scope exits
        # With a resolver, the app runs in this scope, to be stopped after an error answer.
        self.app_scope: anyio.CancelScope | None = None

    async def respond(self) -> None:
        app, scope = self.middleware.app, self.scope
        if self.middleware.resolver is None:
            try:
                await app(scope, self.receive_watching, self.send_holding)
            except _Answered:
                pass
            except BaseExceptionGroup as group:  # an app that sends from a task group
                rest = group.split(_Answered)[1]
                if rest is not None:
                    raise
        else:
            with anyio.CancelScope() as self.app_scope:
                await app(scope, self.receive_watching, self.send_holding)
        if self.held is not None and not (self.passthrough or self.answered or self.disconnected):
            # The app sent its head and returned without a body message.
            await self.release(self.held, _last_body(b""))

    async def receive_watching(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
            if self.resolving is not None:
                # The app may not cancel the task that holds the head (it may listen
                # elsewhere, or not cancel): cancel the resolver here. And hand the app its
                # disconnect only once the send that ran the resolver returned: an app that
                # cancels its streaming task then (Starlette's class does) cancels it in its
                # body iterator, which closes the iterator, instead of in our send, which
                # leaves the iterator to the garbage collector.
                self.resolver_left = anyio.Event()
                self.resolving.cancel()
                await self.resolver_left.wait()
        return message

    async def hold(self, message: Message) -> None:
        if self.answered:
            # The response is complete, so whatever the app still sends must not go out:
            # reached from a shielded clean-up in the cancelled app, or from an app that
            # caught `_Answered` and sends on.
            await self.stop_app()
            return
        if self.disconnected:
            # The client left before the head went out: nothing more goes out. As a server
            # does: dropped below spec 2.4, OSError from spec 2.4 on.
            if spec_at_least_2_4(self.scope):
                raise OSError(
                    "the client disconnected before the response head was sent "
                    "(the app received http.disconnect); stop sending"
                )
            # No checkpoint, as servers drop it: an app that cancels its streaming task on
            # the disconnect cancels it in its body iterator, which closes it.
            return
        if self.held is None:
            if message["type"] == "http.response.start":
                self.held = message
                return
            # Not a response message of ours (e.g. http.response.debug before the start,
            # or an app's protocol error, which the server reports).
            await self.send(message)
            return
        await self.release(self.held, message)
        if self.answered:
            await self.stop_app()

    async def stop_app(self) -> None:
        # The response is complete: stop the app instead of letting it stream into nothing.
        if self.app_scope is None:
            raise _Answered  # caught in `respond`
        self.app_scope.cancel()
        await anyio.lowlevel.checkpoint()

    async def release(self, start: Message, message: Message) -> None:
        """Send the head with the late headers, then ``message``; or an error response."""
        if self.middleware.resolver is None:
            prepared: tuple[Message, bytes | None] | None = await self.head(start)
        else:
            prepared = None
            try:
                with anyio.CancelScope() as self.resolving:
                    prepared = await self.head(start)
            finally:
                self.resolving = None
                if self.resolver_left is not None:
                    self.resolver_left.set()
        if prepared is None or self.disconnected:
            # Cancelled by `receive_watching`, or the resolver ended without noticing (a
            # worker thread): either way no head goes out.
            return
        head, error_body = prepared
        if error_body is None:
            self.passthrough = True
            self.forward_to(self.send)
            await self.send(head)
            await self.send(message)
            return
        self.answered = True
        await self.send(head)
        await self.send(_last_body(error_body))

    async def head(self, start: Message) -> tuple[Message, bytes | None]:
        """Return the head to send and, for an error response, its body."""
        middleware, scope, store = self.middleware, self.scope, self.store
        try:
            resolved = await middleware._resolver_options.run(
                (scope,),
                scope.get("path", ""),
                middleware.max_header_value_size,
                middleware.max_head_size,
            )
        except ResolverFailed as failure:
            return self.error(failure.status, failure.reason, store.take())
        # Taken only now, so that headers added while the resolver ran (by it, or by
        # another task of the request) still go out.
        already_in_head = store.sent
        late = store.take()
        exposed: list[bytes] = []
        if middleware.expose_late_headers and _is_cors(scope):
            # Those an inner HeaderFirstStreamingResponse's resolver sent are late too.
            exposed = [name for name, _ in (*late, *store._resolved, *resolved)]
        if already_in_head:
            # A HeaderFirstStreamingResponse inside put the late headers in its own head,
            # merged in its own order: do not merge them again.
            late = []
        if not late and not resolved and not exposed:
            return start, None
        own = [(bytes(name).lower(), bytes(value)) for name, value in start.get("headers", ())]
        headers = merge_headers(merge_headers(own, late), resolved)
        if exposed:
            headers = _with_exposed(headers, exposed)
        try:
            check_head_size(headers, middleware.max_header_value_size, middleware.max_head_size)
        except HeaderValidationError:
            logger.exception("response head too large for %s", scope.get("path", ""))
            return self.error(500, "Internal Server Error", [])
        return {**start, "headers": headers}, None

    def error(self, status: int, reason: str, late: RawHeaders) -> tuple[Message, bytes]:
        middleware = self.middleware
        headers, body = plain_error(reason, late)
        try:
            check_head_size(headers, middleware.max_header_value_size, middleware.max_head_size)
        except HeaderValidationError:
            logger.exception("response head too large for %s", self.scope.get("path", ""))
            headers, body = plain_error("Internal Server Error", [])
            status = 500
        return {"type": "http.response.start", "status": status, "headers": headers}, body
