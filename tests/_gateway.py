"""Helpers of the gateway example's tests (tests/test_gateway_*.py); their server fixtures
(`upstream_url`, `fixed`, `unfixed`) are in conftest.py."""

from __future__ import annotations

from typing import Any

import httpx

from examples.gateway.probes import HEADER_NAMES

TIMEOUT = 10.0

REMAINING_REQUESTS, LIMIT_REQUESTS, REMAINING_TOKENS, LIMIT_TOKENS = HEADER_NAMES
JSON = "application/json"


def _headers(
    remaining_requests: int, remaining_tokens: int, rpm: int = 6000, tpm: int = 100000
) -> dict[str, str]:
    return {
        REMAINING_REQUESTS: str(remaining_requests),
        LIMIT_REQUESTS: str(rpm),
        REMAINING_TOKENS: str(remaining_tokens),
        LIMIT_TOKENS: str(tpm),
    }


def _post(url: str, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url, headers={"authorization": f"Bearer {key}"}, json=body, timeout=TIMEOUT)
