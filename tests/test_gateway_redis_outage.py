"""What a client of the gateway sees when its Redis becomes unreachable, and the recovery.

Tier 3, as `tests.test_gateway_redis`: a real ``redis-server``, the gateway as
``uvicorn --workers 2``, httpx clients (sync: the servers are processes and threads).
Two ways to lose Redis:

- paused (SIGSTOP): connections stay open and nothing answers, as in a network
  partition; each request waits the client's timeout (`SOCKET_TIMEOUT`) and fails;
- stopped: connections are refused at once; the restarted, non-persistent Redis is empty.

The limiter runs before the upstream call, so the gateway's ``on_store_error`` policy
answers: ``"error"`` gives ``503`` with ``retry-after: 1`` (never a ``200`` and a broken
stream); ``"degrade"`` serves the request, streams included, without counting it and
without its ``x-ratelimit-*`` headers. Keys a worker has read stay known in its memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from examples.gateway.demo import serve
from examples.gateway.limiter_redis import SOCKET_TIMEOUT
from examples.gateway.probes import create_key
from examples.gateway.upstream import create_upstream_app
from examples.gateway.workers import WORKER_HEADER, running_workers

from ._redis import RedisServer, redis_server

pytestmark = pytest.mark.scale

P = "x-ratelimit-api_key-"
CHAT = "/v1/chat/completions"
NEW_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)
RPM = 100


def _post(url: str, key: str, *, stream: bool) -> httpx.Response:
    body: dict[str, object] = {
        "model": "test-chat",
        "messages": [{"role": "user", "content": "hi"}],
    }
    if stream:
        body["stream"] = True
    with httpx.Client(timeout=30, limits=NEW_CONNECTIONS) as client:
        return client.post(url + CHAT, headers={"authorization": f"Bearer {key}"}, json=body)


def _ratelimit(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith(P)}


def _warm(url: str, key: str) -> int:
    """Send requests until both workers served one (and so know the key); return how many."""
    workers: set[str] = set()
    for sent in range(1, 61):  # bounded: the kernel picks the worker
        response = _post(url, key, stream=False)
        assert response.status_code == 200
        assert response.headers[P + "remaining-requests"] == str(RPM - sent)
        workers.add(response.headers[WORKER_HEADER])
        if len(workers) == 2:
            return sent
    raise AssertionError(f"60 requests were all served by worker {workers}")


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    with serve(create_upstream_app(chunk_delay=0.002)) as url:
        yield url


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def test_a_paused_redis_gives_503_then_the_gateway_recovers(
    upstream_url: str, redis: RedisServer
) -> None:
    with running_workers(upstream_url, workers=2, redis_url=redis.url) as url:
        key = create_key(url, rpm_limit=RPM, tpm_limit=None)
        sent = _warm(url, key)
        redis.pause()
        try:
            started = time.monotonic()
            during = [_post(url, key, stream=stream) for stream in (True, False)]
            elapsed = time.monotonic() - started
        finally:
            redis.resume()
        after = _post(url, key, stream=True)

    for response in during:
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.headers["content-type"] == "application/json"
        assert _ratelimit(response) == {}
        assert response.json()["error"]["type"] == "service_unavailable"
    # Each waited about one client timeout, not for ever.
    assert elapsed < 2 * SOCKET_TIMEOUT + 4
    assert after.status_code == 200
    assert after.text.endswith("data: [DONE]\n\n")
    # A script sent before the timeout may still run when Redis resumes: a timed-out
    # request may or may not have been counted (a timeout cannot tell). None was served.
    remaining = int(after.headers[P + "remaining-requests"])
    assert RPM - sent - 1 - len(during) <= remaining <= RPM - sent - 1


def test_a_stopped_redis_gives_503_at_once_and_a_restarted_one_counts_afresh(
    upstream_url: str, redis: RedisServer
) -> None:
    with running_workers(upstream_url, workers=2, redis_url=redis.url) as url:
        key = create_key(url, rpm_limit=RPM, tpm_limit=None)
        _warm(url, key)
        redis.stop()
        started = time.monotonic()
        during = _post(url, key, stream=True)
        elapsed = time.monotonic() - started
        no_new_key = httpx.post(
            url + "/key/generate", headers={"authorization": "Bearer sk-1234"}, json={}
        )
        redis.start()
        after = _post(url, key, stream=True)

    assert during.status_code == 503
    assert during.headers["retry-after"] == "1"
    assert elapsed < SOCKET_TIMEOUT + 2
    assert no_new_key.status_code == 503
    assert after.status_code == 200
    # The restarted Redis kept nothing (no persistence): a new window.
    assert after.headers[P + "remaining-requests"] == str(RPM - 1)


def test_under_degrade_a_stream_goes_out_without_its_headers_and_uncounted(
    upstream_url: str, redis: RedisServer
) -> None:
    with running_workers(
        upstream_url, workers=2, redis_url=redis.url, on_store_error="degrade"
    ) as url:
        key = create_key(url, rpm_limit=RPM, tpm_limit=None)
        sent = _warm(url, key)
        redis.pause()
        try:
            during = [_post(url, key, stream=stream) for stream in (True, False)]
        finally:
            redis.resume()
        after = _post(url, key, stream=True)

    stream, plain = during
    assert stream.status_code == 200
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.text.endswith("data: [DONE]\n\n")
    assert plain.status_code == 200
    assert plain.json()["object"] == "chat.completion"
    assert _ratelimit(stream) == {} and _ratelimit(plain) == {}
    assert after.status_code == 200
    remaining = int(after.headers[P + "remaining-requests"])
    assert RPM - sent - 1 - len(during) <= remaining <= RPM - sent - 1
