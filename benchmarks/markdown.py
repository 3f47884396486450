"""The run as the markdown page docs/benchmarks.md: method, targets, one table per part."""

# The report is typeset: its multiplication signs and en dashes are meant.
# ruff: noqa: RUF001

from __future__ import annotations

import math
from collections.abc import Sequence

from . import _apps, breakdown, e2e, inprocess, memory
from ._apps import Variant
from .inprocess import PER_CHUNK, PER_RESPONSE, SPECS, summary
from .targets import Run, _median, checks

COMMAND = "scripts/bench"
QUICK_COMMAND = "scripts/bench --quick --out /tmp/bench"


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


def _per_spec_head(*columns: str) -> list[str]:
    """A table's head: the variant, then ``columns`` for each ASGI spec (the first one
    named with its spec)."""
    cells = " | ".join(" | ".join([f"spec {spec}: {columns[0]}", *columns[1:]]) for spec in SPECS)
    return [f"| variant | {cells} |", "|---|" + "---:|" * len(columns) * len(SPECS)]


def _inprocess_tables(samples: inprocess.Samples, variants: Sequence[Variant]) -> list[str]:
    lines: list[str] = []
    counts = samples.counts
    for backend in samples.backends:
        for measure, unit in ((PER_CHUNK, "chunk"), (PER_RESPONSE, "response")):
            lines += [f"### {backend}, per {unit}", ""]
            lines += _per_spec_head(f"per {unit}", "×raw ASGI", "×Starlette")
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
        *_per_spec_head("per stream", "×Starlette"),
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


def _breakdown_table(results: breakdown.Results) -> list[str]:
    backends = results.backends
    lines = [
        "Each step timed on its own, in process (`benchmarks/breakdown.py`, the `breakdown` "
        "part of the run): medians of interleaved rounds.",
        "",
        "| step | " + " | ".join(backends) + " |",
        "|---|" + "---|" * len(backends),
    ]
    for step in breakdown.STEPS:
        cells = [_time(results.median(backend, step)) for backend in backends]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Reading it: with a resolver the head waits, and a client that leaves meanwhile must "
        "cancel the resolver and get nothing; at spec 2.4 only a listener on `receive()` can "
        "notice that, and the resolver must run in an anyio cancel scope, so that the client "
        "leaving cancels it as anyio cancels: a shield in the resolver (a limiter write that "
        "must not be torn) holds. The scope and the listener together cost about as much as "
        "Starlette's whole response, so a resolver whose code is known to step safely is first "
        "stepped once with nothing set up: one that returns at once (this no-op, a cache hit) "
        "costs the step alone, and one that waits gets the scope and the listener at its first "
        "wait. The first call of each code runs in the scope from its start, to learn that "
        "(`docs/differences.md`). Cancelling the request's task natively instead "
        "(`Task.cancel`, as `asyncio.timeout` does) would need no scope, but it tears shielded "
        "work (pinned by "
        "`test_no_head_goes_out_when_the_client_left_during_a_shielded_resolver`), so it is "
        "not used. The head rules (every own header checked, the head's size, the "
        "late-headers store) are the rest; Starlette checks nothing.",
        "",
    ]
    return lines


def _time(ns: float) -> str:
    if math.isnan(ns):
        return "–"
    return f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns"


def markdown(run: Run, chart_name: str) -> str:
    mode = "quick (tiny counts: proves the harness, not the figures)" if run.quick else "full"
    lines = [
        "# Benchmarks",
        "",
        f"<!-- Written by `{COMMAND}`; edit benchmarks/markdown.py, not this file. -->",
        "",
        "What `header_first_stream` costs, against a raw ASGI app (the floor) and the classes "
        "it replaces, every figure next to the same measurement of Starlette taken in the same "
        "run. The machine may be shared with other jobs (its load average is given below), so "
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
            "Reading the per-response figures: on spec 2.3 Starlette runs every response in "
            "an anyio task group beside its disconnect listener, and on this machine such a "
            "group costs tens of microseconds, more than everything else a response does. "
            "This package runs the response in the request's own task with the listener "
            "beside it as a bare asyncio task or a trio system task, started only once the "
            "response waits (`header_first_stream/_lifeline.py`). On spec 2.4 Starlette starts "
            "no task at all, so every step this package adds shows there; the next section "
            "times them. An SSE response with pings (sse-starlette's default) listens to the "
            "end on every spec: its listener sends the pings.",
            "",
        ]
    if run.breakdown is not None:
        lines += ["## Where a response's time goes at spec 2.4", ""]
        lines += _breakdown_table(run.breakdown)
    if run.e2e is not None:
        lines += ["## End to end", ""]
        lines += _e2e_table(run.e2e)
    if run.memory is not None:
        lines += ["## Memory per open stream", ""]
        lines += _memory_table(run.memory, run.variants)
    return "\n".join(lines)
