"""`HeaderFirstMiddleware`: the request's late headers on every response of an ASGI app.

A pure ASGI middleware (Starlette's ``BaseHTTPMiddleware`` would break streaming and
context variables). For each HTTP request it puts a `LateHeaders` store in the scope, makes
it the current one for `late_headers()`, and holds the inner app's ``http.response.start``
back until the app sends the message after it, or a bounded hold expires; only then are the
late headers known.

A request's state lives in a `_Responder`, made per request, whose lifecycle is the explicit
`HeadState`: the app is given its `_Responder.receive_watching` and `_Responder.send_holding`,
and the hold's timer is a side task of the request's `Lifeline`. Invariants, enforced there:

1. The inner app's ``http.response.start`` goes out at most once: just before the message
   that follows it, or when the hold expires, with every late header added until then
   (decided by `decide_head`, as every head of this package); or, if the app returns
   without a body message, followed by an empty final body.
2. After the head, messages are passed on as they come, unbuffered; the only work per
   message is one call through a closure.
3. Nothing is invented when the app fails: if it raises before its head went out, nothing is
   sent and the exception propagates (an error middleware outside still answers ``500``);
   an app that sent nothing sends nothing.
4. A client that left before the head went out (the app received ``http.disconnect``)
   gets nothing more: the resolver, if running, is cancelled, and no head is sent after it.
5. `CURRENT` is set for one request, in that request's own context, and reset when the
   request ends, however it ends; nothing of the request (the hold's timer) runs after.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._head import Prepared, decide_head
from ._late import CURRENT, LateHeaders, head_taken_inside, late_headers
from ._lifeline import Lifeline, Side
from ._resolve import Option, ResolverOptions
from ._scope import spec_at_least_2_4
from ._types import ResolverErrorPolicy, ScopeHeaderResolver

__all__ = ["DEFAULT_HEAD_HOLD", "HeaderFirstMiddleware", "ScopeHeaderResolver"]

logger = logging.getLogger("header_first_stream")

DEFAULT_HEAD_HOLD = 1.0
"""Seconds `HeaderFirstMiddleware` holds a head that no body message follows.

Measured both ways: LiteLLM spends at most 5 ms (90th percentile) between a stream's head and
its first chunk (``docs/litellm.md``), while clients of idle streams give up on a head held
much longer (the MCP SDK's ``sse_client`` waits 5 s; its OAuth-flow tests, run against its
own class behind the middleware, time out with a 5 s hold and pass with 1 s).
"""


def _is_cors(scope: Scope) -> bool:
    # Browsers send Origin on every cross-origin fetch (and on some same-origin ones,
    # where an exposed name is harmless); servers give header names in lower case.
    return any(name == b"origin" for name, _ in scope.get("headers", ()))


def _last_body(body: bytes) -> Message:
    # A new message each time: one sent is the next middleware's to change.
    return {"type": "http.response.body", "body": body, "more_body": False}


class HeaderFirstMiddleware:
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
      body message) or until ``head_hold_timeout`` expires, whichever comes first, then
      sends the head with the late headers known by then merged in; after that it passes
      every message straight through. A `HeaderFirstStreamingResponse` inside, which
      already decided its head, is not held at all: its head goes out at once, with the
      late headers added since it decided it.

    Headers are merged in this order, a later source replacing every header of the same
    name from an earlier one: the app's own head, the request's late headers, then
    ``resolver``'s. When the response is a `HeaderFirstStreamingResponse`, which already put
    the late headers in its head, they are not merged again.

    Decisions (each pinned by a test):

    - Headers added after the head went out are not sent: `LateHeaders.add` logs a WARNING
      naming them and returns ``False``. The store stays open until the outermost
      middleware of ours sends the head: a `BaseHTTPMiddleware` inside it may still add
      headers after ``call_next`` returned.
    - An idle stream (its head sent, no body yet: long polling, a quiet SSE channel, a
      slow first token) gets its head after ``head_hold_timeout`` seconds, so that its
      client (a browser's ``EventSource``, an MCP client) sees it open.
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
      is held (except context variables set in a sync endpoint's worker thread). When
      the hold expires instead, the resolver runs in the hold's timer, in a copy of the
      context taken when the app sent its head: what the app set after that is not seen.
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
        head_hold_timeout: Seconds the app's head is held when no body message follows
            it (default 1); ``None`` holds it until the first body
            message, however long that takes.

    Raises:
        TypeError: ``resolver`` is not an async callable.
        ValueError: ``resolver_timeout``, ``on_resolver_error`` or ``head_hold_timeout``
            is out of range.
    """

    # The defaults are written out (`_headers.DEFAULT_MAX_*`, `DEFAULT_HEAD_HOLD`; a test pins
    # them equal), so that the API reference shows the numbers, not private names.
    max_header_value_size: int = 8192
    """Bytes one value of a head the middleware changed may hold (the app's values too)."""

    max_head_size: int = 16384
    """Bytes the headers of a head the middleware changed may hold (``name: value\\r\\n``)."""

    resolver = Option("resolver")
    resolver_timeout = Option("timeout")
    on_resolver_error = Option("policy")

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],  # any ASGI app, however its framework types it
        *,
        resolver: ScopeHeaderResolver | None = None,
        resolver_timeout: float | None = None,
        on_resolver_error: ResolverErrorPolicy = "error",
        expose_late_headers: bool = False,
        head_hold_timeout: float | None = 1.0,
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
        if head_hold_timeout is not None and (
            isinstance(head_hold_timeout, bool)
            or not isinstance(head_hold_timeout, (int, float))
            or not head_hold_timeout >= 0
        ):
            raise ValueError(
                "head_hold_timeout must be a number of seconds >= 0 or None (hold until the "
                f"first body message), got {head_hold_timeout!r}"
            )
        self.head_hold_timeout = head_hold_timeout

    _resolver_options: ResolverOptions[ScopeHeaderResolver]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        store = late_headers(scope)
        token = CURRENT.set(store)
        responder = _Responder(self, scope, receive, send, store)
        try:
            await responder.respond()
        finally:
            CURRENT.reset(token)
            # The end of the request, for the outermost holder: headers no head took are
            # named now (never silent), not when the scope is freed.
            if store._pending and not responder.outside:
                store._end(client_left=responder.state is HeadState.CLIENT_LEFT)


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


