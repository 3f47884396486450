"""`HeaderFirstEventSourceResponse`: parity with sse-starlette, pings, HEAD, early errors.

The first part pins, one test each, the differences from
`sse_starlette.EventSourceResponse` that ``header_first_stream/_sse.py`` lists, and the
behaviour it keeps (the same bytes for the same events). The ASGI-level tests record every
`send` call with its start and end time, so that "one send at a time" is checked directly.
The last part runs the response on real uvicorn servers, read by httpx and httpx-sse.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from httpx_sse import aconnect_sse
from hypothesis import given, settings
from hypothesis import strategies as st
from sse_starlette import EventSourceResponse, JSONServerSentEvent, ServerSentEvent
from sse_starlette.event import ensure_bytes
from sse_starlette.sse import SendTimeoutError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

import header_first_stream
from header_first_stream import HeaderFirstEventSourceResponse, late_headers

from ._asgi import (
    Recorder,
    call,
    http_scope,
    receive_disconnect_after,
    receive_nothing,
    websocket_scope,
)
from ._servers import serve

SPECS = pytest.mark.parametrize("spec", ["2.3", "2.4"])

WAIT = 5.0
"""Upper bound, in seconds, for anything a test waits for across threads or sockets."""

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]

PING = b": ping\r\n\r\n"


def ping_event() -> ServerSentEvent:
    return ServerSentEvent(comment="ping")


async def events(*items: object) -> AsyncIterator[object]:
    for item in items:
        yield item


# --- import and export ---------------------------------------------------------------


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_importing_the_package_imports_neither_sse_starlette_nor_patches_uvicorn() -> None:
    out = run_python(
        "import sys\n"
        "from uvicorn.main import Server\n"
        "handle_exit = Server.handle_exit\n"
        "import header_first_stream\n"
        "print('sse_starlette' in sys.modules, Server.handle_exit is handle_exit)\n"
        "header_first_stream.HeaderFirstEventSourceResponse\n"
        "print('sse_starlette' in sys.modules, Server.handle_exit is handle_exit)\n"
    )
    # Only using the SSE class imports sse-starlette (which then patches uvicorn).
    assert out == "False True\nTrue False\n"


def test_without_sse_starlette_the_class_raises_an_import_error_naming_the_extra() -> None:
    out = run_python(
        "import sys\n"
        "sys.modules['sse_starlette'] = None\n"
        "import header_first_stream\n"
        "try:\n"
        "    from header_first_stream import HeaderFirstEventSourceResponse\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert out == (
        "HeaderFirstEventSourceResponse needs sse-starlette (No module named "
        "'sse_starlette.event'; 'sse_starlette' is not a package); install the 'sse' extra: "
        "pip install 'header-first-stream[sse]'\n"
    )


def test_the_import_error_without_sse_starlette_also_in_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same as above, in this process so that coverage sees the branch. Every module
    # touched is put back by monkeypatch.
    monkeypatch.setitem(sys.modules, "sse_starlette", None)
    monkeypatch.setitem(sys.modules, "sse_starlette.event", None)
    monkeypatch.delitem(sys.modules, "header_first_stream._sse")
    monkeypatch.delattr(header_first_stream, "HeaderFirstEventSourceResponse", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'header-first-stream\[sse\]'$") as info:
        header_first_stream.HeaderFirstEventSourceResponse  # noqa: B018
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_the_lazy_export_is_the_class_and_other_names_still_raise_attribute_error() -> None:
    from header_first_stream._sse import HeaderFirstEventSourceResponse as direct

    # Public, but not in __all__: a star import must not import sse-starlette.
    assert "HeaderFirstEventSourceResponse" not in header_first_stream.__all__
    assert "HeaderFirstEventSourceResponse" in dir(header_first_stream)
    assert header_first_stream.HeaderFirstEventSourceResponse is direct
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        header_first_stream.NoSuchThing  # noqa: B018


# --- headers and options ---------------------------------------------------------------


def test_default_headers_are_sse_starlettes() -> None:
    ours = HeaderFirstEventSourceResponse(events(), headers={"Connection": "close"})
    theirs = EventSourceResponse(events(), headers={"Connection": "close"})
    assert ours.raw_headers == SSE_HEADERS
    assert sorted(theirs.raw_headers) == sorted(SSE_HEADERS)


@pytest.mark.anyio
@pytest.mark.parametrize(("version", "connection"), [("1.0", True), ("1.1", True), ("2", False)])
async def test_connection_keep_alive_goes_out_over_http_1_only(
    version: str, connection: bool
) -> None:
    recorder = await call(
        HeaderFirstEventSourceResponse(events("a"), ping=0), http_scope(http_version=version)
    )
    assert ((b"connection", b"keep-alive") in recorder.headers) is connection
    assert recorder.headers == [h for h in SSE_HEADERS if connection or h[0] != b"connection"]


def test_the_apps_own_cache_control_is_kept_and_x_accel_buffering_is_always_no() -> None:
    response = HeaderFirstEventSourceResponse(
        events(),
        headers={"Cache-Control": "public, max-age=5", "X-Accel-Buffering": "yes", "x-a": "1"},
    )
    assert response.raw_headers == [
        (b"cache-control", b"public, max-age=5"),
        (b"x-a", b"1"),
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"connection", b"keep-alive"),
        (b"x-accel-buffering", b"no"),
    ]


def test_options_default_like_sse_starlette() -> None:
    ours = HeaderFirstEventSourceResponse(events())
    theirs = EventSourceResponse(events())
    assert (ours.ping_interval, ours.sep, ours.send_timeout) == (15, "\r\n", None)
    assert (theirs.ping_interval, theirs.sep, theirs.send_timeout) == (15, "\r\n", None)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"send_timeout": 0}, ValueError, r"send_timeout must be a positive number .*got 0"),
        ({"resolver_timeout": -1}, ValueError, r"resolver_timeout must be a positive"),
    ],
)
def test_invalid_header_first_options_are_refused_with_what_to_pass(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        HeaderFirstEventSourceResponse(events(), **options)


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


# --- the head: resolver, HEAD, websocket, background -------------------------------------


@pytest.mark.anyio
@SPECS
async def test_resolved_and_request_late_headers_are_in_the_sse_head(spec: str) -> None:
    async def resolver() -> Mapping[str, str | int]:
        return {"x-ratelimit-remaining-requests": 99}

    scope = http_scope(spec_version=spec)
    late_headers(scope).add("x-request-id", "r-1")
    response = HeaderFirstEventSourceResponse(events("hi"), header_resolver=resolver)
    recorder = await call(response, scope)
    assert recorder.head == {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            *SSE_HEADERS,
            (b"x-request-id", b"r-1"),
            (b"x-ratelimit-remaining-requests", b"99"),
        ],
    }
    assert recorder.body == b"data: hi\r\n\r\n"


@pytest.mark.anyio
@SPECS
async def test_head_sends_the_get_head_and_never_starts_the_stream(spec: str) -> None:
    pulled: list[str] = []

    async def body() -> AsyncGenerator[str]:
        pulled.append("started")  # pragma: no cover
        yield "never"  # pragma: no cover

    async def resolver(first: object) -> Mapping[str, str]:
        assert first is None  # HEAD: nothing was pulled
        return {"x-model": "m"}

    ran: list[str] = []

    async def background() -> None:
        ran.append("background")

    iterator = body()
    response = HeaderFirstEventSourceResponse(
        iterator,
        ping=0.01,
        header_resolver=resolver,
        peek_first_chunk=True,
        background=BackgroundTask(background),
    )
    with anyio.fail_after(WAIT):
        recorder = await call(response, http_scope("HEAD", spec_version=spec))
    await anyio.sleep(0.05)  # a ping task, had one started, would have sent by now
    assert [m for _, m in recorder.messages] == [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*SSE_HEADERS, (b"x-model", b"m")],
        },
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]
    assert pulled == []
    with pytest.raises(StopAsyncIteration):  # closed: it can never produce anything again
        await anext(iterator)
    assert ran == ["background"]


@pytest.mark.anyio
async def test_a_websocket_scope_gets_the_events_as_a_denial_response() -> None:
    response = HeaderFirstEventSourceResponse(events("x"), ping=0)
    recorder = await call(response, websocket_scope())
    assert recorder.types == [
        "websocket.http.response.start",
        "websocket.http.response.body",
        "websocket.http.response.body",
    ]
    assert recorder.body == b"data: x\r\n\r\n"


# --- peek and early errors ---------------------------------------------------------------


@pytest.mark.anyio
@SPECS
async def test_with_peek_the_resolver_gets_the_first_event_as_yielded(spec: str) -> None:
    seen: list[object] = []
    first = {"data": '{"model":"gpt-x"}', "event": "chunk"}

    async def resolver(item: object) -> Mapping[str, str]:
        seen.append(item)
        return {"x-model": "gpt-x"}

    response = HeaderFirstEventSourceResponse(
        events(first, "done"), header_resolver=resolver, peek_first_chunk=True
    )
    recorder = await call(response, http_scope(spec_version=spec))
    assert seen == [first]
    assert seen[0] is first
    assert recorder.headers == [*SSE_HEADERS, (b"x-model", b"gpt-x")]
    assert recorder.body == b'event: chunk\r\ndata: {"model":"gpt-x"}\r\n\r\ndata: done\r\n\r\n'


@pytest.mark.anyio
@SPECS
async def test_a_first_event_that_cannot_be_encoded_is_a_502_not_a_200(spec: str) -> None:
    async def body() -> AsyncIterator[dict[str, str]]:
        yield {"dat": "a typo: not a ServerSentEvent argument"}

    response = HeaderFirstEventSourceResponse(body(), ping=0, peek_first_chunk=True)
    recorder = await call(response, http_scope(spec_version=spec))
    assert recorder.status == 502
    assert recorder.body.startswith(b'{"error":{"message":"The upstream service failed')


@pytest.mark.anyio
@SPECS
async def test_an_error_before_the_first_event_is_a_502_not_a_200_event_stream(spec: str) -> None:
    async def body() -> AsyncIterator[str]:
        raise ConnectionError("upstream refused")
        yield "never"  # pragma: no cover

    async def resolver(item: object) -> Mapping[str, str]:
        return {"x-ratelimit-remaining-requests": "3"}

    response = HeaderFirstEventSourceResponse(
        body(), ping=0.01, header_resolver=resolver, peek_first_chunk=True
    )
    recorder = await call(response, http_scope(spec_version=spec))
    body_bytes = (
        b'{"error":{"message":"The upstream service failed before sending a response.",'
        b'"type":"upstream_error","code":502}}'
    )
    assert [m for _, m in recorder.messages] == [
        {
            "type": "http.response.start",
            "status": 502,
            "headers": [
                (b"content-length", str(len(body_bytes)).encode()),
                (b"content-type", b"application/json"),
                (b"x-ratelimit-remaining-requests", b"3"),
            ],
        },
        {"type": "http.response.body", "body": body_bytes, "more_body": False},
    ]


@pytest.mark.anyio
@SPECS
async def test_an_error_after_the_first_event_propagates_unwrapped_and_closes_the_stream(
    spec: str,
) -> None:
    closed: list[bool] = []

    async def body() -> AsyncIterator[str]:
        try:
            yield "one"
            raise RuntimeError("upstream broke mid-stream")
        finally:
            closed.append(True)

    response = HeaderFirstEventSourceResponse(body(), ping=10)
    recorder = Recorder()
    with pytest.raises(RuntimeError, match="upstream broke mid-stream"):
        await call(response, http_scope(spec_version=spec), send=recorder)
    assert recorder.body == b"data: one\r\n\r\n"
    assert recorder.types == ["http.response.start", "http.response.body"]
    assert closed == [True]


# --- pings -------------------------------------------------------------------------------


@dataclass
class TimedSend:
    """A `send` that takes ``delay(message)`` seconds and records each call's start and end.

    It fails the test if a call starts while another is in flight.
    """

    delay: Callable[[Message], float] = lambda message: 0.0
    calls: list[tuple[float, float, Message]] = field(default_factory=list)
    in_flight: int = 0
    origin: float = field(default_factory=time.monotonic)

    async def __call__(self, message: Message) -> None:
        assert self.in_flight == 0, f"send called while another send is in flight: {message}"
        self.in_flight += 1
        started = time.monotonic() - self.origin
        try:
            seconds = self.delay(message)
            if seconds:
                await anyio.sleep(seconds)
        finally:
            self.in_flight -= 1
        self.calls.append((started, time.monotonic() - self.origin, message))

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for _, _, m in self.calls if m["type"] == "http.response.body"]


def is_ping(message: Message) -> bool:
    return message.get("body") == PING


async def send_through(response: Response, send: TimedSend, spec: str = "2.3") -> None:
    async def as_send(message: Message) -> None:
        await send(message)

    with anyio.fail_after(WAIT):
        await response(http_scope(spec_version=spec), receive_nothing(), as_send)


@pytest.mark.anyio
@SPECS
async def test_pings_go_out_after_the_head_even_when_the_resolver_is_slow(spec: str) -> None:
    async def resolver() -> Mapping[str, str]:
        await anyio.sleep(0.2)  # four ping intervals
        return {"x-late": "1"}

    async def body() -> AsyncIterator[str]:
        yield "first"
        await anyio.sleep(0.2)
        yield "second"

    send = TimedSend()
    response = HeaderFirstEventSourceResponse(
        body(), ping=0.05, ping_message_factory=ping_event, header_resolver=resolver
    )
    await send_through(response, send, spec)
    messages = [m for _, _, m in send.calls]
    assert messages[0]["type"] == "http.response.start"
    assert messages[0]["headers"][-1] == (b"x-late", b"1")
    assert messages[1]["body"] == b"data: first\r\n\r\n"
    between = [m["body"] for m in messages[2:-2]]
    assert between and set(between) == {PING}
    assert messages[-2]["body"] == b"data: second\r\n\r\n"
    assert messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


@pytest.mark.anyio
async def test_the_default_ping_is_sse_starlettes_timestamped_comment() -> None:
    async def body() -> AsyncIterator[str]:
        await anyio.sleep(0.3)
        yield "x"

    send = TimedSend()
    await send_through(HeaderFirstEventSourceResponse(body(), ping=0.05, sep="\n"), send)
    pings = send.bodies[:-2]
    assert pings
    for ping in pings:
        assert re.fullmatch(rb": ping - \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\+00:00\n\n", ping)


@pytest.mark.anyio
async def test_ping_zero_sends_no_pings() -> None:
    async def body() -> AsyncIterator[str]:
        await anyio.sleep(0.1)
        yield "x"

    send = TimedSend()
    await send_through(HeaderFirstEventSourceResponse(body(), ping=0), send)
    assert send.bodies == [b"data: x\r\n\r\n", b""]


@pytest.mark.anyio
@pytest.mark.parametrize("ping", [0, 0.05])
async def test_a_client_leaving_mid_stream_ends_the_response_and_closes_the_events(
    ping: float,
) -> None:
    closed = anyio.Event()

    async def body() -> AsyncIterator[str]:
        try:
            yield "x"
            await anyio.sleep_forever()
            yield "never"  # pragma: no cover
        finally:
            closed.set()

    recorder = Recorder()
    response = HeaderFirstEventSourceResponse(body(), ping=ping)
    with anyio.fail_after(WAIT):
        await response(http_scope(spec_version="2.3"), receive_disconnect_after(0.2), recorder)
    assert closed.is_set()
    bodies = [m["body"] for _, m in recorder.messages if m["type"] == "http.response.body"]
    assert bodies[0] == b"data: x\r\n\r\n"
    assert all(b.startswith(b": ping - ") for b in bodies[1:])
    assert len(bodies) > 1 if ping else len(bodies) == 1


@pytest.mark.anyio
async def test_an_event_waits_for_a_ping_being_sent() -> None:
    async def body() -> AsyncIterator[str]:
        await anyio.sleep(0.15)  # the first ping is being sent from 0.05 to 0.35
        yield "event"

    send = TimedSend(delay=lambda m: 0.3 if is_ping(m) else 0.0)
    response = HeaderFirstEventSourceResponse(body(), ping=0.05, ping_message_factory=ping_event)
    await send_through(response, send)
    first_ping = next(call for call in send.calls if is_ping(call[2]))
    event = next(call for call in send.calls if call[2].get("body") == b"data: event\r\n\r\n")
    assert first_ping[1] <= event[0]
    assert send.calls[-1][2] == {"type": "http.response.body", "body": b"", "more_body": False}


@pytest.mark.anyio
async def test_no_ping_starts_while_an_event_is_being_sent() -> None:
    async def body() -> AsyncIterator[str]:
        yield "slow to send"
        await anyio.sleep(0.2)

    send = TimedSend(delay=lambda m: 0.0 if is_ping(m) else 0.3)
    response = HeaderFirstEventSourceResponse(body(), ping=0.05, ping_message_factory=ping_event)
    await send_through(response, send)
    event = next(
        call for call in send.calls if call[2].get("body") == b"data: slow to send\r\n\r\n"
    )
    pings = [call for call in send.calls if is_ping(call[2])]
    assert pings  # pings resumed once the event was out
    assert all(ping[0] >= event[1] for ping in pings)


@pytest.mark.anyio
async def test_a_ping_tick_during_an_event_send_is_skipped_not_queued() -> None:
    # Ticks at 0.1 and 0.2 s find the event being sent (0 to 0.25 s) and are dropped; the
    # stream ends right after the event, before the next tick. A queued ping would show
    # between the event and the end.
    send = TimedSend(delay=lambda m: 0.25 if m.get("body") else 0.0)
    response = HeaderFirstEventSourceResponse(
        events("slow"), ping=0.1, ping_message_factory=ping_event
    )
    await send_through(response, send)
    assert send.bodies == [b"data: slow\r\n\r\n", b""]


@pytest.mark.anyio
async def test_the_end_of_the_stream_waits_for_a_ping_being_sent() -> None:
    async def body() -> AsyncIterator[str]:
        yield "only"
        await anyio.sleep(0.15)  # ends while the first ping is being sent (0.05 to 0.35)

    send = TimedSend(delay=lambda m: 0.3 if is_ping(m) else 0.0)
    response = HeaderFirstEventSourceResponse(body(), ping=0.05, ping_message_factory=ping_event)
    await send_through(response, send)
    assert send.bodies == [b"data: only\r\n\r\n", PING, b""]
    assert send.calls[-2][1] <= send.calls[-1][0]


@pytest.mark.anyio
@SPECS
async def test_pings_and_events_never_overlap_under_load(spec: str) -> None:
    # A short ping interval, a body with short pauses and a send that sleeps a little on
    # every call: many chances for a ping and an event to meet. TimedSend fails on overlap.
    items = [f"event {i}" for i in range(60)]

    async def body() -> AsyncIterator[str]:
        for i, item in enumerate(items):
            await anyio.sleep(0.001 * (i % 4))
            yield item

    send = TimedSend(delay=lambda m: 0.002 if is_ping(m) else 0.001 * (len(m.get("body", b"")) % 3))
    response = HeaderFirstEventSourceResponse(body(), ping=0.001, ping_message_factory=ping_event)
    await send_through(response, send, spec)
    sent_events = [body for body in send.bodies if body not in (PING, b"")]
    assert sent_events == [f"data: {item}\r\n\r\n".encode() for item in items]
    assert PING in send.bodies
    assert send.bodies[-1] == b""


# --- send timeout and failing sends -------------------------------------------------------


@pytest.mark.anyio
async def test_a_send_timeout_below_spec_2_4_raises_send_timeout_error_and_closes_the_stream() -> (
    None
):
    closed: list[bool] = []

    async def body() -> AsyncIterator[str]:
        try:
            yield "stuck"
            yield "never sent"  # pragma: no cover
        finally:
            closed.append(True)

    send = TimedSend(delay=lambda m: 10.0 if m.get("body") else 0.0)
    response = HeaderFirstEventSourceResponse(body(), send_timeout=0.05, ping=0)
    with pytest.raises(SendTimeoutError, match=r"took over 0\.05s \(send_timeout\)"):
        await send_through(response, send)
    assert closed == [True]


@pytest.mark.anyio
async def test_a_send_timeout_from_spec_2_4_is_a_client_disconnect() -> None:
    async def body() -> AsyncIterator[str]:
        await anyio.sleep(1)  # a quiet upstream: the ping is the send that times out
        yield "never sent"  # pragma: no cover

    send = TimedSend(delay=lambda m: 10.0 if is_ping(m) else 0.0)
    response = HeaderFirstEventSourceResponse(
        body(), send_timeout=0.05, ping=0.01, ping_message_factory=ping_event
    )
    with pytest.raises(ClientDisconnect) as info:
        await send_through(response, send, "2.4")
    assert isinstance(info.value.__context__, SendTimeoutError)


@pytest.mark.anyio
async def test_the_send_timeout_does_not_bound_the_head() -> None:
    send = TimedSend(delay=lambda m: 0.2 if m["type"] == "http.response.start" else 0.0)
    response = HeaderFirstEventSourceResponse(events("a"), send_timeout=0.05, ping=0)
    await send_through(response, send)
    assert send.bodies == [b"data: a\r\n\r\n", b""]


@pytest.mark.anyio
async def test_a_send_timeout_that_is_not_reached_changes_nothing() -> None:
    send = TimedSend()
    response = HeaderFirstEventSourceResponse(events("a", "b"), send_timeout=1, ping=0)
    await send_through(response, send)
    assert send.bodies == [b"data: a\r\n\r\n", b"data: b\r\n\r\n", b""]


@pytest.mark.anyio
async def test_a_ping_to_a_client_that_left_ends_the_response_at_spec_2_4() -> None:
    closed: list[bool] = []

    async def body() -> AsyncIterator[str]:
        try:
            yield "one"
            await anyio.sleep(WAIT)
            yield "never"  # pragma: no cover
        finally:
            closed.append(True)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        if is_ping(message):
            raise OSError("connection closed")
        sent.append(message)

    response = HeaderFirstEventSourceResponse(body(), ping=0.02, ping_message_factory=ping_event)
    with anyio.fail_after(WAIT), pytest.raises(ClientDisconnect):
        await response(http_scope(spec_version="2.4"), receive_nothing(), send)
    assert [m.get("body") for m in sent] == [None, b"data: one\r\n\r\n"]
    assert closed == [True]


# --- real servers --------------------------------------------------------------------------


class State:
    """What the server threads report to the test thread: events and times, per request id.

    `dict.setdefault` and `threading.Event` are safe across threads.
    """

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self.times: dict[str, float] = {}

    def event(self, name: str) -> threading.Event:
        return self._events.setdefault(name, threading.Event())

    def mark(self, name: str) -> None:
        self.times[name] = time.monotonic()
        self.event(name).set()


async def wait_for(event: threading.Event) -> None:
    assert await anyio.to_thread.run_sync(event.wait, WAIT), f"not set within {WAIT}s"


RATE_LIMITS: Mapping[str, str | int] = {
    "x-ratelimit-limit-requests": 100,
    "x-ratelimit-remaining-requests": 0,
}


def upstream_app(state: State) -> Starlette:
    """An LLM-like upstream: rate-limits, streams tokens, or never answers."""

    async def limited(request: Request) -> Response:
        return JSONResponse(
            {"error": {"message": "Rate limit reached", "type": "requests"}},
            status_code=429,
            headers={"retry-after": "7"},
        )

    async def tokens(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f'data: {{"token": {i}}}\n\n'.encode()

        return Response(b"".join([chunk async for chunk in body()]), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/limited", limited),
            Route("/tokens", tokens),
            Route("/hang", Hang(state)),
        ]
    )


class Hang:
    """An ASGI app that answers nothing until its client (the gateway) leaves."""

    def __init__(self, state: State) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = scope["query_string"].decode()
        self.state.mark(f"upstream-started-{request_id}")
        while (await receive())["type"] != "http.disconnect":
            pass
        self.state.mark(f"upstream-disconnected-{request_id}")


def upstream_error_response(exc: Exception) -> Response | None:
    if isinstance(exc, httpx.HTTPStatusError):
        return JSONResponse(
            {"error": {"message": "rate limited upstream", "type": "rate_limit", "code": 429}},
            status_code=exc.response.status_code,
            headers={"retry-after": exc.response.headers["retry-after"]},
        )
    return None  # pragma: no cover


def gateway_app(upstream: str, state: State) -> Starlette:
    """A gateway that relays an upstream's events through HeaderFirstEventSourceResponse."""

    async def rate_limits(first: object) -> Mapping[str, str | int]:
        return RATE_LIMITS

    async def chat(request: Request) -> Response:
        request_id = request.query_params["id"]
        late_headers(request).add("x-request-id", request_id)

        async def relay() -> AsyncIterator[object]:
            state.mark(f"gateway-started-{request_id}")
            try:
                async with httpx.AsyncClient(timeout=WAIT) as client:
                    path = request.query_params["upstream"]
                    url = f"{upstream}/{path}?{request_id}"
                    async with client.stream("GET", url) as answer:
                        answer.raise_for_status()
                        async for line in answer.aiter_lines():
                            if line.startswith("data: "):
                                yield {"data": line.removeprefix("data: "), "event": "token"}
            finally:
                state.mark(f"gateway-finally-{request_id}")

        return HeaderFirstEventSourceResponse(
            relay(),
            header_resolver=rate_limits,
            peek_first_chunk=True,
            early_error_handler=upstream_error_response,
        )

    async def slow(request: Request) -> Response:
        async def body() -> AsyncIterator[str]:
            yield "first"
            await anyio.sleep(0.6)
            yield "second"

        return HeaderFirstEventSourceResponse(body(), ping=0.1)

    return Starlette(routes=[Route("/chat", chat), Route("/slow", slow)])


