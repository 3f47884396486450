"""`HeaderFirstEventSourceResponse` encodes events byte for byte as sse-starlette does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sse_starlette import JSONServerSentEvent, ServerSentEvent
from sse_starlette.event import ensure_bytes

from header_first_stream import HeaderFirstEventSourceResponse

from ._asgi import call, events, http_scope
from ._expect import SPECS

# --- encoding ----------------------------------------------------------------------------

ITEMS: list[object] = [
    ServerSentEvent(data="a", event="token", id="1"),
    {"data": "two\nlines", "event": "multi", "retry": 3000},
    "plain text",
    "line one\r\nline two",
    b"data: pre-encoded\r\n\r\n",
    JSONServerSentEvent({"token": "hi"}),
    42,
]


ITEMS_CRLF = (
    b"id: 1\r\nevent: token\r\ndata: a\r\n\r\n"
    b"event: multi\r\ndata: two\r\ndata: lines\r\nretry: 3000\r\n\r\n"
    b"data: plain text\r\n\r\n"
    b"data: line one\r\ndata: line two\r\n\r\n"
    b"data: pre-encoded\r\n\r\n"
    b'data: {"token":"hi"}\r\n\r\n'
    b"data: 42\r\n\r\n"
)


@pytest.mark.anyio
@SPECS
async def test_events_are_encoded_byte_for_byte_as_sse_starlette_encodes_them(spec: str) -> None:
    response = HeaderFirstEventSourceResponse(events(*ITEMS), ping=0)
    recorder = await call(response, http_scope(spec_version=spec))
    assert recorder.body == ITEMS_CRLF
    assert recorder.body == b"".join(ensure_bytes(item, "\r\n") for item in ITEMS)
    # One message per event, so that nothing can be sent inside an event.
    assert len(recorder.messages) == 1 + len(ITEMS) + 1


@pytest.mark.anyio
async def test_sep_applies_to_str_and_dict_events_as_in_sse_starlette() -> None:
    items: list[object] = ["one", "a\nb", {"data": "d", "event": "e"}]
    response = HeaderFirstEventSourceResponse(events(*items), ping=0, sep="\n")
    recorder = await call(response)
    assert recorder.body == b"data: one\n\ndata: a\ndata: b\n\nevent: e\ndata: d\n\n"
    assert recorder.body == b"".join(ensure_bytes(item, "\n") for item in items)


@pytest.mark.anyio
async def test_a_sync_iterable_is_iterated_in_a_thread_and_closed() -> None:
    closed: list[bool] = []

    def sync_events() -> Iterator[object]:
        try:
            yield "one"
            yield {"data": "two"}
        finally:
            closed.append(True)

    response = HeaderFirstEventSourceResponse(sync_events(), ping=0)
    recorder = await call(response)
    assert recorder.body == b"data: one\r\n\r\ndata: two\r\n\r\n"
    assert closed == [True]


@pytest.mark.anyio
@settings(max_examples=50, deadline=None)
@given(texts=st.lists(st.text(), max_size=8), sep=st.sampled_from(["\r\n", "\r", "\n"]))
async def test_the_fast_paths_for_str_and_bytes_give_what_ensure_bytes_gives(
    texts: list[str], sep: str
) -> None:
    items: list[object] = [*texts, *(text.encode("utf-8", "replace") for text in texts)]
    # Surrogates cannot be encoded by either; keep to text that both can send.
    items = [item for item in items if not (isinstance(item, str) and _has_surrogate(item))]
    response = HeaderFirstEventSourceResponse(events(*items), ping=0, sep=sep)
    recorder = await call(response)
    assert recorder.body == b"".join(ensure_bytes(item, sep) for item in items)


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(char) <= 0xDFFF for char in text)


@pytest.mark.anyio
async def test_bytes_events_are_sent_without_a_copy() -> None:
    first, second = b"data: 1\r\n\r\n" * 100, b"data: 2\r\n\r\n" * 100
    response = HeaderFirstEventSourceResponse(events(first, second), peek_first_chunk=True)
    recorder = await call(response)
    assert recorder.messages[1][1]["body"] is first
    assert recorder.messages[2][1]["body"] is second
