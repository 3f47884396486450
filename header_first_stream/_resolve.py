"""Running a header resolver, shared by `HeaderFirstStreamingResponse` and the middleware.

`ResolverOptions` holds a resolver with its timeout and failure policy, validated once
when a response or the middleware is built; `ResolverOptions.run` runs it. `Option` reads
one of them back as a public attribute (validated again when assigned).

Invariants, enforced in `ResolverOptions.run`:

1. A resolver's outcome is one of three, decided here and nowhere else: its validated
   headers; no headers (``"degrade"``, logged at WARNING); or `Failed`, which
   `decide_head` answers with an error response (``"error"``, logged with the traceback).
2. A cancellation of the task that awaits the resolver propagates (the client left, a
   timeout middleware, the server shutting down); a ``CancelledError`` the resolver raises
   while that task is not cancelled (it awaited a future another task cancelled) is a
   resolver failure like any other exception.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from types import CoroutineType, FunctionType
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar, overload

import anyio

from ._headers import check_head_size, render_headers
from ._lifeline import Pending, Stopped, cancel_requested, step
from ._types import HeaderSource, RawHeaders, ResolverErrorPolicy

if TYPE_CHECKING:
    from starlette.types import Scope

    from ._head import Limits

__all__ = [
    "Failed",
    "Option",
    "ResolverCancelledError",
    "ResolverOptions",
    "Waiting",
    "take_resolver_options",
]

logger = logging.getLogger("header_first_stream")


class Failed(NamedTuple):
    """The resolver failed under the ``"error"`` policy: answer ``status`` instead."""

    status: int
    reason: str


_YIELDS = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR


def _not_async(resolver: object) -> str | None:
    """Why ``resolver`` cannot return an awaitable, when that is known before a call.

    Known for a named function that is not ``async def`` (a bound method's too) and for a
    generator function, also inside a `functools.partial`. Not known for a lambda or a
    decorator's wrapper (``functools.wraps``), which may return a coroutine
    (``lambda: limiter.headers_for(key)``), nor for other callables (an object with a
    ``__call__``, a mock): what they return is checked when they are called.
    """
    function = getattr(resolver, "__func__", resolver)  # a bound method's function
    if type(function) is not FunctionType:
        if isinstance(function, functools.partial):
            return _not_async(function.func)
        return None
    flags = function.__code__.co_flags
    if flags & inspect.CO_COROUTINE:  # the common case, fast
        return None
    name = function.__name__
    if (
        name == "<lambda>"
        or hasattr(function, "__wrapped__")  # a decorator's wrapper, as functools.wraps makes
        or inspect.iscoroutinefunction(function)  # marked, e.g. by markcoroutinefunction
    ):
        return None
    if flags & _YIELDS:
        kind = "an async generator" if flags & inspect.CO_ASYNC_GENERATOR else "a generator"
        return (
            f"{name}() is {kind} function, so it returns no awaitable; return the "
            f"headers from `async def {name}(...)` instead of yielding them"
        )
    return (
        f"{name}() is a plain function, so awaiting what it returns fails on every "
        f"request; declare it `async def {name}(...)`"
    )


def _code_of(resolver: object) -> object:
    """The code a resolver runs: its function's (a bound method's, a partial's), else its type."""
    function = getattr(resolver, "__func__", resolver)
    while isinstance(function, functools.partial):
        function = getattr(function.func, "__func__", function.func)
    return getattr(function, "__code__", None) or type(function)


class _Timeout(Exception):
    pass


class ResolverCancelledError(RuntimeError):
    """The resolver raised ``CancelledError`` while its request was not cancelled."""


R = TypeVar("R", bound=Callable[..., Awaitable[HeaderSource]])


class ResolverOptions(NamedTuple, Generic[R]):
    """A header resolver (``None``: none) with its timeout and failure policy.

    Built by `checked`, once per response or middleware; read by the public attributes
    that name the options as the caller gave them.
    """

    resolver: R | None
    timeout: float | None  # seconds; None waits as long as it takes
    policy: ResolverErrorPolicy
    # For the error messages of `replaced`: the resolver argument's name, what it takes.
    option: str = "header_resolver"
    takes: str | None = None
    code: object = None  # the resolver's code, which `first_of` remembers things about

    @classmethod
    def checked(
        cls,
        *,
        option: str,
        resolver: R | None,
        timeout: float | None,
        policy: ResolverErrorPolicy,
        takes: str | None = None,
    ) -> ResolverOptions[R]:
        """Validate the options as given.

        Args:
            option: The resolver argument's name, for the error message.
            resolver: The resolver, or ``None``.
            timeout: ``resolver_timeout``.
            policy: ``on_resolver_error``.
            takes: What the resolver is called with, for the error message (``None``:
                not said).

        Raises:
            TypeError: ``resolver`` is not callable.
            ValueError: ``timeout`` or ``policy`` is out of range.
        """
        return _reused(resolver, timeout, policy, option, takes) or cls._validated(
            option, resolver, timeout, policy, takes
        )

    @classmethod
    def _validated(
        cls,
        option: str,
        resolver: R | None,
        timeout: float | None,
        policy: ResolverErrorPolicy,
        takes: str | None,
    ) -> ResolverOptions[R]:
        """`checked`, for options not the last ones: validated, and kept as the last."""
        taking = "" if takes is None else f" taking {takes}"
        if resolver is not None and not callable(resolver):
            raise TypeError(
                f"{option} must be an async callable{taking}, got {type(resolver).__name__}"
            )
        reason = None if resolver is None else _not_async(resolver)
        if reason is not None:
            raise TypeError(f"{option} must be an async callable{taking}: {reason}")
        if timeout is not None and not timeout > 0:
            raise ValueError(
                f"resolver_timeout must be a positive number of seconds or None, got {timeout!r}"
            )
        if policy not in ("error", "degrade"):
            raise ValueError(f"on_resolver_error must be 'error' or 'degrade', got {policy!r}")
        code = None if resolver is None else _code_of(resolver)
        options = _last_checked[0] = cls(resolver, timeout, policy, option, takes, code)
        return options

    def replaced(self, **changes: Any) -> ResolverOptions[R]:
        """These options with ``changes`` (``resolver``, ``timeout``, ``policy``), validated."""
        options = {"resolver": self.resolver, "timeout": self.timeout, "policy": self.policy}
        return self.checked(option=self.option, takes=self.takes, **{**options, **changes})

    async def run(self, args: tuple[Any, ...], scope: Scope, limits: Limits) -> RawHeaders | Failed:
        """Await the resolver called with ``args``; return its validated headers.

        Without a resolver, no headers. ``scope``'s path names the request in the log;
        ``limits`` (the caller's ``max_header_value_size`` and ``max_head_size``) cap the
        headers. `Failed` when it raised (a ``CancelledError`` too, when this task was not
        cancelled), timed out, or returned an invalid, refused or oversized header, and the
        policy is ``"error"`` (500, or 504 on timeout).
        """
        if self.resolver is None:
            return []
        try:
            call = self._called(args)
            if self.timeout is None:
                try:
                    source = await call
                except anyio.get_cancelled_exc_class() as exc:
                    raise _stray_unless_cancelled(exc) from exc
            else:
                source = await _call_in_scope(call, self.timeout)
            return _rendered(source, limits)
        except _Timeout:
            return self._timed_out(scope)
        except Exception:
            return self._failed(scope)

    def start(
        self, args: tuple[Any, ...], scope: Scope, limits: Limits
    ) -> RawHeaders | Failed | Waiting:
        """`run`, as far as the resolver goes without waiting: its outcome, or `Waiting`.

        At ASGI spec 2.4 a resolver that returns at once (a constant, a cache hit) then
        costs no listener and no cancel scope, once its code is known to step safely
        (`_lifeline.step`); `Waiting` runs any other call, in the scope.
        """
        resolver = self.resolver
        if resolver is None:
            return []
        try:
            # `_called`, inline: this runs for every response at 2.4 (mostly without args).
            call = resolver(*args) if args else resolver()
            if call.__class__ is not CoroutineType:  # another awaitable: stepped as one
                call = _awaited(self._called_checked(call))
            stepped: HeaderSource | Pending[HeaderSource]
            if self.timeout is None:
                try:
                    stepped = step(call, self.code)
                except anyio.get_cancelled_exc_class() as exc:
                    raise _stray_unless_cancelled(exc) from exc
            else:  # the deadline's scope opens at once: entered inside the lifeline's
                stepped = step(_call_in_scope(call, self.timeout), eager=False)
            if isinstance(stepped, Pending):
                return Waiting(self, stepped, scope, limits)
            if stepped.__class__ is dict and not stepped:  # `_rendered`, for no headers
                return []
            return _rendered(stepped, limits)
        except Exception:  # a timeout's call is not stepped: its `_Timeout` comes later
            return self._failed(scope)

    def _called(self, args: tuple[Any, ...]) -> Awaitable[HeaderSource]:
        assert self.resolver is not None
        return self._called_checked(self.resolver(*args))

    def _called_checked(self, call: object) -> Awaitable[HeaderSource]:
        """``call``, what the resolver returned, if it can be awaited."""
        if call.__class__ is not CoroutineType and not inspect.isawaitable(call):
            raise TypeError(
                f"{self.option} returned {type(call).__name__}, not an awaitable: "
                "declare it `async def`"
            )
        return call

    def _timed_out(self, scope: Scope) -> RawHeaders | Failed:
        seconds, path = self.timeout, scope.get("path", "")
        if self.policy == "degrade":
            logger.warning(
                "header resolver timed out after %ss for %s; "
                "sending the response without its headers",
                seconds,
                path,
            )
            return []
        logger.error("header resolver timed out after %ss for %s", seconds, path)
        return Failed(504, "Gateway Timeout")

    def _failed(self, scope: Scope) -> RawHeaders | Failed:
        """The outcome of the exception being handled (called in its ``except`` block)."""
        path = scope.get("path", "")
        if self.policy == "degrade":
            logger.warning(
                "header resolver failed for %s; sending the response without its headers",
                path,
                exc_info=True,
            )
            return []
        logger.exception("header resolver failed for %s", path)
        return Failed(500, "Internal Server Error")


def take_resolver_options(
    response: Any, resolver: Any, timeout: float | None, policy: ResolverErrorPolicy
) -> None:
    """Set a response's ``header_resolver`` options when any is given (checked)."""
    if resolver is None and timeout is None and policy == "error":
        return
    # `checked`, without its keyword arguments: once per response.
    option = "header_resolver"
    response._resolver_options = _reused(
        resolver, timeout, policy, option, None
    ) or ResolverOptions._validated(option, resolver, timeout, policy, None)


def _reused(
    resolver: Any, timeout: float | None, policy: str, option: str, takes: str | None
) -> ResolverOptions[Any] | None:
    """The options of the last response, if these are the same (an endpoint builds one
    response per request): checked already, and shared, so an open stream holds no copy."""
    last = _last_checked[0]
    if (
        last is not None
        and last.resolver is resolver
        and last.timeout is timeout
        and last.policy is policy
        and last.option == option
        and last.takes is takes
    ):
        return last
    return None


class Waiting:
    """A resolver that waits (`ResolverOptions.start`): `finish` awaits its outcome."""

    __slots__ = ("_limits", "_options", "_pending", "_scope")

    def __init__(
        self,
        options: ResolverOptions[Any],
        pending: Pending[HeaderSource],
        scope: Scope,
        limits: Limits,
    ) -> None:
        self._options = options
        self._pending = pending
        self._scope = scope
        self._limits = limits

    async def finish(
        self, listen: Callable[..., Awaitable[object]], *args: object
    ) -> RawHeaders | Failed | None:
        """The outcome, as `ResolverOptions.run` gives it, unless ``listen(*args)`` returns
        first (the client left): then ``None``, the resolver cancelled."""
        options = self._options
        try:
            try:
                source = await self._pending.watched(listen, *args)
            except anyio.get_cancelled_exc_class() as exc:
                raise _stray_unless_cancelled(exc) from exc
            return _rendered(source, self._limits)
        except Stopped:
            return None
        except _Timeout:
            return options._timed_out(self._scope)
        except Exception:
            return options._failed(self._scope)


async def _awaited(call: Awaitable[HeaderSource]) -> HeaderSource:
    """``call`` (an awaitable other than a coroutine) as a coroutine, which `step` can step."""
    return await call


def _rendered(source: HeaderSource, limits: Limits) -> RawHeaders:
    # Validates, and refuses framing, connection-specific and server-owned headers.
    headers = render_headers(source)
    if headers:
        check_head_size(headers, limits.max_header_value_size, limits.max_head_size)
    return headers


# The options `ResolverOptions.checked` returned last (immutable, so shared safely; it keeps
# at most one resolver alive).
_last_checked: list[ResolverOptions[Any] | None] = [None]


class Option:
    """A resolver option read back as a public attribute, validated when assigned.

    ``field``: the `ResolverOptions` field it names. The owner keeps its options in
    ``_resolver_options``.
    """

    def __init__(self, field: str) -> None:
        self.field = field

    @overload
    def __get__(self, instance: None, owner: type) -> Option: ...
    @overload
    def __get__(self, instance: object, owner: type) -> Any: ...
    def __get__(self, instance: object, owner: type) -> Any:
        if instance is None:
            return self
        return getattr(instance._resolver_options, self.field)  # type: ignore[attr-defined]

    def __set__(self, instance: object, value: Any) -> None:
        options: ResolverOptions[Any] = instance._resolver_options  # type: ignore[attr-defined]
        instance._resolver_options = options.replaced(**{self.field: value})  # type: ignore[attr-defined]


async def _call_in_scope(call: Awaitable[HeaderSource], seconds: float) -> HeaderSource:
    stray: BaseException | None = None
    with anyio.CancelScope(deadline=anyio.current_time() + seconds) as scope:
        try:
            return await call
        except anyio.get_cancelled_exc_class() as exc:
            if scope.cancel_called or cancel_requested():
                raise  # the deadline, or a cancellation of this task
            stray = exc
    if stray is not None:
        raise _stray() from stray
    raise _Timeout


def _stray_unless_cancelled(exc: BaseException) -> ResolverCancelledError:
    """The error for a ``CancelledError`` the resolver raised: re-raised if this task is
    being cancelled, else a `ResolverCancelledError` (it awaited something another task
    cancelled)."""
    if cancel_requested():
        raise exc
    return _stray()


def _stray() -> ResolverCancelledError:
    return ResolverCancelledError(
        "the header resolver raised CancelledError, but its request was not cancelled "
        "(it awaited something another task cancelled)"
    )
