"""In-process cost per chunk and per response, every variant called as an ASGI app.

``send`` is a no-op and ``receive`` blocks until cancelled (a client that stays), so what
is measured is the response classes' own work. Repetitions are interleaved: each round
runs every variant once, in an order rotated per round, and each ratio is taken between
samples of the same round, so that the load of a shared machine falls on all of them.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
from starlette.types import ASGIApp, Message, Scope

from ._apps import Variant, chunks, http_scope

SPECS = ("2.3", "2.4")
PER_CHUNK = "chunk"
PER_RESPONSE = "response"
MEASURES = (PER_CHUNK, PER_RESPONSE)
ROUND_TIMEOUT = 120.0


@dataclass(frozen=True)
class Counts:
    chunks: int  # chunks in the one response of a per-chunk sample
    responses: int  # one-chunk responses in a per-response sample
    rounds: int


FULL = Counts(chunks=10_000, responses=1_000, rounds=15)
QUICK = Counts(chunks=200, responses=20, rounds=2)


@dataclass
class Samples:
    """Nanoseconds per unit (chunk or response): samples[backend, measure, spec, key][round]."""

    counts: Counts
    backends: list[str]
    data: dict[tuple[str, str, str, str], list[float]] = field(default_factory=dict)

    def get(self, backend: str, measure: str, spec: str, key: str) -> list[float]:
        return self.data.get((backend, measure, spec, key), [])

    def ratios(self, backend: str, measure: str, spec: str, key: str, base: str) -> list[float]:
        """Per-round ratios of ``key`` to ``base``, both from the same round."""
        mine = self.get(backend, measure, spec, key)
        theirs = self.get(backend, measure, spec, base)
        return [a / b for a, b in zip(mine, theirs, strict=False) if b > 0]


async def _send(message: Message) -> None:
    pass


async def _receive() -> Message:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def _time(app: ASGIApp, scopes: Sequence[Scope]) -> float:
    """Nanoseconds to answer every scope in turn, garbage collected beforehand."""
    gc.collect()
    start = time.perf_counter_ns()
    for scope in scopes:
        await app(scope, _receive, _send)
    return time.perf_counter_ns() - start


async def _round(variant: Variant, spec: str, counts: Counts) -> tuple[float, float]:
    """(nanoseconds per response, marginal nanoseconds per chunk) for one variant.

    The cost per chunk is the marginal one, ``(T(one response of N chunks) - T(one
    response of one chunk)) / (N - 1)``, so that the cost of a response (its task groups,
    say) does not show up a second time, spread over the chunks.
    """
    assert variant.make is not None
    scopes = [http_scope(spec_version=spec, state={}) for _ in range(counts.responses)]
    per_response = await _time(variant.make(1, chunks), scopes) / counts.responses
    long = await _time(
        variant.make(counts.chunks, chunks), [http_scope(spec_version=spec, state={})]
    )
    return per_response, (long - per_response) / (counts.chunks - 1)


async def _run_backend(
    backend: str, variants: Sequence[Variant], counts: Counts, samples: Samples
) -> None:
    # One untimed round first: imports, caches and the allocator warm up for everyone.
    for variant in variants:
        for spec in SPECS:
            with anyio.fail_after(ROUND_TIMEOUT):
                await _round(variant, spec, counts)
    for round_ in range(counts.rounds):
        shift = round_ % len(variants)
        order = [*variants[shift:], *variants[:shift]]
        for spec in SPECS:
            for variant in order:
                with anyio.fail_after(ROUND_TIMEOUT):  # a hung variant fails the run
                    per_response, per_chunk = await _round(variant, spec, counts)
                data = samples.data
                data.setdefault((backend, PER_RESPONSE, spec, variant.key), []).append(per_response)
                data.setdefault((backend, PER_CHUNK, spec, variant.key), []).append(per_chunk)


def run(variants: Sequence[Variant], counts: Counts, backends: Sequence[str]) -> Samples:
    """Measure every available variant on every backend; see the module docstring."""
    usable = [v for v in variants if v.available]
    samples = Samples(counts, list(backends))
    for backend in backends:
        anyio.run(_run_backend, backend, usable, counts, samples, backend=backend)
    return samples


def summary(values: Sequence[float]) -> tuple[float, float, float]:
    """(min, median, max); NaNs for no values."""
    if not values:
        nan = float("nan")
        return nan, nan, nan
    return min(values), statistics.median(values), max(values)
