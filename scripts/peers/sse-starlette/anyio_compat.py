"""What sse-starlette's tests import as ``tests.anyio_compat`` (not in its sdist)."""

from sse_starlette._utils import collapse_excgroups

__all__ = ["collapse_excgroups"]
