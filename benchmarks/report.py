"""The command line: run the benchmarks, write the markdown report (`markdown`) and the
PNG chart (`chart`), and print the figures against their targets (`targets`)."""

# The report is typeset: its multiplication signs and en dashes are meant.
# ruff: noqa: RUF001

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from . import _apps, breakdown, e2e, inprocess, machine, memory
from .chart import chart
from .markdown import markdown
from .targets import Run, checks

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("inprocess", "breakdown", "e2e", "memory")


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
    breakdown_results = None
    if "breakdown" in parts:
        breakdown_counts = breakdown.QUICK if args.quick else breakdown.FULL
        progress(f"breakdown: {breakdown_counts.rounds} rounds on {', '.join(backends)}")
        breakdown_results = breakdown.run(breakdown_counts, backends)
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
        breakdown=breakdown_results,
        e2e=e2e_results,
        memory=memory_results,
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    chart(run, out / "benchmarks.png")  # nothing to draw if only the breakdown ran
    (out / "benchmarks.md").write_text(markdown(run, "benchmarks.png") + "\n")
    progress(f"wrote {out / 'benchmarks.md'} and {out / 'benchmarks.png'}")
    for check in checks(run):
        status = {True: "met", False: "MISSED", None: "-"}[check.met]
        progress(f"{status:6} {check.what}: {check.measured} (target {check.target})")
    return 0
