"""`install_middleware`: add `HeaderFirstMiddleware` to a Starlette/FastAPI app, even a started one.

Starlette builds an app's middleware stack on the app's first call (the lifespan scope, or
the first request) and stores it in ``app.middleware_stack``; from then on
``add_middleware`` raises ``RuntimeError: Cannot add middleware after an application has
started``. Code loaded while the server starts (LiteLLM imports the callbacks named in its
``config.yaml`` then) comes too late for ``add_middleware``.

This module is the one place that relies on Starlette beyond its documented API: the
``middleware_stack`` attribute, which `Starlette.__init__` sets to ``None``, and
`Starlette.__call__` fills on first use and then calls for every scope (Starlette 1.10,
tested in tests/test_install_middleware.py). Replacing that attribute with the middleware
around the built stack takes effect from the next call on; calls in flight finish on the
stack they started on.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware

from ._middleware import HeaderFirstMiddleware

__all__ = ["install_middleware"]

_MAX_DEPTH = 100  # middleware stacks are a few layers deep; a cycle must not hang the walk


def install_middleware(app: Starlette, **options: Any) -> bool:
    """Add `HeaderFirstMiddleware` to a Starlette or FastAPI app, once, before or after start-up.

    Safe to call from code that runs at any time, as often as it is called: a plugin, a
    LiteLLM callback module, a start-up hook.

    - Before the app built its middleware stack, it is ``app.add_middleware(
      HeaderFirstMiddleware, **options)``: the outermost of the app's own middleware,
      inside Starlette's ``ServerErrorMiddleware``.
    - After (the app has started, so ``add_middleware`` would raise ``RuntimeError``), the
      built stack is wrapped: the middleware is then outside ``ServerErrorMiddleware``,
      so the ``500`` page it sends for an unhandled exception carries the request's late
      headers too. Requests already in flight finish without it.

    Args:
        app: The Starlette or FastAPI app (not an app already wrapped in other ASGI
            middleware: pass the app object that has ``add_middleware``).
        **options: `HeaderFirstMiddleware`'s keyword arguments (``resolver``,
            ``resolver_timeout``, ``on_resolver_error``).

    Returns:
        ``True`` if the middleware was installed; ``False`` if the app already had it
        (from ``add_middleware``, ``middleware=[...]`` or an earlier call), in which case
        ``options`` are not applied.

    Raises:
        TypeError: ``app`` is not a Starlette app, or an option is not one of the
            middleware's.
        ValueError: An option is out of range (checked now, not at the first request).
    """
    if not isinstance(app, Starlette):
        raise TypeError(
            f"install_middleware() needs a Starlette or FastAPI app, got {type(app).__name__}; "
            "wrap any other ASGI app directly: app = HeaderFirstMiddleware(app)"
        )
    if _installed(app):
        return False

    async def _validate_only(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        pass

    # Checks the options now: add_middleware would only build the middleware on first use.
    HeaderFirstMiddleware(_validate_only, **options)
    built = app.middleware_stack
    if built is None:
        app.add_middleware(HeaderFirstMiddleware, **options)
        return True
    # Listed as well, so that a stack rebuilt later (tests reset `middleware_stack`) has it
    # once, in add_middleware's place; the wrapper below is then discarded with the old stack.
    app.user_middleware.insert(0, Middleware(HeaderFirstMiddleware, **options))
    app.middleware_stack = HeaderFirstMiddleware(built, **options)
    return True


def _installed(app: Starlette) -> bool:
    for middleware in app.user_middleware:
        if isinstance(middleware.cls, type) and issubclass(middleware.cls, HeaderFirstMiddleware):
            return True
    layer: object = app.middleware_stack
    for _ in range(_MAX_DEPTH):
        if layer is None or isinstance(layer, HeaderFirstMiddleware):
            return layer is not None
        layer = getattr(layer, "app", None)
    return False
