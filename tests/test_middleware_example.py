"""examples/middleware_app.py: the gateway fixed with the middleware alone, probed on real
servers with the bug report's shapes (and with the OpenAI and Anthropic SDKs)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from examples.gateway.limiter import HEADER_PREFIX
from examples.gateway.probes import HEADER_NAMES, PROBES, Probe
from examples.gateway.upstream import REPLY, estimate_tokens
from examples.middleware_app import create_app

from ._gateway import TIMEOUT
from ._servers import SERVERS, serve

HELLO = [{"role": "user", "content": "hello"}]
EMBED_HI = {"model": "toy", "input": "hi"}  # one token


def _ratelimit(response: httpx.Response) -> dict[str, list[str]]:
    return {name: response.headers.get_list(name) for name in HEADER_NAMES}


def _content_type(probe: Probe) -> str:
    return "text/event-stream; charset=utf-8" if probe.stream else "application/json"


def _check_body(probe: Probe, content: bytes) -> None:
    text = content.decode()
    assert probe.marker in content
    if not probe.stream:
        assert isinstance(json.loads(text), dict)
    elif probe.path == "/v1/chat/completions":
        assert text.endswith("data: [DONE]\n\n")
        assert text.count("data: ") == 9  # the role, six pieces, the stop chunk, [DONE]
    elif probe.path == "/v1/messages":
        assert text.startswith("event: message_start\n")
        assert text.endswith('event: message_stop\ndata: {"type":"message_stop"}\n\n')
    else:
        assert text.endswith("\n\n") and "event: response.completed\n" in text


@pytest.fixture(params=SERVERS)
def gateway_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with serve(create_app(), str(request.param)) as url:
        yield url


def test_every_shape_carries_all_four_headers_and_the_counts_go_down(gateway_url: str) -> None:
    auth = {"authorization": "Bearer sk-demo"}
    remaining_requests, remaining_tokens = 6000, 100_000
    with httpx.Client(base_url=gateway_url, headers=auth, timeout=TIMEOUT) as client:
        for probe in PROBES:
            with client.stream("POST", probe.path, json=probe.body) as response:
                content = response.read()
            remaining_requests -= 1
            remaining_tokens -= estimate_tokens(probe.body)
            assert response.status_code == 200, probe.shape
            assert response.headers["content-type"] == _content_type(probe), probe.shape
            assert _ratelimit(response) == {
                f"{HEADER_PREFIX}remaining-requests": [str(remaining_requests)],
                f"{HEADER_PREFIX}limit-requests": ["6000"],
                f"{HEADER_PREFIX}remaining-tokens": [str(remaining_tokens)],
                f"{HEADER_PREFIX}limit-tokens": ["100000"],
            }, probe.shape
            _check_body(probe, content)


def test_a_refused_request_gets_429_with_the_headers_and_a_bad_key_401_without() -> None:
    with (
        serve(create_app(), "uvicorn-httptools") as url,
        httpx.Client(base_url=url, timeout=TIMEOUT) as client,
    ):
        other = {"authorization": "Bearer sk-other"}
        statuses = [
            client.post("/v1/embeddings", headers=other, json=EMBED_HI).status_code
            for _ in range(10)
        ]
        refused = client.post(
            "/v1/chat/completions", headers=other, json={"stream": True, "messages": HELLO}
        )
        unknown = client.post("/v1/embeddings", headers={"authorization": "Bearer x"}, json={})
    assert statuses == [200] * 10
    assert refused.status_code == 429
    assert refused.json() == {"error": {"message": "rate limit exceeded", "code": 429}}
    assert _ratelimit(refused) == {
        f"{HEADER_PREFIX}remaining-requests": ["0"],
        f"{HEADER_PREFIX}limit-requests": ["10"],
        f"{HEADER_PREFIX}remaining-tokens": ["990"],
        f"{HEADER_PREFIX}limit-tokens": ["1000"],
    }
    assert unknown.status_code == 401
    assert _ratelimit(unknown) == {name: [] for name in HEADER_NAMES}


def test_the_sdks_see_the_headers_on_streams() -> None:
    with serve(create_app(), "uvicorn-httptools") as url:
        openai_client = openai.OpenAI(
            base_url=url + "/v1", api_key="sk-demo", max_retries=0, timeout=TIMEOUT
        )
        with openai_client.chat.completions.with_streaming_response.create(
            model="toy", messages=[{"role": "user", "content": "hello"}], stream=True
        ) as chat:
            chat_headers = dict(chat.headers)
            words = [
                chunk.choices[0].delta.content or "" for chunk in chat.parse() if chunk.choices
            ]
        anthropic_client = anthropic.Anthropic(
            base_url=url, api_key="sk-demo", max_retries=0, timeout=TIMEOUT
        )
        with anthropic_client.messages.with_streaming_response.create(
            model="toy",
            max_tokens=100,
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
        ) as messages:
            message_headers = dict(messages.headers)
            events = [event.type for event in messages.parse()]
    assert "".join(words) == REPLY
    assert chat_headers[f"{HEADER_PREFIX}remaining-requests"] == "5999"
    assert chat_headers[f"{HEADER_PREFIX}remaining-tokens"] == "99999"
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert message_headers[f"{HEADER_PREFIX}remaining-requests"] == "5998"
    assert message_headers[f"{HEADER_PREFIX}remaining-tokens"] == "99998"
    assert message_headers[f"{HEADER_PREFIX}limit-tokens"] == "100000"
