"""header-first-stream: every header your ASGI app computes reaches the client.

`HeaderFirstStreamingResponse` holds back its head until an async header resolver has
returned; `normalize_response` gives plain-dict results the ``_hidden_params`` that
LiteLLM-style hooks write headers into; `late_headers` is a request-scoped place to put
headers from anywhere that handles the request, and `add_late_headers` its never-raising
form for hook authors; `install_middleware` adds `HeaderFirstMiddleware` to an app, even
one that has started.
"""

# Aliased: the package namespace holds only the public names (tests/test_public_api.py).
from typing import TYPE_CHECKING as _TYPE_CHECKING

from ._headers import HeaderValidationError
from ._install import install_middleware
from ._late import HasScope, LateHeaders, add_late_headers, late_headers
from ._middleware import HeaderFirstMiddleware
from ._normalize import HiddenParamsDict, get_additional_headers, normalize_response
from ._response import HeaderFirstStreamingResponse
from ._shutdown import begin_shutdown
from ._types import (
    ChunkHeaderResolver,
    EarlyErrorHandler,
    EventHeaderResolver,
    HeaderResolver,
    HeaderSource,
    HeaderValue,
    ResolverErrorPolicy,
    ScopeHeaderResolver,
)

if _TYPE_CHECKING:  # pragma: no cover - for type checkers; imported on first use below
    from ._sse import HeaderFirstEventSourceResponse as HeaderFirstEventSourceResponse

__version__ = "0.1.0"

__all__ = [  # and _LAZY_NAMES, below
    "ChunkHeaderResolver",
    "EarlyErrorHandler",
    "EventHeaderResolver",
    "HasScope",
    "HeaderFirstMiddleware",
    "HeaderFirstStreamingResponse",
    "HeaderResolver",
    "HeaderSource",
    "HeaderValidationError",
    "HeaderValue",
    "HiddenParamsDict",
    "LateHeaders",
    "ResolverErrorPolicy",
    "ScopeHeaderResolver",
    "__version__",
    "add_late_headers",
    "begin_shutdown",
    "get_additional_headers",
    "install_middleware",
    "late_headers",
    "normalize_response",
]


# Public too, but imported on first use, and left out of `__all__` so that
# `from header_first_stream import *` does not import sse-starlette (or fail without it).
_LAZY_NAMES = ("HeaderFirstEventSourceResponse",)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_NAMES})


def __getattr__(name: str) -> object:
    # The SSE response needs the `sse` extra, and importing sse-starlette patches uvicorn:
    # import it on first use only. Without the extra this raises an ImportError that says
    # what to install.
    if name == "HeaderFirstEventSourceResponse":
        from ._sse import HeaderFirstEventSourceResponse as HeaderFirstEventSourceResponse

        globals()[name] = HeaderFirstEventSourceResponse
        return HeaderFirstEventSourceResponse
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
