"""header-first-stream: every header your ASGI app computes reaches the client.

`HeaderFirstStreamingResponse` holds back its head until an async header resolver has
returned; `normalize_response` gives plain-dict results the ``_hidden_params`` that
LiteLLM-style hooks write headers into; `late_headers` is a request-scoped place to put
headers from anywhere that handles the request.
"""

from ._headers import HeaderValidationError
from ._late import LateHeaders, late_headers
from ._normalize import HiddenParamsDict, get_additional_headers, normalize_response
from ._response import HeaderFirstStreamingResponse
from ._types import ChunkHeaderResolver, EarlyErrorHandler, HeaderResolver, HeaderSource

__version__ = "0.1.0"

__all__ = [
    "ChunkHeaderResolver",
    "EarlyErrorHandler",
    "HeaderFirstStreamingResponse",
    "HeaderResolver",
    "HeaderSource",
    "HeaderValidationError",
    "HiddenParamsDict",
    "LateHeaders",
    "__version__",
    "get_additional_headers",
    "late_headers",
    "normalize_response",
]
