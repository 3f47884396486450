"""Reading an ASGI HTTP scope as Starlette and sse-starlette read it."""

from __future__ import annotations

from starlette.types import Scope

__all__ = ["is_head", "spec_at_least_2_4"]

# Parsed spec versions; a server sends the same string on every request.
_SPEC_AT_LEAST_2_4: dict[str, bool] = {}


def spec_at_least_2_4(scope: Scope) -> bool:
    """Whether the server speaks ASGI spec 2.4 or later (a disconnect raises from send)."""
    asgi = scope.get("asgi")
    version: str = "2.0" if asgi is None else asgi.get("spec_version", "2.0")
    known = _SPEC_AT_LEAST_2_4.get(version)
    if known is None:
        # As Starlette reads it, so "2.4.1" or "3" is accepted too.
        parsed = tuple(map(int, version.split(".")))
        known = _SPEC_AT_LEAST_2_4[version] = parsed >= (2, 4)
    return known


def is_head(scope: Scope) -> bool:
    """Whether the request is a HEAD, its method compared case-insensitively."""
    # Starlette never reads the method on this path: a scope without one is a GET here.
    method = scope.get("method")
    return method is not None and method.upper() == "HEAD"
