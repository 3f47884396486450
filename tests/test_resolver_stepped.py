"""A header resolver at ASGI spec 2.4, stepped before anything is set up, at the ASGI level.

At 2.4 no listener runs beside the whole response, so a resolver is watched only while it
waits. The first call of a resolver's code runs inside a cancel scope with the listener
armed, and teaches whether its later calls can be stepped first, outside any scope: they can
when it returned without waiting, or waited with no cancel scope of its own open (a
`fail_after`, a task group, trio's own `sleep` are scopes of its own). A stepped call that
returns at once costs no listener and no scope. Whatever the path, the client leaving while
the resolver waits sends nothing and closes the body; the one exception, documented in
``docs/differences.md``: a call stepped first whose first wait is, this time, inside a scope
of its own, or the first call that waits at all of a code whose calls returned at once until
then, runs to its end (nothing is sent), and its end decides how its code's calls run.

Each test defines its resolvers inside it, and starts with nothing learned: what is learned
is kept per code object for the process.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from starlette.types import Message, Receive

from header_first_stream import HeaderFirstStreamingResponse, _lifeline, late_headers

from ._asgi import (
    END,
    LOGGER,
    Recorder,
    call,
    chunk,
    http_scope,
    sent,
    stale_cancellation,
    start,
    tracked,
)

pytestmark = pytest.mark.anyio

OWN = [(b"x-own", b"1"), (b"content-type", b"text/plain; charset=utf-8")]


@pytest.fixture(autouse=True)
def _nothing_learned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lifeline, "_LEARNED_ON_ASYNCIO", {})
    monkeypatch.setattr(_lifeline, "_LEARNED_ON_TRIO", {})


class Client:
    """A spec-2.4 ``receive`` that counts its calls; it leaves once ``leave`` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.leave = anyio.Event()

    async def __call__(self) -> Message:
        self.calls += 1
        await self.leave.wait()
        return {"type": "http.disconnect"}


def _response(resolver: Any, events: list[str] | None = None, **options: Any) -> Any:
    body = tracked(events if events is not None else [], b"a", b"b")
    return HeaderFirstStreamingResponse(
        body, headers={"x-own": "1"}, media_type="text/plain", header_resolver=resolver, **options
    )


async def _sent(resolver: Any, client: Client | None = None, **options: Any) -> Recorder:
    return await call(
        _response(resolver, **options), http_scope(spec_version="2.4"), client or Client()
    )


def _whole(headers: list[tuple[bytes, bytes]], status: int = 200) -> list[Message]:
    return [start(status, headers), chunk(b"a"), chunk(b"b"), END]


async def _left_while_resolving(
    resolver: Callable[[], Awaitable[Any]],
    waiting: anyio.Event,
    gate: anyio.Event | None = None,
) -> tuple[Recorder, list[str]]:
    """Call a response whose client leaves once the resolver set ``waiting``; ``gate``, what
    the resolver then waits for, if given, opens once the listener has seen it leave."""
    client, events = Client(), list[str]()

    async def leave_when_waiting() -> None:
        await waiting.wait()
        client.leave.set()
        if gate is not None:
            while client.calls == 0:  # noqa: ASYNC110 - the listener has run
                await anyio.sleep(0.001)
            await anyio.sleep(0.01)
            gate.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(leave_when_waiting)
            recorder = await call(
                _response(resolver, events), http_scope(spec_version="2.4"), client
            )
    return recorder, events


async def test_a_resolver_that_returns_at_once_never_listens_on_its_first_call_or_later() -> None:
    async def resolver() -> dict[str, str]:
        return {"x-quota": "41"}

    for _ in range(3):  # the first call runs in a scope; the later ones are stepped
        client = Client()
        recorder = await _sent(resolver, client)
        assert sent(recorder) == _whole([*OWN, (b"x-quota", b"41")])
        assert client.calls == 0  # no listener ever ran


@pytest.mark.parametrize("own_scope", [False, True], ids=["at its base", "own scope"])
async def test_a_waiting_resolver_is_cancelled_when_the_client_leaves_every_time(
    own_scope: bool,
) -> None:
    log: list[str] = []

    async def resolver() -> dict[str, str]:
        waiting.set()
        try:
            if own_scope:  # a scope of its own, open at its first wait
                with anyio.fail_after(5):
                    await anyio.Event().wait()
            else:
                await anyio.Event().wait()
        except anyio.get_cancelled_exc_class():
            log.append("resolver cancelled")
            raise
        raise AssertionError("unreachable")

    # The first call runs in a scope from its start; the later ones are stepped and scoped
    # at their wait, or, once seen opening a scope of their own, scoped from their start.
    for _ in range(3):
        waiting = anyio.Event()
        recorder, events = await _left_while_resolving(resolver, waiting)
        assert recorder.messages == []
        assert events == []  # the body was never entered (a generator not started)
    assert log == ["resolver cancelled"] * 3


