"""A DB-free ``custom_auth``: every bearer token is a key with rpm/tpm limits.

``general_settings: custom_auth: custom_auth.user_api_key_auth`` in ``config.yaml``, for
trying the example without a database; in production the keys come from LiteLLM's
database (``/key/generate`` with ``rpm_limit`` and ``tpm_limit``) and this file is not
used.

The limits make LiteLLM's v3 rate limiter (its default) count the key's requests and
tokens and compute the ``x-ratelimit-api_key-*`` headers. ``default_estimated_output_tokens``
makes the limiter reserve exactly what the mock upstream then reports as used (see
``TOKENS_PER_REQUEST`` in ``tests/test_litellm_proxy.py``), so the remaining-tokens counts
do not depend on when LiteLLM settles a reservation after a response.
"""

from typing import Any

RPM_LIMIT = 6000
TPM_LIMIT = 100_000


async def user_api_key_auth(request: Any, api_key: str) -> Any:
    # Imported here: the tests import this module for its limits, and importing LiteLLM
    # outside the proxy would try to download its model cost map.
    from litellm.proxy._types import UserAPIKeyAuth

    return UserAPIKeyAuth(
        api_key=api_key,
        rpm_limit=RPM_LIMIT,
        tpm_limit=TPM_LIMIT,
        metadata={"default_estimated_output_tokens": 6},
    )
