"""`HeaderFirstStreamingResponse` when the client leaves or the request is cancelled: nothing
more is sent, the resolver is cancelled, and one task iterates and closes the body.
"""

from __future__ import annotations

import contextvars
import types
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.types import Message

from header_first_stream import HeaderFirstStreamingResponse, HeaderResolver

from ._asgi import (
    END,
    BlockingClient,
    LeavingClient,
    Recorder,
    TrackedBody,
    call,
    chunk,
    http_scope,
    receive_disconnect_after,
    receive_nothing,
    resolver_of,
    sent,
    start,
    tracked,
)
from ._expect import SPECS


@pytest.mark.anyio
async def test_client_disconnect_mid_stream_on_spec_2_3_closes_the_body() -> None:
    events: list[str] = []
    client = BlockingClient(accept=2)  # reads the head and one chunk, then stalls
    response = HeaderFirstStreamingResponse(
        tracked(events, b"a", b"b", b"c"), header_resolver=resolver_of({"x-late": "1"})
    )
    with anyio.fail_after(5):
        await call(response, http_scope(spec_version="2.3"), client.disconnect_when_stalled, client)
    assert sent(client) == [start(200, [(b"x-late", b"1")]), chunk(b"a")]
    assert events == ["body entered", "body closed"]


@pytest.mark.anyio
@pytest.mark.parametrize("peek", [False, True], ids=["no-peek", "peek"])
@pytest.mark.parametrize("accept", [0, 1, 2])
async def test_send_failing_on_spec_2_4_raises_client_disconnect_and_closes_the_body(
    accept: int, peek: bool
) -> None:
    events: list[str] = []
    client = LeavingClient(accept=accept)
    body = tracked(events, b"a", b"b")
    response = HeaderFirstStreamingResponse(
        body, peek_first_chunk=peek, header_resolver=resolver_of({"x-late": "1"})
    )
    with pytest.raises(ClientDisconnect):
        await call(response, http_scope(spec_version="2.4"), send=client)
    assert sent(client) == [start(200, [(b"x-late", b"1")]), chunk(b"a")][:accept]
    # Never entered when the head could not be sent, unless the peek entered it; closed
    # either way.
    entered = peek or accept > 0
    assert events == (["body entered", "body closed"] if entered else [])
    assert isinstance(body, types.AsyncGeneratorType)
    assert body.ag_frame is None


@pytest.mark.anyio
async def test_send_failing_without_options_on_spec_2_4_raises_client_disconnect() -> None:
    events: list[str] = []
    client = LeavingClient(accept=1)
    with pytest.raises(ClientDisconnect):
        await call(
            HeaderFirstStreamingResponse(tracked(events, b"a")),
            http_scope(spec_version="2.4"),
            send=client,
        )
    assert sent(client) == [start(200, [])]
    assert events == ["body entered", "body closed"]


@pytest.mark.anyio
@SPECS
async def test_cancellation_from_outside_closes_the_body(spec: str) -> None:
    events: list[str] = []
    client = BlockingClient(accept=2)
    response = HeaderFirstStreamingResponse(
        tracked(events, b"a", b"b"), header_resolver=resolver_of({"x-late": "1"})
    )
    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(call, response, http_scope(spec_version=spec), None, client)
            await client.stalled.wait()
            task_group.cancel_scope.cancel()
    assert sent(client) == [start(200, [(b"x-late", b"1")]), chunk(b"a")]
    assert events == ["body entered", "body closed"]


@pytest.mark.anyio
@SPECS
async def test_disconnect_while_resolving_cancels_the_resolver_and_sends_nothing(
    spec: str,
) -> None:
    events: list[str] = []
    resolving = anyio.Event()

    async def resolver() -> dict[str, str]:
        events.append("resolver started")
        resolving.set()
        try:
            await anyio.sleep(10)
            events.append("resolver returned")
        finally:
            events.append("resolver ended")
        return {"x-late": "1"}

    body = TrackedBody(b"a")
    response = HeaderFirstStreamingResponse(
        body,
        header_resolver=resolver,
        background=BackgroundTask(events.append, "background"),
    )

    async def receive() -> Message:
        await resolving.wait()
        return {"type": "http.disconnect"}

    with anyio.fail_after(5):
        recorder = await call(response, http_scope(spec_version=spec), receive)
    assert recorder.messages == []
    assert events == ["resolver started", "resolver ended", "background"]
    assert (body.pulls, body.closes) == (0, 1)


# --- one task iterates, and closes, the body -------------------------------------------

_span: contextvars.ContextVar[str | None] = contextvars.ContextVar("span", default=None)


def _span_body(log: list[object], *, endless: bool = False) -> AsyncIterator[str]:
    # Sets a context variable across its yields, as a tracing span around an upstream
    # call does; resetting it fails if the generator is resumed in another context.
    async def body() -> AsyncIterator[str]:
        token = _span.set("llm-call")
        try:
            for i in range(3):
                log.append(_span.get())
                yield f"chunk{i}\n"
            while endless:
                yield "more\n"
        finally:
            try:
                _span.reset(token)
                log.append("reset ok")
            except ValueError:
                log.append("reset failed")

    return body()