class HeadState(enum.Enum):
    """Where one request's head is (`_Responder.state`); every method checks it."""

    AWAITING = "the app has not sent its head"
    HOLDING = "the app's head is held"
    RELEASING = "the head is being decided and sent"
    PASSING = "the head went out: messages pass straight through"
    ANSWERED = "the middleware sent its own error response in the app's place"
    CLIENT_LEFT = "the client left before the head went out: nothing more goes out"


class _Responder:
    """One HTTP request through `HeaderFirstMiddleware`: the app's head, held, then released."""

    __slots__ = (
        "body_open",
        "forward_to",
        "held",
        "lifeline",
        "middleware",
        "outside",
        "receive",
        "released",
        "resolver_left",
        "resolving",
        "scope",
        "send",
        "send_holding",
        "state",
        "timer",
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
        self.outside = store._hold()  # holders of ours outside this one
        self.lifeline = Lifeline()  # the app runs in its scope; the hold's timer beside it
        # Response state.
        self.state = HeadState.AWAITING
        self.held: Message | None = None  # the app's start message, once it sent it
        # The app's send: `hold` until the head went out, the server's own after.
        self.send_holding, self.forward_to = _forwarding(self.hold)
        self.timer: Side | None = None  # sends a held head when no body follows it
        self.released: anyio.Event | None = None  # set once a release ended (if awaited)
        self.body_open = False  # the timer sent the head; the app's final body has not passed
        # Resolver state (with a resolver only).
        self.resolving: anyio.CancelScope | None = None  # while the resolver runs
        self.resolver_left: anyio.Event | None = None  # set when the resolver's scope exits

    async def respond(self) -> None:
        try:
            await self.lifeline.run(self.run_app)
            if self.state is HeadState.HOLDING:
                # The app sent its head and returned without a body message.
                await self.release(_last_body(b""))
            elif self.body_open:
                await self.send(_last_body(b""))  # the timer sent its head; no body followed
        finally:
            # The app's send refers back to this responder: let go of it, so that the
            # request (its scope, its late-header store) is freed when it ends, not later by
            # the garbage collector (a store whose headers no head took logs it when freed).
            del self.send_holding, self.forward_to

    async def run_app(self, lifeline: Lifeline) -> None:
        await self.middleware.app(self.scope, self.receive_watching, self.send_holding)

    async def receive_watching(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.disconnect" and self.state in _BEFORE_HEAD:
            self.state = HeadState.CLIENT_LEFT
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
        state = self.state
        if state is HeadState.HOLDING:  # the message after the head: release it now
            if self.timer is not None:
                self.timer.cancel()
            await self.release(message)
        elif state is HeadState.AWAITING:
            if message["type"] != "http.response.start":
                # Not a response message of ours (e.g. http.response.debug before the
                # start, or an app's protocol error, which the server reports).
                await self.send(message)
                return
            self.held = message
            self.state = HeadState.HOLDING
            seconds = self.middleware.head_hold_timeout
            if head_taken_inside(self.scope):
                await self.release(None, by_timer=False)  # ours decided it: nothing to wait for
            elif seconds is not None:
                self.timer = self.lifeline.start_soon(self.release_after, seconds)
        elif state is HeadState.RELEASING:  # the timer is sending the head: wait for it
            if self.released is None:
                self.released = anyio.Event()
            await self.released.wait()
            await self.send_holding(message)
        elif state is HeadState.CLIENT_LEFT and spec_at_least_2_4(self.scope):
            # Nothing more goes out. As a server does: dropped below spec 2.4, OSError from
            # spec 2.4 on. No checkpoint, as servers drop it: an app that cancels its
            # streaming task on the disconnect cancels it in its body iterator, closing it.
            raise OSError(
                "the client disconnected before the response head was sent "
                "(the app received http.disconnect); stop sending"
            )
        if self.stopped_after_answer():
            await anyio.lowlevel.checkpoint()

    async def release_after(self, seconds: float) -> None:
        await anyio.sleep(seconds)
        if self.state is HeadState.HOLDING:
            await self.release(None, by_timer=True)
            self.stopped_after_answer()

    def stopped_after_answer(self) -> bool:
        """Stop the app once the middleware answered: nothing it still sends goes out."""
        if self.state is not HeadState.ANSWERED:
            return False
        self.lifeline.stop()
        return True

    async def release(self, message: Message | None, by_timer: bool = False) -> None:
        """Send the head with the late headers, then ``message``; or an error response."""
        self.state = HeadState.RELEASING
        prepared: Prepared | None = None
        try:
            if self.middleware.resolver is None:
                prepared = await self.decide()
            else:
                try:
                    with anyio.CancelScope() as self.resolving:
                        prepared = await self.decide()
                finally:
                    self.resolving = None
                    if self.resolver_left is not None:
                        self.resolver_left.set()
            await self.send_decided(prepared, message, by_timer)
        finally:
            if self.released is not None:
                self.released.set()

    async def send_decided(
        self, prepared: Prepared | None, message: Message | None, by_timer: bool
    ) -> None:
        if prepared is None or self.state is HeadState.CLIENT_LEFT:
            # Cancelled by `receive_watching`, or the resolver ended without noticing (a
            # worker thread): either way no head goes out.
            self.state = HeadState.CLIENT_LEFT
            return
        if prepared.error_body is not None:
            self.state = HeadState.ANSWERED
            await self.send(prepared.start)
            await self.send(_last_body(bytes(prepared.error_body)))
            return
        self.state = HeadState.PASSING
        if by_timer:  # no body followed the head: see whether the app completes one
            self.body_open = True
            self.forward_to(self.pass_on)
        else:
            self.forward_to(self.send)
        await self.send(prepared.start)
        if message is not None:
            await self.send(message)

    async def pass_on(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.body_open = False
        await self.send(message)

    async def decide(self) -> Prepared:
        """The head to send, decided as every head of this package is (`decide_head`)."""
        middleware, scope, held = self.middleware, self.scope, self.held
        assert held is not None  # released only once the app sent its head
        outcome = await middleware._resolver_options.run((scope,), scope, middleware)
        return decide_head(
            scope,
            held.get("status", 200),
            list(held.get("headers", ())),
            outcome,
            middleware,
            owner=None,
            message=held,
            outside=self.outside,
            expose=middleware.expose_late_headers and _is_cors(scope),
        )


_BEFORE_HEAD = frozenset({HeadState.AWAITING, HeadState.HOLDING, HeadState.RELEASING})
