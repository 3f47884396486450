"""`HeaderFirstMiddleware` and an idle head: an app that sends its head and then no body for a
while (long polling, a quiet SSE channel, a slow first token) gets its head after
``head_hold_timeout``, with the late headers known by then; what the app sends after passes
on as sent, and a body it never completes is completed.

Direct ASGI calls, every message recorded with its time: only these recordings can show
*when* a head went out. The hold is short (0.05 s) and every wait beside it long, so the
order of what is sent never depends on the machine's speed.
"""

from __future__ import annotations

import logging

import anyio
import anyio.lowlevel
import pytest
from starlette.types import Message, Receive, Scope, Send

from header_first_stream import HeaderFirstMiddleware, late_headers
from header_first_stream._middleware import DEFAULT_HEAD_HOLD

from ._asgi import (
    START,
    Recorder,
    body,
    call,
    chunk,
    http_scope,
    receive_disconnect_after,
    sent,
    start,
)

pytestmark = pytest.mark.anyio

HOLD = 0.05
IDLE = 0.5  # how long the apps below stay idle after their head: ten holds


async def _noop_app(scope: Scope, receive: Receive, send: Send) -> None:
    pass  # pragma: no cover


# --- the option --------------------------------------------------------------------------


def test_the_default_hold_is_five_seconds() -> None:
    assert DEFAULT_HEAD_HOLD == 1.0
    assert HeaderFirstMiddleware(_noop_app).head_hold_timeout == DEFAULT_HEAD_HOLD


@pytest.mark.parametrize("seconds", [0, 0.5, 30, None])
def test_a_hold_of_zero_or_more_seconds_or_none_is_accepted(seconds: float | None) -> None:
    assert HeaderFirstMiddleware(_noop_app, head_hold_timeout=seconds).head_hold_timeout == seconds


@pytest.mark.parametrize("seconds", [-1, -0.001, float("nan"), True, False, "5"])
def test_a_hold_below_zero_or_not_a_number_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError) as info:
        HeaderFirstMiddleware(_noop_app, head_hold_timeout=seconds)
    assert str(info.value) == (
        "head_hold_timeout must be a number of seconds >= 0 or None (hold until the first "
        f"body message), got {seconds!r}"
    )


# --- the timer sends an idle head ----------------------------------------------------------


def _time_of(recorder: Recorder, message_type: str) -> float:
    return next(at for at, message in recorder.messages if message["type"] == message_type)


async def test_without_a_hold_timeout_the_head_waits_for_the_first_body_however_long() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        await anyio.sleep(IDLE)
        late_headers().add("x-late", "1")  # still in time: the head is held
        await send(body(b"ok"))

    recorder = await call(HeaderFirstMiddleware(app, head_hold_timeout=None))
    assert sent(recorder) == [start(200, [(b"x-own", b"1"), (b"x-late", b"1")]), body(b"ok")]
    assert _time_of(recorder, "http.response.start") >= IDLE


async def test_a_body_that_follows_within_the_hold_sends_the_head_with_it() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        late_headers().add("x-late", "1")
        await send(body(b"ok"))
        await anyio.sleep(IDLE)  # the timer, had it not been cancelled, would fire here

    recorder = await call(HeaderFirstMiddleware(app, head_hold_timeout=HOLD))
    assert sent(recorder) == [start(200, [(b"x-own", b"1"), (b"x-late", b"1")]), body(b"ok")]


# --- what the app sends while the timer sends the head -------------------------------------


async def test_messages_sent_while_the_timer_sends_the_head_go_after_it() -> None:
    # The resolver waits, so the timer is still sending the head when the app (two tasks
    # of it, as sse-starlette's pings and events) sends its next messages.
    resolving = anyio.Event()
    sending = anyio.Event()

    async def resolver(scope: Scope) -> dict[str, str]:
        resolving.set()
        await sending.wait()
        for _ in range(10):  # both senders reach the middleware meanwhile
            await anyio.lowlevel.checkpoint()
        return {"x-resolved": "1"}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        await resolving.wait()

        async def send_one(message: Message) -> None:
            await send(message)

        async with anyio.create_task_group() as group:
            group.start_soon(send_one, body(b"ping", more=True))
            group.start_soon(send_one, body(b"event", more=True))
            sending.set()
        await send(body(b"last"))

    with anyio.fail_after(5):
        recorder = await call(HeaderFirstMiddleware(app, resolver=resolver, head_hold_timeout=0))
    messages = sent(recorder)
    assert messages[0] == start(200, [(b"x-own", b"1"), (b"x-resolved", b"1")])
    assert sorted(bytes(m["body"]) for m in messages[1:3]) == [b"event", b"ping"]
    assert messages[1:3] == [chunk(bytes(m["body"])) for m in messages[1:3]]
    assert messages[3:] == [body(b"last")]


async def test_a_resolver_failing_on_the_timers_head_answers_500_and_stops_the_app(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[str] = []

    async def resolver(scope: Scope) -> dict[str, str]:
        raise RuntimeError("limiter down")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        try:
            await anyio.sleep(IDLE * 10)
        finally:
            events.append("app cancelled")

    middleware = HeaderFirstMiddleware(app, resolver=resolver, head_hold_timeout=HOLD)
    with caplog.at_level(logging.WARNING, logger="header_first_stream"), anyio.fail_after(5):
        recorder = await call(middleware, http_scope(path="/p"))
    assert sent(recorder) == [
        start(
            500,
            [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")],
        ),
        body(b"Internal Server Error"),
    ]
    assert recorder.messages[-1][0] < IDLE  # the app was stopped, not waited for
    assert events == ["app cancelled"]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "header resolver failed for /p")
    ]


async def test_a_client_that_left_while_the_head_was_held_gets_nothing_from_the_timer() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        message: Message = await receive()  # the client left, the head still held
        assert message == {"type": "http.disconnect"}
        await anyio.sleep(IDLE)  # the hold expires meanwhile
        await send(body(b"dropped"))  # below spec 2.4: dropped, as a server drops it

    recorder = await call(
        HeaderFirstMiddleware(app, head_hold_timeout=HOLD),
        receive=receive_disconnect_after(0),
    )
    assert sent(recorder) == []