@pytest.mark.anyio
@SPECS
async def test_a_peeked_body_runs_in_one_context_from_first_chunk_to_close(spec: str) -> None:
    log: list[object] = []
    response = HeaderFirstStreamingResponse(
        _span_body(log), peek_first_chunk=True, header_resolver=resolver_of({"x-a": "1"})
    )
    recorder = await call(response, http_scope(spec_version=spec))
    assert recorder.body == b"chunk0\nchunk1\nchunk2\n"
    assert log == ["llm-call", "llm-call", "llm-call", "reset ok"]


@pytest.mark.anyio
@SPECS
async def test_a_body_cut_off_by_a_disconnect_is_closed_in_its_own_context(spec: str) -> None:
    log: list[object] = []
    response = HeaderFirstStreamingResponse(
        _span_body(log, endless=True), header_resolver=resolver_of({"x-a": "1"})
    )
    if spec == "2.4":
        recorder = Recorder()
        sends = 0

        async def send(message: Message) -> None:
            nonlocal sends
            sends += 1
            if sends > 3:  # the client leaves after the head and two chunks
                raise OSError("connection closed")
            await recorder(message)

        with pytest.raises(ClientDisconnect):
            await response(http_scope(spec_version=spec), receive_nothing(), send)
    else:

        async def slow_send(message: Message) -> None:
            await anyio.sleep(0.01)  # the client leaves while a send is in flight
            await recorder(message)

        recorder = Recorder()
        await response(http_scope(spec_version=spec), receive_disconnect_after(0.05), slow_send)
    assert log[-1] == "reset ok"


def shielded_resolver(
    seconds: float, headers: dict[str, str | int], done: list[str] | None = None
) -> HeaderResolver:
    """A resolver whose work may not be cancelled (a limiter write that must not be torn):
    it returns ``headers`` after ``seconds``, shielded, and records "written" in ``done``."""

    async def resolver() -> dict[str, str | int]:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(seconds)
            if done is not None:
                done.append("written")
        return headers

    return resolver


@pytest.mark.anyio
@SPECS
async def test_no_head_goes_out_when_the_client_left_during_a_shielded_resolver(
    spec: str,
) -> None:
    body = TrackedBody(b"hello")
    done: list[str] = []
    resolver = shielded_resolver(0.2, {"x-ratelimit-remaining-requests": 7}, done)
    response = HeaderFirstStreamingResponse(body, header_resolver=resolver)
    recorder = await call(response, http_scope(spec_version=spec), receive_disconnect_after(0.05))
    assert recorder.messages == []
    assert (body.pulls, body.closes) == (0, 1)
    assert done == ["written"]  # the shield held: the client leaving tore nothing


@pytest.mark.anyio
@SPECS
async def test_a_peeked_first_chunk_that_cannot_be_encoded_is_an_early_error(spec: str) -> None:
    async def body() -> AsyncIterator[Any]:
        yield {"not": "a chunk"}

    seen: list[object] = []

    async def resolver(first: object) -> dict[str, str]:
        seen.append(first)
        return {"x-a": "1"}

    response = HeaderFirstStreamingResponse(body(), peek_first_chunk=True, header_resolver=resolver)
    recorder = await call(response, http_scope(spec_version=spec))
    assert recorder.status == 502
    assert (b"x-a", b"1") in recorder.headers
    assert seen == [None]


@pytest.mark.anyio
@SPECS
async def test_a_peeked_body_may_hold_a_deadline_across_its_yields(spec: str) -> None:
    async def body() -> AsyncIterator[bytes]:
        with anyio.fail_after(60):  # a deadline over the whole upstream stream
            yield b"a"
            yield b"b"

    response = HeaderFirstStreamingResponse(
        body(), peek_first_chunk=True, header_resolver=resolver_of({"x-late": "1"})
    )
    recorder = await call(response, http_scope(spec_version=spec))
    assert sent(recorder) == [start(200, [(b"x-late", b"1")]), chunk(b"a"), chunk(b"b"), END]


@pytest.mark.anyio
@SPECS
async def test_no_head_goes_out_when_the_request_is_cancelled_during_a_shielded_resolver(
    spec: str,
) -> None:
    resolver = shielded_resolver(0.1, {"x-late": "1"})
    body = TrackedBody(b"a")
    recorder = Recorder()
    # A request-timeout middleware around the app, or the server cancelling the request.
    with anyio.move_on_after(0.02) as outer:
        await HeaderFirstStreamingResponse(body, header_resolver=resolver)(
            http_scope(spec_version=spec), receive_nothing(), recorder
        )
    assert outer.cancelled_caught
    assert recorder.messages == []
    assert (body.pulls, body.closes) == (0, 1)