@dataclass
class Servers:
    gateway: str
    state: State


UVICORNS = ["uvicorn-h11", "uvicorn-httptools"]


@pytest.fixture(scope="module", params=UVICORNS)
def servers(request: pytest.FixtureRequest) -> Iterator[Servers]:
    state = State()
    with (
        serve(upstream_app(state), "uvicorn-h11") as upstream,
        serve(gateway_app(upstream, state), str(request.param)) as gateway,
    ):
        yield Servers(gateway, state)


@pytest.mark.anyio
async def test_server_an_upstream_429_reaches_the_client_as_429_with_retry_after_and_limits(
    servers: Servers,
) -> None:
    request_id = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=WAIT) as client:
        answer = await client.get(
            f"{servers.gateway}/chat", params={"upstream": "limited", "id": request_id}
        )
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "7"
    assert answer.headers["x-ratelimit-limit-requests"] == "100"
    assert answer.headers["x-ratelimit-remaining-requests"] == "0"
    assert answer.headers["x-request-id"] == request_id
    assert answer.headers["content-type"] == "application/json"
    assert answer.content == (
        b'{"error":{"message":"rate limited upstream","type":"rate_limit","code":429}}'
    )
    await wait_for(servers.state.event(f"gateway-finally-{request_id}"))


@pytest.mark.anyio
async def test_server_an_httpx_sse_client_sees_every_event_and_the_late_headers(
    servers: Servers,
) -> None:
    request_id = uuid.uuid4().hex
    async with (
        httpx.AsyncClient(timeout=WAIT) as client,
        aconnect_sse(
            client, "GET", f"{servers.gateway}/chat?upstream=tokens&id={request_id}"
        ) as source,
    ):
        received = [(sse.event, sse.data) async for sse in source.aiter_sse()]
        headers = source.response.headers
        status = source.response.status_code
    assert status == 200
    assert received == [("token", f'{{"token": {i}}}') for i in range(5)]
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    assert headers["x-accel-buffering"] == "no"
    assert headers["x-request-id"] == request_id
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["connection"] == "keep-alive"  # HTTP/1.1, as sse-starlette sends it


