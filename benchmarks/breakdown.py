"""Where the time of one response goes at ASGI spec 2.4: its steps, timed one by one.

At spec 2.4 Starlette's `StreamingResponse` starts no task, so a whole response costs a
few microseconds and every step this package adds shows. Each step below is timed on its
own, in process, as the median of interleaved rounds, on each anyio backend; the whole
responses are the same apps as the in-process part's.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
from starlette.responses import StreamingResponse

from header_first_stream import HeaderFirstStreamingResponse
from header_first_stream._head import decide_head
from header_first_stream._lifeline import first_of

from ._apps import HEADERS, _ours_no_resolver, _starlette, chunks, http_scope, noop_resolver, ours
from .inprocess import _receive, _send, summary

__all__ = ["FULL", "QUICK", "STEPS", "Counts", "Results", "run"]


@dataclass(frozen=True)
class Counts:
    repeats: int  # timed calls per sample
    rounds: int  # samples per step


FULL = Counts(repeats=5_000, rounds=9)
QUICK = Counts(repeats=50, rounds=2)


@dataclass
class Results:
    """Nanoseconds per call: ns[backend, step][round]."""

    counts: Counts
    backends: list[str]
    ns: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def median(self, backend: str, step: str) -> float:
        return summary(self.ns.get((backend, step), []))[1]


async def _listen_forever() -> None:
    await anyio.sleep_forever()


def _steps() -> dict[str, Callable[[], Awaitable[object]]]:
    starlette, plain, resolved = _starlette(1, chunks), _ours_no_resolver(1, chunks), ours(1)
    head = StreamingResponse(iter(()), headers=HEADERS, media_type="text/plain").raw_headers
    limits = HeaderFirstStreamingResponse(iter(()))  # its class's size caps

    async def whole(app: Callable[..., Awaitable[None]]) -> None:
        await app(http_scope(spec_version="2.4", state={}), _receive, _send)

    async def head_rules() -> None:
        decide_head({}, 200, head, [], limits, owner="bench")

    async def scope() -> None:
        with anyio.CancelScope():  # noqa: ASYNC100 - entering and leaving is what is timed
            pass

    async def resolver_alone() -> None:
        await noop_resolver()

    code = noop_resolver.__code__  # learned after its first call: it steps safely

    async def resolver_stepped() -> None:
        await first_of(noop_resolver(), _listen_forever, code=code)

    async def resolver_scoped() -> None:
        await first_of(noop_resolver(), _listen_forever, code=code, eager=False)

    return {
        "Starlette `StreamingResponse`, whole response": lambda: whole(starlette),
        "ours without a resolver, whole response": lambda: whole(plain),
        "ours with a no-op resolver, whole response": lambda: whole(resolved),
        "the head decided (own headers checked, size, late-headers store)": head_rules,
        "a no-op resolver awaited alone": resolver_alone,
        "the same resolver stepped once, returning at once (`first_of`: no scope, no listener)": (
            resolver_stepped
        ),
        "the same resolver run inside a scope, the listener armed (`first_of(eager=False)`)": (
            resolver_scoped
        ),
        "an anyio cancel scope entered and left": scope,
    }


STEPS = list(_steps())
"""The steps, in report order."""


async def _time(step: Callable[[], Awaitable[object]], repeats: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(repeats):
        await step()
    elapsed = time.perf_counter_ns() - start
    await anyio.lowlevel.checkpoint()  # callbacks armed by the step run and end here
    return elapsed / repeats


async def _run_backend(backend: str, counts: Counts, results: Results) -> None:
    steps = _steps()
    for step in steps.values():  # warm-up
        await _time(step, counts.repeats)
    for _ in range(counts.rounds):
        for name, step in steps.items():
            results.ns.setdefault((backend, name), []).append(await _time(step, counts.repeats))


def run(counts: Counts, backends: Sequence[str]) -> Results:
    """Time every step on every backend."""
    results = Results(counts, list(backends))
    for backend in backends:
        anyio.run(_run_backend, backend, counts, results, backend=backend)
    return results
