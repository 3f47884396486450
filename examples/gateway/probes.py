"""The bug report's probes: one request per response shape, what the client saw, and the
checks of a run (`check_results` for the fixed gateway, `check_bug_shown` for the unfixed
one). `examples.gateway.demo` runs them; the tests reuse them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from .app import MASTER_KEY
from .limiter import HEADER_PREFIX
from .upstream import REPLY
from .workers import WORKER_HEADER

CLIENT_TIMEOUT = 10.0

RPM_LIMIT = 6000
TPM_LIMIT = 100000

HEADER_NAMES = tuple(
    HEADER_PREFIX + suffix
    for suffix in ("remaining-requests", "limit-requests", "remaining-tokens", "limit-tokens")
)
"""The four headers every shape must carry, in the bug report's order."""


@dataclass(frozen=True)
class Probe:
    """One request of the bug report: a shape, its path and body, and proof of a full body."""

    shape: str
    path: str
    body: dict[str, Any]
    marker: bytes
    """Bytes that only a complete body contains (the end of a stream)."""

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


_HELLO = [{"role": "user", "content": "hello"}]

PROBES = (
    Probe(
        "chat/completions (sync)",
        "/v1/chat/completions",
        {"model": "test-chat", "messages": _HELLO},
        REPLY.encode(),
    ),
    Probe(
        "chat/completions (stream=true)",
        "/v1/chat/completions",
        {"model": "test-chat", "stream": True, "messages": _HELLO},
        b"data: [DONE]\n\n",
    ),
    Probe(
        "embeddings (sync)",
        "/v1/embeddings",
        {"model": "test-embedding", "input": "hello"},
        b'"object":"embedding"',
    ),
    Probe(
        "messages (sync)",
        "/v1/messages",
        {"model": "test-anthropic", "max_tokens": 100, "messages": _HELLO},
        REPLY.encode(),
    ),
    Probe(
        "messages (stream=true)",
        "/v1/messages",
        {"model": "test-anthropic", "max_tokens": 100, "stream": True, "messages": _HELLO},
        b"event: message_stop\n",
    ),
    Probe(
        "responses (stream=true)",
        "/v1/responses",
        {"model": "test-chat", "stream": True, "input": "hello"},
        b"event: response.completed\n",
    ),
)

KEEPS_HEADERS_WITHOUT_FIX = frozenset({"chat/completions (sync)", "embeddings (sync)"})
"""The shapes that carry their headers in LiteLLM too (typed responses, not streams)."""


@dataclass(frozen=True)
class ProbeResult:
    """What the client saw for one probe."""

    shape: str
    status: int
    content_type: str
    ratelimit: dict[str, str]
    """The ``x-ratelimit-api_key-*`` headers received, in `HEADER_NAMES` order."""
    complete: bool
    worker: str = ""
    """The gateway worker's process id, from ``x-gateway-worker`` (with ``--workers``)."""


def create_key(
    gateway_url: str,
    *,
    rpm_limit: int | None = RPM_LIMIT,
    tpm_limit: int | None = TPM_LIMIT,
    models: Sequence[str] = ("test-embedding", "test-chat", "test-anthropic"),
) -> str:
    """Create a virtual key with ``POST /key/generate`` under the master key; return it."""
    response = httpx.post(
        gateway_url + "/key/generate",
        headers={"authorization": f"Bearer {MASTER_KEY}"},
        json={"models": list(models), "tpm_limit": tpm_limit, "rpm_limit": rpm_limit},
        timeout=CLIENT_TIMEOUT,
    )
    response.raise_for_status()
    key: str = response.json()["key"]
    return key


def ratelimit_headers(headers: httpx.Headers) -> dict[str, str]:
    """The ``x-ratelimit-api_key-*`` headers among ``headers``, in `HEADER_NAMES` order."""
    return {name: headers[name] for name in HEADER_NAMES if name in headers}


def run_probe(client: httpx.Client, gateway_url: str, key: str, probe: Probe) -> ProbeResult:
    """Send one probe; read its head first, then its whole body."""
    with client.stream(
        "POST",
        gateway_url + probe.path,
        headers={"authorization": f"Bearer {key}"},
        json=probe.body,
    ) as response:
        ratelimit = ratelimit_headers(response.headers)
        body = response.read()
    return ProbeResult(
        probe.shape,
        response.status_code,
        response.headers.get("content-type", ""),
        ratelimit,
        probe.marker in body,
        response.headers.get(WORKER_HEADER, ""),
    )


def run_probes(gateway_url: str, key: str, *, new_connections: bool = False) -> list[ProbeResult]:
    """Send every probe of `PROBES`, one after the other, with ``key``.

    With ``new_connections``, each probe opens its own connection, so that a gateway with
    several worker processes may serve each with another worker.
    """
    keepalive = 0 if new_connections else None
    limits = httpx.Limits(max_keepalive_connections=keepalive)
    with httpx.Client(timeout=CLIENT_TIMEOUT, limits=limits) as client:
        return [run_probe(client, gateway_url, key, probe) for probe in PROBES]


def check_results(results: Sequence[ProbeResult]) -> list[str]:
    """What is wrong with a run of the fixed gateway; ``[]`` if nothing.

    Every shape must answer 200 with a complete body and all four headers with the key's
    limits, and each request's remaining counts must be below the previous request's:
    one request fewer, and fewer tokens.
    """
    problems: list[str] = []
    previous: ProbeResult | None = None
    for result in results:
        missing = [name for name in HEADER_NAMES if name not in result.ratelimit]
        if result.status != 200:
            problems.append(f"{result.shape}: status {result.status}, expected 200")
        if not result.complete:
            problems.append(f"{result.shape}: the body is incomplete")
        if missing:
            problems.append(f"{result.shape}: missing {', '.join(missing)}")
        else:
            limits = (
                result.ratelimit[HEADER_PREFIX + "limit-requests"],
                result.ratelimit[HEADER_PREFIX + "limit-tokens"],
            )
            if limits != (str(RPM_LIMIT), str(TPM_LIMIT)):
                problems.append(f"{result.shape}: limits {limits}, expected the key's")
            if previous is not None and not _goes_down(previous, result):
                problems.append(
                    f"{result.shape}: remaining counts did not go down after {previous.shape}"
                )
            previous = result
    return problems


def _goes_down(before: ProbeResult, after: ProbeResult) -> bool:
    requests = HEADER_PREFIX + "remaining-requests"
    tokens = HEADER_PREFIX + "remaining-tokens"
    return int(after.ratelimit[requests]) == int(before.ratelimit[requests]) - 1 and int(
        after.ratelimit[tokens]
    ) < int(before.ratelimit[tokens])


def check_bug_shown(results: Sequence[ProbeResult]) -> list[str]:
    """What differs from the bug report in a run of the unfixed gateway; ``[]`` if nothing.

    The typed shapes (`KEEPS_HEADERS_WITHOUT_FIX`) keep all four headers; streams and the
    plain-dict ``/v1/messages`` lose all four.
    """
    problems: list[str] = []
    for result in results:
        expected = 4 if result.shape in KEEPS_HEADERS_WITHOUT_FIX else 0
        if result.status != 200 or not result.complete:
            problems.append(f"{result.shape}: status {result.status}, complete={result.complete}")
        if len(result.ratelimit) != expected:
            problems.append(
                f"{result.shape}: {len(result.ratelimit)} headers, the bug report has {expected}"
            )
    return problems
