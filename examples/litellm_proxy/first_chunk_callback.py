"""LiteLLM proxy callback: a header that only the stream's first chunk can tell.

``x-first-chunk-ms``: how long the upstream took, once the stream started, to send its
first chunk. LiteLLM's own ``async_post_call_response_headers_hook`` runs before that
chunk exists; this hook sees each chunk before the client does, and with
`HeaderFirstMiddleware` installed the header still goes out in the response head. Name it
in ``config.yaml`` beside ``header_first_callback.py``, which installs the middleware::

    litellm_settings:
      callbacks:
        - header_first_callback.proxy_handler_instance
        - first_chunk_callback.proxy_handler_instance

(This file does not install the middleware itself: of two `install_middleware` calls only
the first takes effect, so if LiteLLM imported this file first, the rate-limit resolver of
header_first_callback.py would be left out.)

Overriding the iterator hook takes LiteLLM off its pass-through fast path: one more async
generator step per chunk.
"""

import time
from collections.abc import AsyncIterator
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from header_first_stream import add_late_headers


class FirstChunkHeaders(CustomLogger):  # type: ignore[misc]  # LiteLLM ships no type information
    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: Any
    ) -> AsyncIterator[Any]:
        started = time.monotonic()
        first = True
        async for chunk in response:
            if first:
                first = False
                add_late_headers({"x-first-chunk-ms": round((time.monotonic() - started) * 1000)})
            yield chunk


proxy_handler_instance = FirstChunkHeaders()
