"""The example's callbacks in a real LiteLLM proxy: rate-limit headers on every response shape.

Five proxies, one after the other, each fresh (LiteLLM keeps its counters in memory):
LiteLLM alone, LiteLLM with ``header_first_callback.py`` (this library), with
``response_headers_callback.py`` (LiteLLM's own ``async_post_call_response_headers_hook``)
with ``first_chunk_callback.py`` too (a header from the stream's first chunk), and with
``first_chunk_callback.py`` alone (no middleware: its header cannot be sent).
Each gets the same requests: every shape of ``/v1/chat/completions``, ``/v1/messages`` and
``/v1/responses``, streaming and not, `REQUESTS_PER_KEY` times each, each shape with its own
key so that its counts start from the limits.

Synchronous clients: the proxy runs on its own asyncio loop in another process, so the
anyio backends of the test process do not apply (LiteLLM does not run on trio).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ..custom_auth import RPM_LIMIT, TPM_LIMIT
from ..running import MASTER_KEY, litellm_proxy
from .conftest import connections

REQUESTS_PER_KEY = 3

TOKENS_PER_REQUEST = 7
"""What the limiter reserves for each request below, and what the mock upstream reports as
used: 1 input token ("hello", 5 characters at LiteLLM's 4 per token; the mock counts the
same) and 6 output tokens (``max_tokens``/``default_estimated_output_tokens``; the mock's
reply is 6 pieces)."""

HELLO = [{"role": "user", "content": "hello"}]
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"model": "test-chat", "messages": HELLO}),
    "messages": ("/v1/messages", {"model": "test-anthropic", "max_tokens": 6, "messages": HELLO}),
    "responses": ("/v1/responses", {"model": "test-chat", "input": "hello"}),
}
STREAMS = [f"{name}-stream" for name in SHAPES]
NON_STREAMS = list(SHAPES)

VARIANTS: dict[str, tuple[str, ...]] = {
    "litellm-alone": (),
    "header-first": ("header_first_callback.py",),
    "litellm-hook": ("response_headers_callback.py",),
    "first-chunk": ("header_first_callback.py", "first_chunk_callback.py"),
    # A hook author's callback in a proxy whose operator did not install the middleware.
    "first-chunk-alone": ("first_chunk_callback.py",),
}
FIXES = ["header-first", "litellm-hook", "first-chunk"]


@dataclass(frozen=True)
class Exchange:
    status: int
    headers: httpx.Headers
    body: bytes


Runs = dict[str, dict[str, list[Exchange]]]  # variant -> shape -> one exchange per request
Connections = dict[str, list[tuple[str, str | None, int | None]]]  # variant -> connect() calls
Logs = dict[str, str]  # variant -> the proxy's output


def _exchanges(url: str) -> dict[str, list[Exchange]]:
    results: dict[str, list[Exchange]] = {}
    with httpx.Client(base_url=url, timeout=30.0) as client:
        for name, (path, body) in SHAPES.items():
            for shape, stream in ((name, False), (f"{name}-stream", True)):
                results[shape] = []
                for _ in range(REQUESTS_PER_KEY):
                    response = client.post(
                        path,
                        json={**body, "stream": stream},
                        headers={"authorization": f"Bearer sk-{shape}"},
                    )
                    results[shape].append(
                        Exchange(response.status_code, response.headers, response.content)
                    )
    return results


@pytest.fixture(scope="module")
def proxies(
    upstream_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Runs, Connections, Logs]]:
    collected: Runs = {}
    connected: Connections = {}
    logs: Logs = {}
    for variant, callbacks in VARIANTS.items():
        directory = tmp_path_factory.mktemp(variant)
        with litellm_proxy(directory, upstream_url, callbacks, trace=True) as url:
            # The master key works too: the proxy is up with the config written for it.
            assert httpx.get(
                f"{url}/v1/models", headers={"authorization": f"Bearer {MASTER_KEY}"}
            ).is_success
            collected[variant] = _exchanges(url)
        connected[variant] = connections(directory)
        logs[variant] = (directory / "proxy.log").read_text(errors="replace")
    yield collected, connected, logs


@pytest.fixture(scope="module")
def runs(proxies: tuple[Runs, Connections, Logs]) -> Runs:
    return proxies[0]


def expected_rate_limit_headers(request_number: int) -> dict[str, str]:
    """The four headers LiteLLM's limiter computes for a key's n-th request (1-based)."""
    return {
        "x-ratelimit-api_key-remaining-requests": str(RPM_LIMIT - request_number),
        "x-ratelimit-api_key-limit-requests": str(RPM_LIMIT),
        "x-ratelimit-api_key-remaining-tokens": str(
            TPM_LIMIT - TOKENS_PER_REQUEST * request_number
        ),
        "x-ratelimit-api_key-limit-tokens": str(TPM_LIMIT),
    }


def rate_limit_headers(exchange: Exchange) -> dict[str, list[str]]:
    return {
        name: exchange.headers.get_list(name)
        for name in exchange.headers
        if name.startswith("x-ratelimit-")
    }


# Values that differ from one run to the next however the proxy is set up: the mock
# upstream's random message ids (chatcmpl-…, msg_…), the ids LiteLLM derives from them
# for /v1/responses (resp_…, item ids), and the creation timestamps.
_VOLATILE = re.compile(rb'"(id|item_id|created|created_at)":("[^"]*"|\d+)')


# Where a ping lands is timing, not the body: LiteLLM writes keepalive pings
# (`litellm.anthropic_sse_ping_interval_seconds`, 15 s by default, on /v1/messages
# streams) whenever the stream is silent that long, before the first chunk too, so a loaded
# machine gets one where an idle one does not; and it forwards a ping frame (the mock
# upstream's, `{"type":"ping"}`, no space) live, ahead of the frames it still holds back
# for a fallback, so under load that ping can come first. Pings are left out of the
# comparison; the upstream's are counted apart.
_KEEPALIVE_PINGS = (b'event: ping\ndata: {"type": "ping"}\n\n', b": ping\n\n")
_UPSTREAM_PING = b'event: ping\ndata: {"type":"ping"}\n\n'


def normalized(body: bytes) -> bytes:
    for ping in (*_KEEPALIVE_PINGS, _UPSTREAM_PING):
        body = body.replace(ping, b"")
    return _VOLATILE.sub(rb'"\1":"~"', body)


@pytest.mark.parametrize("shape", NON_STREAMS + STREAMS)
def test_every_request_is_answered(runs: Runs, shape: str) -> None:
    for variant in VARIANTS:
        for exchange in runs[variant][shape]:
            assert exchange.status == 200, (variant, shape, exchange.body[:500])
        content_type = runs[variant][shape][0].headers["content-type"]
        if shape in STREAMS:
            assert content_type == "text/event-stream; charset=utf-8"
        else:
            assert content_type == "application/json"


@pytest.mark.parametrize("shape", NON_STREAMS)
def test_litellm_alone_sends_rate_limit_headers_without_streaming(runs: Runs, shape: str) -> None:
    for number, exchange in enumerate(runs["litellm-alone"][shape], start=1):
        assert rate_limit_headers(exchange) == {
            name: [value] for name, value in expected_rate_limit_headers(number).items()
        }


@pytest.mark.parametrize("shape", STREAMS)
def test_litellm_alone_drops_rate_limit_headers_on_streams(runs: Runs, shape: str) -> None:
    # The bug: the limiter counted the requests (see the remaining counts of the fixed
    # runs, which start from the same limits), but a stream's head carries none of it.
    for exchange in runs["litellm-alone"][shape]:
        assert rate_limit_headers(exchange) == {}


@pytest.mark.parametrize("variant", FIXES)
@pytest.mark.parametrize("shape", NON_STREAMS + STREAMS)
def test_callback_sends_the_rate_limit_headers_on_every_shape(
    runs: Runs, variant: str, shape: str
) -> None:
    for number, exchange in enumerate(runs[variant][shape], start=1):
        assert rate_limit_headers(exchange) == {
            name: [value] for name, value in expected_rate_limit_headers(number).items()
        }, (variant, shape, number)


@pytest.mark.parametrize("variant", [*FIXES, "first-chunk-alone"])
@pytest.mark.parametrize("shape", NON_STREAMS + STREAMS)
def test_callback_leaves_the_body_as_litellm_sends_it(runs: Runs, variant: str, shape: str) -> None:
    for fixed, alone in zip(runs[variant][shape], runs["litellm-alone"][shape], strict=True):
        assert normalized(fixed.body) == normalized(alone.body)
        assert fixed.body.count(_UPSTREAM_PING) == alone.body.count(_UPSTREAM_PING)
        assert fixed.body != b""


@pytest.mark.parametrize("variant", [*FIXES, "first-chunk-alone"])
@pytest.mark.parametrize("shape", NON_STREAMS + STREAMS)
def test_callback_leaves_litellm_own_headers_alone(runs: Runs, variant: str, shape: str) -> None:
    # Every header LiteLLM sends without a callback is still there, once, in LiteLLM's
    # order; only values that name the request or time it differ between the runs.
    for fixed, alone in zip(runs[variant][shape], runs["litellm-alone"][shape], strict=True):
        own = [name for name in alone.headers if not _ADDED_HEADER.match(name)]
        assert [name for name in fixed.headers if not _ADDED_HEADER.match(name)] == own
        for name in own:
            if not _VOLATILE_HEADER.search(name):
                assert fixed.headers.get_list(name) == alone.headers.get_list(name), name


_VOLATILE_HEADER = re.compile(r"date|duration|call-id")
_ADDED_HEADER = re.compile(r"x-ratelimit-|x-first-chunk-ms$")


@pytest.mark.parametrize("shape", STREAMS)
def test_a_header_from_the_first_chunk_reaches_the_head_of_every_stream(
    runs: Runs, shape: str
) -> None:
    for exchange in runs["first-chunk"][shape]:
        (value,) = exchange.headers.get_list("x-first-chunk-ms")
        assert value.isdigit(), value
        assert int(value) < 30_000  # the client's timeout: a real duration, in ms


def test_without_the_middleware_a_hook_header_is_dropped_with_one_warning(
    proxies: tuple[Runs, Connections, Logs],
) -> None:
    # add_late_headers() in a proxy without HeaderFirstMiddleware: every stream still
    # answers as LiteLLM alone does (the body test above), without the header, and the
    # proxy's log says once, for the whole process, what to install.
    runs, _, logs = proxies
    for shape in STREAMS:
        for exchange in runs["first-chunk-alone"][shape]:
            assert "x-first-chunk-ms" not in exchange.headers
            assert rate_limit_headers(exchange) == {}
    assert logs["first-chunk-alone"].count("add_late_headers() was called outside a request") == 1
    assert "add_late_headers() was called" not in logs["first-chunk"]


@pytest.mark.parametrize("shape", NON_STREAMS)
def test_no_first_chunk_header_without_a_stream(runs: Runs, shape: str) -> None:
    for exchange in runs["first-chunk"][shape]:
        assert "x-first-chunk-ms" not in exchange.headers


@pytest.mark.parametrize("variant", VARIANTS)
def test_litellm_connects_to_nothing_but_this_machine(
    proxies: tuple[Runs, Connections, Logs], upstream_url: str, variant: str
) -> None:
    calls = proxies[1][variant]
    upstream_port = httpx.URL(upstream_url).port
    # The proxy did reach the mock upstream, so the trace saw its connections...
    assert ("AF_INET", "127.0.0.1", upstream_port) in calls
    for family, address, port in calls:
        # ... and nothing else left the machine: no provider, no download, no telemetry,
        # not even a DNS query (which a local resolver would answer on port 53).
        if family in ("AF_INET", "AF_INET6"):
            assert address in ("127.0.0.1", "::1"), (family, address, port)
            assert port != 53, (family, address, port)
        else:
            assert family in ("AF_UNIX", "AF_NETLINK", "AF_UNSPEC"), (family, address, port)
