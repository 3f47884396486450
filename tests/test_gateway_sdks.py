"""The gateway's rate-limit headers, read by the official ``openai`` and ``anthropic`` SDKs.

Every header is read through the SDKs' public raw-response APIs (``with_raw_response``,
``with_streaming_response``, ``messages.stream``), on the real gateway and mock upstream
(uvicorn on 127.0.0.1). The SDKs' sync clients are used: their async clients are not
trio-compatible, and the point here is what a real client sees on the wire.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import anthropic
import openai
import pytest

from examples.gateway.demo import Running, running
from examples.gateway.probes import HEADER_NAMES, create_key
from examples.gateway.upstream import (
    EMBEDDING_DIMENSIONS,
    OVERLOADED_HEADERS,
    OVERLOADED_MODEL,
    REPLY,
)

from ._gateway import TIMEOUT

HELLO: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hello"}]

FIRST_REQUEST_HEADERS = dict(zip(HEADER_NAMES, ["5999", "6000", "99999", "100000"], strict=True))
"""What a fresh key's first request reports: one request and one token ("hello") used."""


@pytest.fixture(scope="module")
def servers() -> Iterator[Running]:
    with running(fix=True) as servers:
        yield servers


@pytest.fixture
def openai_client(servers: Running) -> Iterator[openai.OpenAI]:
    key = create_key(servers.gateway_url, models=())
    with openai.OpenAI(
        base_url=servers.gateway_url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT
    ) as client:
        yield client


@pytest.fixture
def anthropic_client(servers: Running) -> Iterator[anthropic.Anthropic]:
    key = create_key(servers.gateway_url, models=())
    with anthropic.Anthropic(
        base_url=servers.gateway_url, api_key=key, max_retries=0, timeout=TIMEOUT
    ) as client:
        yield client


def _ratelimit(headers: Mapping[str, str]) -> dict[str, str | None]:
    return {name: headers.get(name) for name in HEADER_NAMES}


# -- openai -------------------------------------------------------------------------------


def test_openai_chat_completion_raw_response_has_the_headers(openai_client: openai.OpenAI) -> None:
    raw = openai_client.chat.completions.with_raw_response.create(
        model="test-chat", messages=[{"role": "user", "content": "hello"}]
    )

    assert _ratelimit(raw.headers) == FIRST_REQUEST_HEADERS
    completion = raw.parse()
    assert completion.choices[0].message.content == REPLY
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 1


def test_openai_embeddings_raw_response_has_the_headers(openai_client: openai.OpenAI) -> None:
    # The SDK asks for base64 by default and decodes it: the mock speaks both.
    raw = openai_client.embeddings.with_raw_response.create(model="test-embedding", input="hello")

    assert _ratelimit(raw.headers) == FIRST_REQUEST_HEADERS
    embeddings = raw.parse()
    assert [len(item.embedding) for item in embeddings.data] == [EMBEDDING_DIMENSIONS]


def test_openai_chat_stream_headers_arrive_before_the_first_chunk(
    openai_client: openai.OpenAI,
) -> None:
    with openai_client.chat.completions.with_streaming_response.create(
        model="test-chat",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        headers = _ratelimit(response.headers)  # read before iterating
        chunks = list(response.parse())

    assert headers == FIRST_REQUEST_HEADERS
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 7


def test_openai_responses_stream_headers_and_events(openai_client: openai.OpenAI) -> None:
    with openai_client.responses.with_streaming_response.create(
        model="test-chat", input="hello", stream=True
    ) as response:
        headers = _ratelimit(response.headers)
        events = list(response.parse())

    assert headers == FIRST_REQUEST_HEADERS
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.output_text == REPLY


def test_openai_responses_raw_response_has_the_headers(openai_client: openai.OpenAI) -> None:
    raw = openai_client.responses.with_raw_response.create(model="test-chat", input="hello")

    assert _ratelimit(raw.headers) == FIRST_REQUEST_HEADERS
    assert raw.parse().output_text == REPLY


def test_openai_sees_the_gateway_quota_429_with_retry_after(servers: Running) -> None:
    key = create_key(servers.gateway_url, rpm_limit=1)
    with openai.OpenAI(
        base_url=servers.gateway_url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT
    ) as client:
        first = client.chat.completions.with_raw_response.create(
            model="test-chat", messages=[{"role": "user", "content": "hello"}]
        )
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(
                model="test-chat", messages=[{"role": "user", "content": "hello"}], stream=True
            )

    expected = dict(zip(HEADER_NAMES, ["0", "1", "99999", "100000"], strict=True))
    assert _ratelimit(first.headers) == expected
    assert _ratelimit(caught.value.response.headers) == expected
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60


def test_openai_sees_the_upstream_429_with_its_headers_not_a_200_stream(
    openai_client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        openai_client.chat.completions.create(
            model=OVERLOADED_MODEL, messages=[{"role": "user", "content": "hello"}], stream=True
        )

    error = caught.value
    assert error.status_code == 429
    assert {name: error.response.headers.get(name) for name in OVERLOADED_HEADERS} == (
        OVERLOADED_HEADERS
    )
    assert _ratelimit(error.response.headers) == FIRST_REQUEST_HEADERS


# -- anthropic ----------------------------------------------------------------------------


def test_anthropic_message_raw_response_has_the_headers(
    anthropic_client: anthropic.Anthropic,
) -> None:
    # The plain-dict shape that lost its headers in the bug report.
    raw = anthropic_client.messages.with_raw_response.create(
        model="test-anthropic", max_tokens=100, messages=HELLO
    )

    assert _ratelimit(raw.headers) == FIRST_REQUEST_HEADERS
    message = raw.parse()
    assert message.content[0].type == "text"
    assert message.content[0].text == REPLY
    assert message.stop_reason == "end_turn"


def test_anthropic_streaming_response_has_the_headers_before_the_events(
    anthropic_client: anthropic.Anthropic,
) -> None:
    with anthropic_client.messages.with_streaming_response.create(
        model="test-anthropic", max_tokens=100, messages=HELLO, stream=True
    ) as response:
        headers = _ratelimit(response.headers)  # read before iterating
        events = [event.type for event in response.parse()]

    assert headers == FIRST_REQUEST_HEADERS
    assert events == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 6,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_anthropic_message_stream_helper_has_the_headers(
    anthropic_client: anthropic.Anthropic,
) -> None:
    with anthropic_client.messages.stream(
        model="test-anthropic", max_tokens=100, messages=HELLO
    ) as stream:
        headers = _ratelimit(stream.response.headers)
        text = stream.get_final_text()

    assert headers == FIRST_REQUEST_HEADERS
    assert text == REPLY


def test_anthropic_sees_the_upstream_429_with_its_headers(
    anthropic_client: anthropic.Anthropic,
) -> None:
    with pytest.raises(anthropic.RateLimitError) as caught:
        anthropic_client.messages.create(
            model=OVERLOADED_MODEL, max_tokens=100, messages=HELLO, stream=True
        )

    error = caught.value
    assert error.status_code == 429
    assert error.response.headers.get("retry-after") == "7"
    assert _ratelimit(error.response.headers) == FIRST_REQUEST_HEADERS
