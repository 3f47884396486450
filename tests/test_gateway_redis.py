"""The gateway on several worker processes sharing keys and quotas in a real Redis.

Tier 3: a real ``redis-server`` (`tests._redis`), the gateway as ``uvicorn --workers 2``
in a subprocess (`examples.gateway.workers`) and, as a second host would be, one more
gateway process on another port; the mock upstream in a thread; httpx clients opening a
new connection per request and alternating between the two ports. (A burst on one port
tends to go to one of its workers: each accepts many connections per wake-up. Alternating
ports makes "served by several processes" certain, not likely.) The clients run on both
anyio backends; the Redis back end itself needs asyncio (the ``redis`` package's client),
so its direct tests run on asyncio only.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from examples.gateway.demo import serve
from examples.gateway.limiter import KeyLimits, StoreUnavailable
from examples.gateway.limiter_redis import RedisRateLimiter, connect
from examples.gateway.probes import create_key
from examples.gateway.upstream import REPLY, create_upstream_app
from examples.gateway.workers import WORKER_HEADER, running_workers
from examples.serving import free_port

from ._redis import RedisServer, redis_server

pytestmark = pytest.mark.scale

P = "x-ratelimit-api_key-"
CHAT = "/v1/chat/completions"
TIMEOUT = 30.0
NEW_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)


def _body(*, stream: bool) -> dict[str, Any]:
    # "hello" is estimated at one token.
    body: dict[str, Any] = {
        "model": "test-chat",
        "messages": [{"role": "user", "content": "hello"}],
    }
    if stream:
        body["stream"] = True
    return body


def _post(url: str, key: str, *, stream: bool) -> httpx.Response:
    with httpx.Client(timeout=TIMEOUT, limits=NEW_CONNECTIONS) as client:
        response = client.post(
            url + CHAT, headers={"authorization": f"Bearer {key}"}, json=_body(stream=stream)
        )
    return response


def _ratelimit(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith(P)}


def _complete(response: httpx.Response, *, stream: bool) -> bool:
    if stream:
        return response.text.endswith("data: [DONE]\n\n")
    return bool(response.json()["choices"][0]["message"]["content"] == REPLY)


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    with serve(create_upstream_app(chunk_delay=0.002)) as url:
        yield url


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def gateway_urls(upstream_url: str, redis: RedisServer) -> Iterator[tuple[str, str]]:
    with (
        running_workers(upstream_url, workers=2, redis_url=redis.url) as workers,
        running_workers(upstream_url, workers=1, redis_url=redis.url) as other_host,
    ):
        yield workers, other_host


# --- one quota, two workers ---------------------------------------------------------------


LIMIT, EXTRA, TPM = 30, 10, 100000


@pytest.mark.anyio
async def test_concurrent_requests_on_several_processes_count_against_one_quota(
    gateway_urls: tuple[str, str],
) -> None:
    key = await anyio.to_thread.run_sync(
        lambda: create_key(gateway_urls[0], rpm_limit=LIMIT, tpm_limit=TPM)
    )
    seen: list[tuple[httpx.Response, bool]] = []

    async def one(client: httpx.AsyncClient, number: int) -> None:
        stream = number % 4 < 2  # streams and JSON on both ports
        response = await client.post(
            gateway_urls[number % 2] + CHAT,
            headers={"authorization": f"Bearer {key}"},
            json=_body(stream=stream),
        )
        seen.append((response, stream))

    async with (
        httpx.AsyncClient(timeout=TIMEOUT, limits=NEW_CONNECTIONS) as client,
        anyio.create_task_group() as group,
    ):
        for number in range(LIMIT + EXTRA):
            group.start_soon(one, client, number)

    assert Counter(response.status_code for response, _ in seen) == {200: LIMIT, 429: EXTRA}
    served = [(r, stream) for r, stream in seen if r.status_code == 200]
    refused = [r for r, _ in seen if r.status_code == 429]
    # Each count was taken by exactly one request: the values are distinct, and exactly
    # those that LIMIT requests of one token each leave.
    assert sorted(int(r.headers[P + "remaining-requests"]) for r, _ in served) == list(range(LIMIT))
    assert sorted(int(r.headers[P + "remaining-tokens"]) for r, _ in served) == list(
        range(TPM - LIMIT, TPM)
    )
    assert {
        (r.headers[P + "limit-requests"], r.headers[P + "limit-tokens"]) for r, _ in served
    } == {(str(LIMIT), str(TPM))}
    assert all(_complete(r, stream=stream) for r, stream in served)
    for response in refused:
        assert _ratelimit(response) == {
            P + "remaining-requests": "0",
            P + "limit-requests": str(LIMIT),
            P + "remaining-tokens": str(TPM - LIMIT),
            P + "limit-tokens": str(TPM),
        }
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert response.json()["error"]["type"] == "rate_limit_error"
    assert len({r.headers[WORKER_HEADER] for r, _ in seen}) >= 2


def test_the_429_comes_at_exactly_the_limit_whichever_process_serves(
    gateway_urls: tuple[str, str],
) -> None:
    key = create_key(gateway_urls[1], rpm_limit=8, tpm_limit=None)
    responses = [
        _post(gateway_urls[number % 2], key, stream=number % 4 < 2) for number in range(12)
    ]

    assert [r.status_code for r in responses] == [200] * 8 + [429] * 4
    assert [r.headers[P + "remaining-requests"] for r in responses] == [
        "7", "6", "5", "4", "3", "2", "1", "0", "0", "0", "0", "0",
    ]  # fmt: skip
    assert all("retry-after" in r.headers for r in responses[8:])
    assert not any("retry-after" in r.headers for r in responses[:8])
    # The last request allowed and the first refused were served by different processes.
    assert responses[7].headers[WORKER_HEADER] != responses[8].headers[WORKER_HEADER]


def test_a_key_made_on_one_worker_works_on_every_worker(gateway_urls: tuple[str, str]) -> None:
    url = gateway_urls[0]
    key = create_key(url, rpm_limit=100, tpm_limit=None)
    workers = set()
    for _ in range(40):  # bounded: the kernel picks the worker
        response = _post(url, key, stream=False)
        assert response.status_code == 200
        workers.add(response.headers[WORKER_HEADER])
        if len(workers) == 2:
            break
    assert len(workers) == 2


# --- the Redis back end on its own (asyncio: the redis package's client) ------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_the_window_resets_and_refusals_take_nothing(redis: RedisServer) -> None:
    limiter = RedisRateLimiter(connect(redis.url), window_seconds=1.0)
    limits = KeyLimits(rpm_limit=2, tpm_limit=50)
    key = f"window-{time.monotonic_ns()}"
    try:
        first = await limiter.check_and_reserve(key, limits, 20)
        too_many_tokens = await limiter.check_and_reserve(key, limits, 40)
        second = await limiter.check_and_reserve(key, limits, 20)
        third = await limiter.check_and_reserve(key, limits, 1)
        await anyio.sleep(1.2)
        after_reset = await limiter.check_and_reserve(key, limits, 5)
    finally:
        await limiter.aclose()

    assert first.allowed and second.allowed and after_reset.allowed
    assert (too_many_tokens.allowed, too_many_tokens.exceeded) == (False, "tokens")
    assert (third.allowed, third.exceeded, third.retry_after) == (False, "requests", 1)
    assert too_many_tokens.headers[P + "remaining-tokens"] == "30"
    assert second.headers[P + "remaining-tokens"] == "10"
    assert third.headers[P + "remaining-requests"] == "0"
    assert after_reset.headers == {
        P + "remaining-requests": "1",
        P + "limit-requests": "2",
        P + "remaining-tokens": "45",
        P + "limit-tokens": "50",
    }


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_an_unreachable_redis_raises_store_unavailable_in_bounded_time() -> None:
    limiter = RedisRateLimiter(connect(f"redis://127.0.0.1:{free_port()}/0"))
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable, match="Redis did not answer"):
            await limiter.check_and_reserve("k", KeyLimits(rpm_limit=1), 1)
    finally:
        await limiter.aclose()
    assert time.monotonic() - started < 5
