"""Endless streams end when the server shuts down (``end_on_shutdown``).

Tier 1 drives the shutdown sources in process: `begin_shutdown`, sse-starlette's
``AppStatus.should_exit`` and a uvicorn-like SIGTERM handler; tests/test_shutdown_uvicorn.py sends
SIGTERM to a real uvicorn process.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import pytest
from sse_starlette.sse import AppStatus
from starlette.types import Message

from header_first_stream import (
    HeaderFirstEventSourceResponse,
    HeaderFirstStreamingResponse,
    begin_shutdown,
)
from header_first_stream._lifeline import Lifeline, Side
from header_first_stream._shutdown import POLL_INTERVAL

from ._asgi import (
    END,
    FakeUvicornServer,
    Recorder,
    http_scope,
    receive_disconnect_after,
    receive_nothing,
    wait_until,
)

pytestmark = pytest.mark.anyio


def endless(log: list[str], item: Any = "tick") -> AsyncIterator[Any]:
    async def generate() -> AsyncIterator[Any]:
        try:
            while True:
                yield item
                await anyio.sleep(0.01)
        finally:
            log.append("finally")

    return generate()


async def run_until_shutdown(response: Any, trigger: Any, *, within: float) -> Recorder:
    """Run ``response``, call ``trigger()`` once it streams, return when it ended."""
    recorder = Recorder()
    done: list[str] = []

    async def respond() -> None:
        await response(http_scope(), receive_nothing(), recorder)
        done.append("returned")

    async with anyio.create_task_group() as group:
        group.start_soon(respond)
        await anyio.sleep(0.05)
        trigger()
        began = anyio.current_time()
        await wait_until(lambda: bool(recorder.messages) and done == ["returned"], within)
    assert anyio.current_time() - began < within
    return recorder


@pytest.mark.parametrize("cls", [HeaderFirstEventSourceResponse, HeaderFirstStreamingResponse])
async def test_begin_shutdown_cuts_an_endless_stream_off_and_closes_it(cls: Any) -> None:
    log: list[str] = []
    options = {"ping": 0} if cls is HeaderFirstEventSourceResponse else {"end_on_shutdown": True}
    recorder = await run_until_shutdown(cls(endless(log), **options), begin_shutdown, within=1)
    assert log == ["finally"]
    assert recorder.messages[0][1]["status"] == 200
    assert recorder.messages[-1][1] != END  # cut off: the client sees an incomplete stream


async def test_a_stream_without_end_on_shutdown_stays_open() -> None:
    log: list[str] = []
    recorder = Recorder()
    response = HeaderFirstStreamingResponse(endless(log))
    async with anyio.create_task_group() as group:
        group.start_soon(response, http_scope(), receive_nothing(), recorder)
        await anyio.sleep(0.05)
        begin_shutdown()
        await anyio.sleep(POLL_INTERVAL + 0.2)
        assert log == []
        group.cancel_scope.cancel()
    assert log == ["finally"]


async def test_the_shutdown_event_lets_the_generator_say_goodbye_and_end_cleanly() -> None:
    shutting_down = anyio.Event()

    async def polite() -> AsyncIterator[str]:
        while not shutting_down.is_set():
            yield "tick"
            await anyio.sleep(0.01)
        yield "goodbye"

    response = HeaderFirstEventSourceResponse(
        polite(), ping=0, shutdown_event=shutting_down, shutdown_grace_period=5
    )
    recorder = await run_until_shutdown(response, begin_shutdown, within=1)
    assert recorder.body.endswith(b"data: tick\r\n\r\ndata: goodbye\r\n\r\n")
    assert recorder.messages[-1][1] == END  # it ended by itself: a complete stream


async def test_a_generator_that_ignores_the_event_is_cut_off_after_the_grace_period() -> None:
    log: list[str] = []
    shutting_down = anyio.Event()
    response = HeaderFirstStreamingResponse(
        endless(log),
        end_on_shutdown=True,
        shutdown_event=shutting_down,
        shutdown_grace_period=0.3,
    )
    recorder = Recorder()
    async with anyio.create_task_group() as group:
        group.start_soon(response, http_scope(), receive_nothing(), recorder)
        await anyio.sleep(0.05)
        begin_shutdown()
        await anyio.sleep(0.1)
        assert shutting_down.is_set() and log == []  # still in its grace period
        await wait_until(lambda: bool(log), 2)
    assert log == ["finally"]
    assert recorder.messages[-1][1] != END


async def test_sse_starlettes_app_status_should_exit_ends_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log: list[str] = []
    response = HeaderFirstEventSourceResponse(endless(log), ping=0)
    await run_until_shutdown(
        response, lambda: monkeypatch.setattr(AppStatus, "should_exit", True), within=2
    )
    assert log == ["finally"]


async def test_uvicorns_exit_flag_is_noticed_by_one_poll(uvicorn_like: FakeUvicornServer) -> None:
    log: list[str] = []
    response = HeaderFirstEventSourceResponse(endless(log), ping=0)
    await run_until_shutdown(
        response, lambda: setattr(uvicorn_like, "should_exit", True), within=POLL_INTERVAL + 0.5
    )
    assert log == ["finally"]


async def test_without_automatic_drain_uvicorns_flag_is_ignored_as_in_sse_starlette(
    uvicorn_like: FakeUvicornServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AppStatus, "enable_automatic_graceful_drain", False)
    log: list[str] = []
    response = HeaderFirstEventSourceResponse(endless(log), ping=0)
    async with anyio.create_task_group() as group:
        group.start_soon(response, http_scope(), receive_nothing(), Recorder())
        await anyio.sleep(0.05)
        uvicorn_like.should_exit = True
        await anyio.sleep(POLL_INTERVAL + 0.2)
        assert log == []
        monkeypatch.setattr(AppStatus, "should_exit", True)  # the manual switch still works
        await wait_until(lambda: bool(log), 2)
    assert log == ["finally"]


async def test_when_the_polling_stream_ends_another_takes_the_polling_over(
    uvicorn_like: FakeUvicornServer,
) -> None:
    logs: list[list[str]] = [[], [], []]
    async with anyio.create_task_group() as group:
        # Half a second in, the first stream starts the polling (it started first); its
        # client leaves at 0.8 s, and the polling moves to a stream still open.
        for n, receive in enumerate(
            [receive_disconnect_after(0.8), receive_nothing(), receive_nothing()]
        ):
            response = HeaderFirstEventSourceResponse(endless(logs[n]), ping=0)
            group.start_soon(response, http_scope(), receive, Recorder())
            await anyio.sleep(0.01)
        await anyio.sleep(1.0)
        assert logs == [["finally"], [], []]
        uvicorn_like.should_exit = True
        await wait_until(lambda: logs == [["finally"]] * 3, POLL_INTERVAL + 0.5)


@pytest.mark.parametrize("cls", [HeaderFirstEventSourceResponse, HeaderFirstStreamingResponse])
async def test_a_stream_shorter_than_a_poll_interval_starts_no_polling(cls: Any) -> None:
    from header_first_stream._shutdown import _watchers

    log: list[str] = []
    options = {"ping": 0} if cls is HeaderFirstEventSourceResponse else {"end_on_shutdown": True}
    response = cls(endless(log), **options)
    with anyio.fail_after(2):
        await response(http_scope(), receive_disconnect_after(0.1), Recorder())
    assert log == ["finally"]  # the client left: the stream was cut off and closed
    watchers = _watchers()
    assert (watchers.polling, watchers.watching) == (None, {})


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"shutdown_event": anyio.Event}, ValueError, "need end_on_shutdown=True"),
        ({"shutdown_grace_period": 1}, ValueError, "need end_on_shutdown=True"),
        (
            {"end_on_shutdown": True, "shutdown_grace_period": "1"},
            TypeError,
            "shutdown_grace_period must be a number of seconds, got str",
        ),
        (
            {"end_on_shutdown": True, "shutdown_grace_period": -1},
            ValueError,
            "shutdown_grace_period must be >= 0",
        ),
    ],
)
def test_shutdown_options_out_of_range_are_refused(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        HeaderFirstStreamingResponse(iter([b""]), **options)


async def test_uvicorns_flag_is_read_without_sse_starlette_imported(
    uvicorn_like: FakeUvicornServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "sse_starlette.sse")
    log: list[str] = []
    response = HeaderFirstStreamingResponse(endless(log), end_on_shutdown=True)
    await run_until_shutdown(
        response, lambda: setattr(uvicorn_like, "should_exit", True), within=POLL_INTERVAL + 0.5
    )
    assert log == ["finally"]


async def test_a_shutdown_during_the_final_message_lets_it_finish() -> None:
    release = anyio.Event()
    recorder = Recorder()

    async def slow_end(message: Message) -> None:
        await recorder(message)
        if not message.get("more_body", True) and message["type"] == "http.response.body":
            await release.wait()  # the client is slow to take the last chunk

    ran: list[str] = []

    async def short() -> AsyncIterator[bytes]:
        yield b"a"
        ran.append("to its end")

    response = HeaderFirstStreamingResponse(short(), end_on_shutdown=True)
    async with anyio.create_task_group() as group:
        group.start_soon(response, http_scope(), receive_nothing(), slow_end)
        await wait_until(lambda: len(recorder.messages) == 3, 2)  # head, "a", the end
        begin_shutdown()
        await anyio.sleep(0.05)
        release.set()
    assert [m for _, m in recorder.messages][-1] == END
    assert ran == ["to its end"]


async def test_sse_starlettes_exit_hook_replaced_on_an_instance_ends_the_stream() -> None:
    log: list[str] = []
    exit_now = anyio.Event()

    async def wait_for_exit() -> None:
        await exit_now.wait()

    response = HeaderFirstEventSourceResponse(endless(log), ping=0)
    response._listen_for_exit_signal = wait_for_exit  # type: ignore[method-assign]
    await run_until_shutdown(response, exit_now.set, within=1)
    assert log == ["finally"]


async def test_a_final_send_that_stalls_through_a_shutdown_is_cut_after_the_grace() -> None:
    async def stalls_on_the_end(message: Message) -> None:
        if message["type"] == "http.response.body" and not message["more_body"]:
            begin_shutdown()
            await anyio.sleep_forever()

    ran: list[str] = []

    async def short() -> AsyncIterator[bytes]:
        yield b"a"
        ran.append("to its end")

    response = HeaderFirstStreamingResponse(short(), end_on_shutdown=True)
    with anyio.fail_after(2):
        await response(http_scope(), receive_nothing(), stalls_on_the_end)
    assert ran == ["to its end"]  # and the response returned


async def test_a_stream_that_starts_after_the_exit_was_noticed_is_cut_off_at_once() -> None:
    first: list[str] = []
    await run_until_shutdown(
        HeaderFirstStreamingResponse(endless(first), end_on_shutdown=True), begin_shutdown, within=1
    )
    late: list[str] = []
    response = HeaderFirstStreamingResponse(endless(late), end_on_shutdown=True)
    with anyio.fail_after(1):
        await response(http_scope(), receive_nothing(), Recorder())
    assert (first, late) == (["finally"], ["finally"])


async def test_sse_starlettes_exit_hook_itself_returns_when_the_server_exits() -> None:
    response = HeaderFirstEventSourceResponse(endless([]), ping=0)
    returned: list[float] = []

    async def wait() -> None:
        await response._listen_for_exit_signal()
        returned.append(anyio.current_time())

    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await anyio.sleep(0.05)
        assert returned == []
        began = anyio.current_time()
        begin_shutdown()
        await wait_until(lambda: bool(returned), POLL_INTERVAL + 0.5)
    assert returned[0] - began <= POLL_INTERVAL + 0.1


async def test_begin_shutdown_wakes_a_polling_task_at_once() -> None:
    from header_first_stream._shutdown import _watchers

    log: list[str] = []
    recorder = Recorder()
    response = HeaderFirstStreamingResponse(endless(log), end_on_shutdown=True)
    async with anyio.create_task_group() as group:
        group.start_soon(response, http_scope(), receive_nothing(), recorder)
        await wait_until(lambda: _watchers().polling is not None, POLL_INTERVAL + 0.5)
        began = anyio.current_time()
        begin_shutdown()
        await wait_until(lambda: bool(log), 1)
    assert anyio.current_time() - began < POLL_INTERVAL / 2  # not a poll later


class _FakeWatch:
    """A `Lifeline` that records what is started beside it (and never runs it)."""

    def __init__(self, stopped: bool) -> None:
        self.stopped = stopped
        self.started: list[str] = []

    def start(self, fn: Any, *args: object) -> Side:
        self.started.append(fn.__name__)
        return Side()

    def stop(self) -> None:  # not called by the polling
        self.stopped = True


async def test_the_polling_skips_a_stream_that_is_being_stopped() -> None:
    # A stream whose client just left may still be registered for a moment: a task
    # started beside it would end at once and hand the polling straight back.
    from header_first_stream._shutdown import _Watchers

    stopping, open_ = _FakeWatch(stopped=True), _FakeWatch(stopped=False)
    watchers = _Watchers()
    watchers.start_polling(cast("list[Lifeline]", [stopping, open_]))
    assert (stopping.started, open_.started) == ([], ["_poll"])
    assert watchers.polling is not None
