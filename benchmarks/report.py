"""The command line: run the benchmarks, write the markdown report and the PNG chart."""

# The report is typeset: its multiplication signs and en dashes are meant.
# ruff: noqa: RUF001, RUF002

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from . import _apps, e2e, inprocess, machine, memory
from ._apps import Variant
from .inprocess import PER_CHUNK, PER_RESPONSE, SPECS, summary

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("inprocess", "e2e", "memory")
COMMAND = "scripts/bench"
QUICK_COMMAND = "scripts/bench --quick --out /tmp/bench"
OURS_COLOR = "#4c72b0"
PEER_COLOR = "#999999"


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
    e2e: e2e.Results | None
    memory: memory.Results | None


# --- formatting ---------------------------------------------------------------------------


def _ratio(values: Sequence[float]) -> str:
    low, mid, high = summary(values)
    if math.isnan(mid):
        return "–"
    return f"{mid:.2f}× ({low:.2f}–{high:.2f})"


def _duration(nanoseconds: float) -> str:
    if math.isnan(nanoseconds):
        return "–"
    if nanoseconds >= 1000:
        return f"{nanoseconds / 1000:.1f} µs"
    return f"{nanoseconds:.0f} ns"


def _ms(seconds: float) -> str:
    return "–" if math.isnan(seconds) else f"{seconds * 1000:.2f} ms"


def _rate(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:,.0f}"


def _median(values: Sequence[float]) -> float:
    return summary(values)[1]


# --- targets ------------------------------------------------------------------------------


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

    def check(what: str, target: str, key: str, base: str, measure: str, bound: float) -> None:
        if key not in available:
            checks.append(Check(what, target, "not available", None))
            return
        cells: list[str] = []
        ratios: list[float] = []
        for spec in SPECS:
            for backend in samples.backends:
                ratio = _median(samples.ratios(backend, measure, spec, key, base))
                ratios.append(ratio)
                cells.append(f"{spec} {backend}: {ratio:.2f}×")
        checks.append(Check(what, target, ", ".join(cells), _within(ratios, high=bound)))

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
        "≤ 1.10× Starlette, each ASGI path",
        _apps.OURS,
        _apps.STARLETTE,
        PER_RESPONSE,
        1.10,
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
            "≤ 1.10× Starlette",
            ", ".join(cells),
            _within(ratios, high=1.10),
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


# --- markdown -----------------------------------------------------------------------------


def _inprocess_tables(samples: inprocess.Samples, variants: Sequence[Variant]) -> list[str]:
    lines: list[str] = []
    counts = samples.counts
    for backend in samples.backends:
        for measure, unit in ((PER_CHUNK, "chunk"), (PER_RESPONSE, "response")):
            lines += [
                f"### {backend}, per {unit}",
                "",
                "| variant | "
                + " | ".join(f"spec {spec}: per {unit} | ×raw ASGI | ×Starlette" for spec in SPECS)
                + " |",
                "|---|" + "---:|---:|---:|" * len(SPECS),
            ]
            for variant in variants:
                if not variant.available:
                    cells = [f"not available: {variant.missing}", "", ""] * len(SPECS)
                else:
                    cells = []
                    for spec in SPECS:
                        key = variant.key
                        values = samples.get(backend, measure, spec, key)
                        cells += [
                            _duration(_median(values)),
                            _ratio(samples.ratios(backend, measure, spec, key, _apps.RAW)),
                            _ratio(samples.ratios(backend, measure, spec, key, _apps.STARLETTE)),
                        ]
                lines.append(f"| {variant.label} | " + " | ".join(cells) + " |")
            lines.append("")
    lines.insert(
        0,
        f"{counts.rounds} interleaved rounds. Per response: the mean of {counts.responses:,} "
        "one-chunk responses. Per chunk: the marginal cost, (time of one response of "
        f"{counts.chunks:,} chunks − time of a one-chunk response) / {counts.chunks - 1:,}, so "
        "that the cost of a response is not counted again spread over its chunks. Absolute "
        "figures are medians; ratios are median (min–max) of the per-round ratios, each "
        "taken between samples of the same round.\n",
    )
    return lines