async def test_a_resolver_that_waits_then_returns_sends_its_headers_every_time() -> None:
    async def resolver() -> dict[str, str]:
        await anyio.lowlevel.checkpoint()
        return {"x-quota": "40"}

    for _ in range(3):
        recorder = await _sent(resolver)
        assert sent(recorder) == _whole([*OWN, (b"x-quota", b"40")])


async def test_a_resolver_that_raises_at_once_gets_a_500_on_every_call(
    logs: pytest.LogCaptureFixture,
) -> None:
    async def resolver() -> dict[str, str]:
        raise LookupError("quota store down")

    for _ in range(2):
        recorder = await _sent(resolver)
        assert sent(recorder) == [
            start(
                500,
                [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")],
            ),
            chunk(b"Internal Server Error", more=False),
        ]
    errors = [r for r in logs.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["header resolver failed for /"] * 2
    assert all(r.exc_info and isinstance(r.exc_info[1], LookupError) for r in errors)


async def test_a_resolver_that_raises_at_once_with_degrade_streams_without_its_headers() -> None:
    async def resolver() -> dict[str, str]:
        raise LookupError("quota store down")

    for _ in range(2):
        recorder = await _sent(resolver, on_resolver_error="degrade")
        assert sent(recorder) == _whole(OWN)


async def test_a_stray_cancellation_raised_at_once_is_a_resolver_failure() -> None:
    stray = await stale_cancellation()

    async def resolver() -> dict[str, str]:
        raise stray

    for _ in range(2):  # in a scope, then stepped: raised by the step itself
        recorder = await _sent(resolver)
        assert recorder.status == 500
        assert recorder.body == b"Internal Server Error"


async def test_a_resolver_returning_an_awaitable_that_is_not_a_coroutine_is_stepped_too() -> None:
    class Pending:
        def __await__(self) -> Generator[Any, Any, dict[str, str]]:
            return self._value().__await__()

        async def _value(self) -> dict[str, str]:
            return {"x-quota": "37"}

    for _ in range(3):
        client = Client()
        recorder = await _sent(lambda: Pending(), client)  # a lambda: not checked for async
        assert sent(recorder) == _whole([*OWN, (b"x-quota", b"37")])
        assert client.calls == 0


async def test_a_resolver_with_a_timeout_runs_in_its_scope_from_its_start() -> None:
    async def resolver() -> dict[str, str]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    for _ in range(2):
        with anyio.fail_after(5):
            recorder = await _sent(resolver, resolver_timeout=0.01)
        assert sent(recorder) == [
            start(
                504,
                [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"15")],
            ),
            chunk(b"Gateway Timeout", more=False),
        ]


async def test_a_stepped_resolver_sees_late_headers_and_adds_its_own() -> None:
    async def app(scope: Any, receive: Receive, send: Any) -> None:
        async def resolver() -> dict[str, str]:
            late_headers(scope).add("x-late-from-resolver", "1")
            return {"x-quota": "36"}

        late_headers(scope).add("x-request", "r1")
        await _response(resolver)(scope, receive, send)

    for _ in range(2):
        recorder = await call(app, http_scope(spec_version="2.4"), Client())
        assert recorder.headers == [
            *OWN,
            (b"x-request", b"r1"),
            (b"x-late-from-resolver", b"1"),
            (b"x-quota", b"36"),
        ]


@pytest.mark.parametrize("own_scope", [True, False], ids=["own scope", "no scope"])
async def test_the_first_miss_of_a_resolver_that_returned_at_once_runs_to_its_end_once(
    own_scope: bool,
) -> None:
    log: list[str] = []
    cached: list[dict[str, str]] = [{"x-quota": "39"}]  # a cache hit, then misses

    async def resolver() -> dict[str, str]:
        if cached:
            return cached.pop()
        waiting.set()
        try:
            if own_scope:  # the miss: a read with a deadline, as a client's
                with anyio.fail_after(5):
                    await gate.wait()
            else:
                await gate.wait()
        except anyio.get_cancelled_exc_class():
            log.append("resolver cancelled")
            raise
        log.append("resolver ended")
        return {"x-quota": "38"}

    waiting, gate = anyio.Event(), anyio.Event()
    recorder = await _sent(resolver)  # the hit: its calls return at once
    assert sent(recorder) == _whole([*OWN, (b"x-quota", b"39")])

    # The first miss is stepped with nothing read: whether a scope of its own is open is
    # not known, so the client leaving does not cancel it. It runs to its end; nothing is
    # sent and the body is not entered.
    recorder, events = await _left_while_resolving(resolver, waiting, gate)
    assert recorder.messages == []
    assert events == []
    assert log == ["resolver ended"]

    # Its end told whether it had a scope of its own: its next miss runs inside the
    # response's scope, from its start or from its first wait, and is cancelled.
    waiting, gate = anyio.Event(), anyio.Event()
    recorder, _ = await _left_while_resolving(resolver, waiting)
    assert recorder.messages == []
    assert log == ["resolver ended", "resolver cancelled"]
