"""LiteLLM proxy callback: the ``x-ratelimit-*`` headers on streaming responses too.

Name it in ``config.yaml`` (``litellm_settings: callbacks:
header_first_callback.proxy_handler_instance``). Importing it installs
`HeaderFirstMiddleware` into the running proxy; from then on every header added with
``add_late_headers()`` before a response's first chunk reaches the client, and the
resolver below adds the rate-limit headers that LiteLLM's limiter computed for the request.
"""

from typing import Any

from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy.hooks.parallel_request_limiter_v3 import get_request_stash
from litellm.proxy.proxy_server import app

from header_first_stream import install_middleware


async def rate_limit_headers(scope: Any) -> dict[str, int]:
    """The ``x-ratelimit-*`` headers LiteLLM's limiter computed for the current request."""
    stash = get_request_stash()
    limits = stash.rate_limit_response if stash is not None else None
    return {
        f"x-ratelimit-{status['descriptor_key']}-{kind}-{status['rate_limit_type']}": value
        for status in (limits["statuses"] if limits is not None else ())
        for kind, value in (
            ("remaining", status["limit_remaining"]),
            ("limit", status["current_limit"]),
        )
    }


install_middleware(app, resolver=rate_limit_headers)
# What config.yaml names. It does nothing itself: importing this module did the work.
proxy_handler_instance = CustomLogger()