def _e2e_table(results: e2e.Results) -> list[str]:
    counts = results.counts
    lines = [
        f"uvicorn (httptools, asyncio loop, ASGI spec 2.3) in a subprocess on 127.0.0.1; "
        f"{counts.streams} concurrent streams × {counts.chunks:,} chunks, all requests sent "
        f"at once, {counts.rounds} interleaved rounds (ratios are per round); each chunk is "
        f"{len(_apps.CHUNK)} bytes "
        "and the body generator passes through the event loop before each one, as a real "
        "upstream does. Throughput is given by the wall clock and per second of the server "
        "process's CPU time; the second is what the targets use, as other processes on a "
        "shared machine take the CPU from the server and disturb the first. Idle time to "
        "first byte: "
        f"{counts.idle_requests} requests per variant, one at a time, in turn.",
        "",
        "| variant | throughput (chunks/s) | ×its Starlette baseline | chunks per server CPU "
        "second | ×its Starlette baseline | TTFB under load p50 / p99 | idle TTFB p50 / p99 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in e2e.VARIANTS:
        if variant.key in results.missing:
            lines.append(
                f"| {variant.label} | not available: {results.missing[variant.key]} | | | | | |"
            )
            continue
        load = results.load_ttfb.get(variant.key, [])
        idle = results.idle_ttfb.get(variant.key, [])
        lines.append(
            f"| {variant.label} | {_rate(_median(results.throughput.get(variant.key, [])))} "
            f"| {_ratio(results.throughput_ratios(variant.key, variant.base))} "
            f"| {_rate(_median(results.capacity.get(variant.key, [])))} "
            f"| {_ratio(results.capacity_ratios(variant.key, variant.base))} "
            f"| {_ms(e2e.percentile(load, 0.5))} / {_ms(e2e.percentile(load, 0.99))} "
            f"| {_ms(e2e.percentile(idle, 0.5))} / {_ms(e2e.percentile(idle, 0.99))} |"
        )
    lines.append("")
    return lines


def _memory_table(results: memory.Results, variants: Sequence[Variant]) -> list[str]:
    counts = results.counts
    lines = [
        f"{counts.streams:,} concurrent streams held open after their head and first chunk, "
        "one fresh subprocess per variant and ASGI path (asyncio), RSS difference per "
        f"stream; median of {counts.rounds} run(s).",
        "",
        "| variant | "
        + " | ".join(f"spec {spec}: per stream | ×Starlette" for spec in SPECS)
        + " |",
        "|---|" + "---:|---:|" * len(SPECS),
    ]
    for variant in variants:
        if not variant.available:
            cells = [f"not available: {variant.missing}", ""] * len(SPECS)
        else:
            cells = []
            for spec in SPECS:
                mine = _median(results.per_stream.get((spec, variant.key), []))
                base = _median(results.per_stream.get((spec, _apps.STARLETTE), []))
                cells += [f"{mine / 1024:.1f} KiB", f"{mine / base:.2f}×"]
        lines.append(f"| {variant.label} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def markdown(run: Run, chart_name: str) -> str:
    mode = "quick (tiny counts: proves the harness, not the figures)" if run.quick else "full"
    lines = [
        "# Benchmarks",
        "",
        f"<!-- Written by `{COMMAND}`; edit benchmarks/report.py, not this file. -->",
        "",
        "What `header_first_stream` costs, against a raw ASGI app (the floor) and the classes "
        "it replaces, every figure next to the same measurement of Starlette taken in the same "
        "run. The machine is shared and noisy (other people's test runs were going on), so "
        "read the ratios, taken between samples of the same interleaved round, rather than "
        "the absolute figures.",
        "",
        f"Reproduce: `{COMMAND}` (full run, a few minutes on 2 cores; writes this file and "
        f"`{chart_name}`). `{QUICK_COMMAND}` runs tiny counts in seconds (the test suite "
        "runs it). `scripts/bench --help` lists the options.",
        "",
        f"![ratios to Starlette]({chart_name})",
        "",
        "## Run",
        "",
        f"- {run.started:%Y-%m-%d %H:%M} UTC, {mode}, {run.seconds:.0f} s",
    ]
    lines += [f"- {name}: {value}" for name, value in run.machine.items()]
    lines += [
        f"- load average (1 / 5 / 15 min): {run.load_before} at the start, "
        f"{run.load_after} at the end",
        "",
        "## Targets",
        "",
        "Medians over the repetitions, every ASGI path and backend measured. Time to first "
        "byte: the median of ours minus the median of Starlette's endpoint that spends the "
        "same time before it returns its response.",
        "",
        "| what | target | measured | |",
        "|---|---|---|---|",
    ]
    for check in checks(run):
        status = {True: "met", False: "**missed**", None: "–"}[check.met]
        lines.append(f"| {check.what} | {check.target} | {check.measured} | {status} |")
    lines.append("")
    if run.inprocess is not None:
        lines += [
            "## In process: cost per chunk and per response",
            "",
            "Each app called directly, as a server would, with a `send` that does nothing and "
            "a `receive` that waits until cancelled (a client that stays). Spec 2.3 runs with "
            "a disconnect listener (Starlette's `StreamingResponse` starts one for the whole "
            "response); on spec 2.4 a disconnect shows as an `OSError` from `send`. The body "
            "generator yields without awaiting; the SSE variants stream text that they encode "
            "as events themselves, the others bytes. `HeaderFirstMiddleware` wraps the very "
            "app of the Starlette row, so its ×Starlette is its ratio to the same app without "
            "it.",
            "",
        ]
        lines += _inprocess_tables(run.inprocess, run.variants)
        lines += [
            "Reading the per-response figures: on spec 2.3 every response pays for a task "
            "group that runs the disconnect listener (Starlette's too), and on this machine "
            "an anyio task group with one task costs tens of microseconds, far more than "
            "everything else a response does. On spec 2.4 Starlette starts no task at all, so "
            "any task group per response (a listener while the head is held back, an SSE "
            "ping task) shows there as a ratio above 10×. The rows without a resolver and "
            "without pings are there to tell those costs apart.",
            "",
        ]
    if run.e2e is not None:
        lines += ["## End to end", ""]
        lines += _e2e_table(run.e2e)
    if run.memory is not None:
        lines += ["## Memory per open stream", ""]
        lines += _memory_table(run.memory, run.variants)
    return "\n".join(lines)


# --- chart --------------------------------------------------------------------------------


def chart(run: Run, path: Path) -> None:
    """Ratios to Starlette, median with min–max whiskers, one panel per measurement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, list[str], list[tuple[float, float, float]]]] = []
    ours = [v for v in run.variants if v.available and v.key not in (_apps.RAW, _apps.STARLETTE)]
    if run.inprocess is not None:
        samples = run.inprocess
        for measure, title in ((PER_CHUNK, "per chunk"), (PER_RESPONSE, "per response")):
            labels: list[str] = []
            values: list[tuple[float, float, float]] = []
            for variant in ours:
                for backend in samples.backends:
                    for spec in SPECS:
                        labels.append(f"{variant.key} {backend} {spec}")
                        values.append(
                            summary(
                                samples.ratios(backend, measure, spec, variant.key, _apps.STARLETTE)
                            )
                        )
            panels.append((f"in process, {title} (× Starlette)", labels, values))
    if run.e2e is not None:
        results = run.e2e
        labels = []
        values = []
        for e2e_variant in e2e.VARIANTS:
            if e2e_variant.key in results.available and e2e_variant.key != e2e_variant.base:
                labels.append(e2e_variant.key)
                values.append(summary(results.capacity_ratios(e2e_variant.key, e2e_variant.base)))
        panels.append(("end to end, chunks per server CPU second (× Starlette)", labels, values))
    if run.memory is not None:
        labels = []
        values = []
        for variant in ours:
            for spec in SPECS:
                mine = run.memory.per_stream.get((spec, variant.key), [])
                base = _median(run.memory.per_stream.get((spec, _apps.STARLETTE), []))
                labels.append(f"{variant.key} {spec}")
                values.append(summary([value / base for value in mine]))
        panels.append(("memory per open stream (× Starlette)", labels, values))

    heights = [max(len(labels), 3) for _, labels, _ in panels]
    figure, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, 1.5 + 0.22 * sum(heights) + 0.5 * len(panels)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for axis, (title, labels, values) in zip(axes[:, 0], panels, strict=True):
        mids = [mid for _, mid, _ in values]
        lows = [mid - low for low, mid, _ in values]
        highs = [high - mid for _, mid, high in values]
        positions = list(range(len(labels)))
        colors = [
            PEER_COLOR if label.startswith("sse-starlette") else OURS_COLOR for label in labels
        ]
        axis.barh(positions, mids, xerr=[lows, highs], color=colors, capsize=2)
        axis.axvline(1.0, color="black", linewidth=0.8)
        axis.set_yticks(positions, labels, fontsize=7)
        axis.invert_yaxis()
        axis.set_title(title, fontsize=9)
        if any(high > 8 for _, _, high in values if not math.isnan(high)):
            axis.set_xscale("log")
        axis.tick_params(axis="x", labelsize=7)
    figure.suptitle(
        f"header_first_stream (blue) and sse-starlette (grey) vs Starlette "
        f"({run.started:%Y-%m-%d}"
        f"{', quick mode' if run.quick else ''})",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.98))
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- command line -------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None, progress: Callable[[str], None] = _progress) -> int:
    """Run the benchmarks and write ``benchmarks.md`` and ``benchmarks.png``."""
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Measure header_first_stream against raw ASGI, Starlette and sse-starlette.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny counts: proves the harness in seconds"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs",
        help="directory for benchmarks.md and benchmarks.png (default: docs/)",
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated parts to run, of {', '.join(PARTS)} (default: all)",
    )
    parser.add_argument(
        "--backends",
        default="asyncio,trio",
        help="comma-separated anyio backends for the in-process part (default: asyncio,trio)",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="override the in-process round count"
    )
    args = parser.parse_args(argv)
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)}")
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]

    started = datetime.now(UTC)
    clock = time.perf_counter()
    load_before = machine.load_average()
    variants = _apps.variants()
    for variant in variants:
        if not variant.available:
            progress(f"{variant.key}: not available ({variant.missing})")

    samples = None
    if "inprocess" in parts:
        counts = inprocess.QUICK if args.quick else inprocess.FULL
        if args.rounds is not None:
            counts = inprocess.Counts(counts.chunks, counts.responses, args.rounds)
        progress(f"in process: {counts.rounds} rounds on {', '.join(backends)}")
        samples = inprocess.run(variants, counts, backends)
    e2e_results = None
    if "e2e" in parts:
        e2e_counts = e2e.QUICK if args.quick else e2e.FULL
        progress(f"end to end: {e2e_counts.streams} streams × {e2e_counts.chunks} chunks")
        e2e_results = e2e.run(e2e_counts)
    memory_results = None
    if "memory" in parts:
        memory_counts = memory.QUICK if args.quick else memory.FULL
        progress(f"memory: {memory_counts.streams} open streams per subprocess")
        memory_results = memory.run(variants, memory_counts)

    run = Run(
        quick=args.quick,
        started=started,
        seconds=time.perf_counter() - clock,
        machine=machine.describe(),
        load_before=load_before,
        load_after=machine.load_average(),
        variants=variants,
        inprocess=samples,
        e2e=e2e_results,
        memory=memory_results,
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    chart(run, out / "benchmarks.png")
    (out / "benchmarks.md").write_text(markdown(run, "benchmarks.png") + "\n")
    progress(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks.png'}")
    for check in checks(run):
        status = {True: "met", False: "MISSED", None: "-"}[check.met]
        progress(f"{status:6} {check.what}: {check.measured} (target {check.target})")
    return 0
