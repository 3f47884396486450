"""The LLM gateway example (examples/gateway): its rate limiter and keys, seen by a client
through the late headers, on real servers.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from examples.gateway.app import MASTER_KEY
from examples.gateway.demo import Running
from examples.gateway.limiter import KeyLimits, RateLimiter
from examples.gateway.probes import PROBES, create_key, ratelimit_headers, run_probe, run_probes
from examples.gateway.upstream import REPLY

from ._gateway import (
    LIMIT_REQUESTS,
    LIMIT_TOKENS,
    REMAINING_REQUESTS,
    REMAINING_TOKENS,
    TIMEOUT,
    _headers,
    _post,
)

# -- the quota ----------------------------------------------------------------------------


def test_the_request_after_the_last_allowed_one_gets_429_with_retry_after(
    fixed: Running,
) -> None:
    key = create_key(fixed.gateway_url, rpm_limit=3)
    chat_sync, chat_stream, _, messages_sync = PROBES[:4]

    with httpx.Client(timeout=TIMEOUT) as client:
        allowed = [
            run_probe(client, fixed.gateway_url, key, probe)
            for probe in (chat_sync, chat_stream, messages_sync)
        ]
        refused = [
            _post(fixed.gateway_url + probe.path, key, probe.body)
            for probe in (chat_stream, chat_sync)
        ]

    assert [(r.status, r.complete, r.ratelimit) for r in allowed] == [
        (200, True, _headers(2, 99999, rpm=3)),
        (200, True, _headers(1, 99998, rpm=3)),
        (200, True, _headers(0, 99997, rpm=3)),
    ]
    for response in refused:
        assert response.status_code == 429
        assert ratelimit_headers(response.headers) == _headers(0, 99997, rpm=3)
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert response.json()["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    ("rpm_limit", "tpm_limit", "names"),
    [
        (10, None, [REMAINING_REQUESTS, LIMIT_REQUESTS]),
        (None, 1000, [REMAINING_TOKENS, LIMIT_TOKENS]),
        (None, None, []),
    ],
    ids=["rpm-only", "tpm-only", "no-limits"],
)
def test_a_key_gets_the_two_headers_of_each_limit_it_has(
    fixed: Running, rpm_limit: int | None, tpm_limit: int | None, names: list[str]
) -> None:
    key = create_key(fixed.gateway_url, rpm_limit=rpm_limit, tpm_limit=tpm_limit)

    results = run_probes(fixed.gateway_url, key)

    assert [list(r.ratelimit) for r in results] == [names] * len(PROBES)
    assert all(r.status == 200 and r.complete for r in results)


def test_a_request_whose_token_estimate_does_not_fit_gets_429(fixed: Running) -> None:
    key = create_key(fixed.gateway_url, rpm_limit=None, tpm_limit=10)
    small = {"model": "test-chat", "messages": [{"role": "user", "content": "hello"}]}
    large = {"model": "test-chat", "messages": [{"role": "user", "content": "x" * 40}]}

    first = _post(fixed.gateway_url + "/v1/chat/completions", key, small)
    refused = _post(fixed.gateway_url + "/v1/chat/completions", key, large)

    assert first.status_code == 200
    assert ratelimit_headers(first.headers) == {REMAINING_TOKENS: "9", LIMIT_TOKENS: "10"}
    assert refused.status_code == 429
    assert ratelimit_headers(refused.headers) == {REMAINING_TOKENS: "9", LIMIT_TOKENS: "10"}
    assert "tokens per minute" in refused.json()["error"]["message"]


@pytest.mark.anyio
async def test_the_limiter_window_resets_after_a_minute_and_refusals_are_not_counted() -> None:
    now = [1000.0]
    limiter = RateLimiter(clock=lambda: now[0])
    limits = KeyLimits(rpm_limit=2, tpm_limit=100)

    first = await limiter.check_and_reserve("k", limits, 30)
    second = await limiter.check_and_reserve("k", limits, 30)
    now[0] = 1059.5
    third = await limiter.check_and_reserve("k", limits, 30)
    other_key = await limiter.check_and_reserve("other", limits, 30)
    now[0] = 1060.0
    after_reset = await limiter.check_and_reserve("k", limits, 30)

    assert (first.allowed, second.allowed, third.allowed, after_reset.allowed) == (
        True,
        True,
        False,
        True,
    )
    assert (third.retry_after, third.exceeded) == (1, "requests")
    assert third.headers == _headers(0, 40, rpm=2, tpm=100)
    assert other_key.headers == _headers(1, 70, rpm=2, tpm=100)
    assert after_reset.headers == _headers(1, 70, rpm=2, tpm=100)


# -- concurrency ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_streams_on_different_keys_never_see_each_others_numbers(
    fixed: Running,
) -> None:
    limits = [(1000 + 111 * i, 50000 + 7777 * i) for i in range(4)]
    keys = [create_key(fixed.gateway_url, rpm_limit=rpm, tpm_limit=tpm) for rpm, tpm in limits]
    per_key = 3
    seen: dict[str, list[dict[str, str]]] = {key: [] for key in keys}
    bodies: list[bytes] = []
    all_heads = anyio.Event()
    probe = PROBES[1]  # chat/completions (stream=true)

    async def one_stream(client: httpx.AsyncClient, key: str) -> None:
        async with client.stream(
            "POST",
            fixed.gateway_url + probe.path,
            headers={"authorization": f"Bearer {key}"},
            json=probe.body,
        ) as response:
            seen[key].append(ratelimit_headers(response.headers))
            if sum(map(len, seen.values())) == len(keys) * per_key:
                all_heads.set()
            # Every stream stays open until all heads are in: they all run at once.
            await all_heads.wait()
            bodies.append(await response.aread())

    with anyio.fail_after(30):
        async with httpx.AsyncClient(timeout=TIMEOUT) as client, anyio.create_task_group() as tg:
            for key in keys:
                for _ in range(per_key):
                    tg.start_soon(one_stream, client, key)

    assert len(bodies) == len(keys) * per_key
    assert all(body.endswith(probe.marker) for body in bodies)
    for key, (rpm, tpm) in zip(keys, limits, strict=True):
        assert sorted(seen[key], key=lambda h: -int(h[REMAINING_REQUESTS])) == [
            _headers(rpm - n, tpm - n, rpm=rpm, tpm=tpm) for n in range(1, per_key + 1)
        ]


# -- keys and requests the gateway refuses -------------------------------------------------


@pytest.mark.parametrize(
    ("path", "auth", "body", "status", "message"),
    [
        ("/key/generate", "sk-wrong", {}, 401, "master key"),
        ("/key/generate", MASTER_KEY, {"rpm_limit": 0}, 400, "'rpm_limit' must be a positive"),
        ("/key/generate", MASTER_KEY, {"models": "test-chat"}, 400, "'models' must be a list"),
        ("/v1/chat/completions", "sk-unknown", {"model": "test-chat"}, 401, "invalid or missing"),
        ("/v1/chat/completions", MASTER_KEY, {"model": "gpt-x"}, 400, "unknown model 'gpt-x'"),
    ],
)
def test_the_gateway_refuses_bad_keys_and_bodies_with_a_reason(
    fixed: Running, path: str, auth: str, body: dict[str, Any], status: int, message: str
) -> None:
    response = _post(fixed.gateway_url + path, auth, body)

    assert response.status_code == status
    assert message in response.json()["error"]["message"]


def test_a_key_may_only_use_its_models(fixed: Running) -> None:
    key = create_key(fixed.gateway_url, models=["test-embedding"])

    response = _post(fixed.gateway_url + "/v1/chat/completions", key, PROBES[0].body)

    assert response.status_code == 401
    assert ratelimit_headers(response.headers) == {}
    assert response.json()["error"]["message"] == "this key may not use model 'test-chat'"


def test_the_master_key_is_not_rate_limited(fixed: Running) -> None:
    response = _post(fixed.gateway_url + "/v1/chat/completions", MASTER_KEY, PROBES[0].body)

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == REPLY
    assert ratelimit_headers(response.headers) == {}
