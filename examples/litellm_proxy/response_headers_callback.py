"""LiteLLM proxy callback: the ``x-ratelimit-*`` headers on streams, with LiteLLM's own hook.

No header-first-stream here: LiteLLM calls ``async_post_call_response_headers_hook``
for streaming responses too, after the upstream answered and before the proxy sends its
head, and adds what it returns to the head. That is enough for values known by then, such
as the limiter's counts. Name it in ``config.yaml`` (``litellm_settings: callbacks:
response_headers_callback.proxy_handler_instance``).
"""

from typing import Any

from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy.hooks.parallel_request_limiter_v3 import get_request_stash


class RateLimitHeaders(CustomLogger):  # type: ignore[misc]  # LiteLLM ships no type information
    async def async_post_call_response_headers_hook(
        self, data: Any, user_api_key_dict: Any, response: Any, request_headers: Any = None
    ) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers LiteLLM's limiter computed for this request."""
        stash = get_request_stash()
        limits = stash.rate_limit_response if stash is not None else None
        return {
            f"x-ratelimit-{status['descriptor_key']}-{kind}-{status['rate_limit_type']}": str(value)
            for status in (limits["statuses"] if limits is not None else ())
            for kind, value in (
                ("remaining", status["limit_remaining"]),
                ("limit", status["current_limit"]),
            )
        }


proxy_handler_instance = RateLimitHeaders()