@pytest.mark.anyio
async def test_server_pings_arrive_on_a_slow_stream(servers: Servers) -> None:
    lines: list[str] = []
    async with (
        httpx.AsyncClient(timeout=WAIT) as client,
        client.stream("GET", f"{servers.gateway}/slow") as answer,
    ):
        async for line in answer.aiter_lines():
            lines.append(line)
    lines = [line for line in lines if line]
    assert lines[0] == "data: first"
    assert lines[-1] == "data: second"
    pings = lines[1:-1]
    assert len(pings) >= 2  # 0.6 s of silence with a ping every 0.1 s
    assert all(line.startswith(": ping - ") for line in pings)


@pytest.mark.anyio
async def test_server_a_disconnect_before_the_first_event_closes_the_upstream_generator_at_once(
    servers: Servers,
) -> None:
    request_id = uuid.uuid4().hex
    state = servers.state
    host, port = servers.gateway.removeprefix("http://").split(":")
    stream = await anyio.connect_tcp(host, int(port))
    try:
        await stream.send(
            f"GET /chat?upstream=hang&id={request_id} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        )
        # The gateway's generator is now waiting for the upstream's first byte.
        await wait_for(state.event(f"upstream-started-{request_id}"))
    finally:
        closed_at = time.monotonic()
        await stream.aclose()
    await wait_for(state.event(f"gateway-finally-{request_id}"))
    elapsed = state.times[f"gateway-finally-{request_id}"] - closed_at
    assert elapsed < 0.1, f"the generator's finally ran {elapsed * 1000:.0f} ms after the close"
    # ... and the upstream sees its request abandoned: no tokens generated for nobody.
    await wait_for(state.event(f"upstream-disconnected-{request_id}"))
