"""One benchmark run (`Run`) and its figures against the targets the docs promise (`checks`)."""

# The report is typeset: its multiplication signs and en dashes are meant.
# ruff: noqa: RUF001

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from . import _apps, breakdown, e2e, inprocess, memory
from ._apps import Variant
from .inprocess import PER_CHUNK, PER_RESPONSE, SPECS, summary


@dataclass
class Run:
    quick: bool
    started: datetime
    seconds: float
    machine: dict[str, str]
    load_before: str
    load_after: str
    variants: list[Variant]
    inprocess: inprocess.Samples | None
    breakdown: breakdown.Results | None
    e2e: e2e.Results | None
    memory: memory.Results | None


def _median(values: Sequence[float]) -> float:
    return summary(values)[1]


@dataclass(frozen=True)
class Check:
    what: str
    target: str
    measured: str
    met: bool | None  # None: not measured in this run


def _within(values: Sequence[float], low: float = -math.inf, high: float = math.inf) -> bool | None:
    """Whether every value is within bounds; ``None`` if one was not measured (NaN)."""
    if not values or any(math.isnan(value) for value in values):
        return None
    return all(low <= value <= high for value in values)


def _inprocess_checks(samples: inprocess.Samples, available: set[str]) -> list[Check]:
    checks: list[Check] = []

    def check(
        what: str, target: str, key: str, base: str, measure: str, bound: float | dict[str, float]
    ) -> None:
        """``bound``: one for every ASGI path, or one per spec version."""
        if key not in available:
            checks.append(Check(what, target, "not available", None))
            return
        cells: list[str] = []
        met: list[bool | None] = []
        for spec in SPECS:
            high = bound[spec] if isinstance(bound, dict) else bound
            for backend in samples.backends:
                ratio = _median(samples.ratios(backend, measure, spec, key, base))
                met.append(_within([ratio], high=high))
                cells.append(f"{spec} {backend}: {ratio:.2f}×")
        verdict = None if None in met else all(met)
        checks.append(Check(what, target, ", ".join(cells), verdict))

    check(
        "`HeaderFirstStreamingResponse`, per chunk",
        "≤ 1.05× Starlette",
        _apps.OURS,
        _apps.STARLETTE,
        PER_CHUNK,
        1.05,
    )
    check(
        "`HeaderFirstStreamingResponse`, per response (no-op resolver)",
        "≤ 0.8× Starlette at spec 2.3, ≤ 2× at spec 2.4",
        _apps.OURS,
        _apps.STARLETTE,
        PER_RESPONSE,
        {"2.3": 0.8, "2.4": 2.0},
    )
    check(
        "SSE variant with pings, per chunk",
        "≤ 2× raw ASGI",
        _apps.OURS_SSE,
        _apps.RAW,
        PER_CHUNK,
        2.0,
    )
    check(
        "SSE variant, per response",
        "≤ 1.5× Starlette",
        _apps.OURS_SSE,
        _apps.STARLETTE,
        PER_RESPONSE,
        1.5,
    )
    check(
        "middleware, per chunk",
        "≤ 1.10× the same app without it",
        _apps.MIDDLEWARE,
        _apps.STARLETTE,
        PER_CHUNK,
        1.10,
    )
    return checks


def _e2e_checks(results: e2e.Results) -> list[Check]:
    checks: list[Check] = []
    cells = []
    capacities = []
    for key, base in (("ours-0ms", "starlette"), ("ours-5ms", "starlette-5ms")):
        wall = _median(results.throughput_ratios(key, base))
        capacity = _median(results.capacity_ratios(key, base))
        capacities.append(capacity)
        cells.append(f"{key}: {capacity:.2f}× per server CPU second ({wall:.2f}× wall clock)")
    checks.append(
        Check(
            "end to end, throughput",
            "≥ 0.95× Starlette",
            ", ".join(cells),
            _within(capacities, low=0.95),
        )
    )
    cells = []
    extras = []
    for key, base in (("ours-0ms", "starlette"), ("ours-5ms", "starlette-5ms")):
        extra = e2e.percentile(results.idle_ttfb.get(key, []), 0.5) - e2e.percentile(
            results.idle_ttfb.get(base, []), 0.5
        )
        extras.append(extra)
        cells.append(f"{key}: {extra * 1000:+.2f} ms")
    met = _within(extras, high=0.0002)
    checks.append(
        Check(
            "end to end, time to first byte (p50, one request at a time)",
            "resolver time + ≤ 0.2 ms",
            ", ".join(cells),
            met,
        )
    )
    return checks


def _memory_checks(results: memory.Results, available: set[str]) -> list[Check]:
    cells = []
    ratios = []
    for spec in SPECS:
        ours = _median(results.per_stream.get((spec, _apps.OURS), []))
        theirs = _median(results.per_stream.get((spec, _apps.STARLETTE), []))
        ratios.append(ours / theirs)
        cells.append(f"{spec}: {ratios[-1]:.2f}×")
    return [
        Check(
            "memory per open stream",
            "≤ 1.0× Starlette",
            ", ".join(cells),
            _within(ratios, high=1.0),
        )
    ]


def checks(run: Run) -> list[Check]:
    available = {v.key for v in run.variants if v.available}
    found: list[Check] = []
    if run.inprocess is not None:
        found += _inprocess_checks(run.inprocess, available)
    if run.e2e is not None:
        found += _e2e_checks(run.e2e)
    if run.memory is not None:
        found += _memory_checks(run.memory, available)
    return found
