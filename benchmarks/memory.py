"""Memory per open stream: many concurrent streams held open after their head.

Each variant runs in a fresh subprocess (``python -m benchmarks.memory VARIANT SPEC N``):
it opens a few streams to warm up, reads its RSS, opens ``N`` more (in batches, each
batch parked before the next opens), each having sent its head and first chunk and
parked waiting for its upstream (an event that is never set), collects garbage and
reads its RSS again. The difference over ``N``
is the memory of one open stream: the response object, its generator, its tasks and
cancel scopes, the scope dict, the server-side closures. The child prints JSON and exits
without tearing down its streams.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from starlette.types import Message

from . import _apps
from ._apps import Variant, http_scope

SPECS = ("2.3", "2.4")
WARMUP = 200
BATCH = 100
TIMEOUT = 300.0


@dataclass(frozen=True)
class Counts:
    streams: int
    rounds: int


FULL = Counts(streams=10_000, rounds=1)
QUICK = Counts(streams=200, rounds=1)


@dataclass
class Results:
    counts: Counts
    # bytes per open stream, one value per round: per_stream[spec, key]
    per_stream: dict[tuple[str, str], list[float]] = field(default_factory=dict)


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(key: str, spec: str, streams: int) -> dict[str, Any]:
    variant = next(v for v in _apps.variants() if v.key == key)
    assert variant.make is not None, variant.missing
    make = variant.make
    parked = 0
    target = 0
    reached = anyio.Event()
    upstream = anyio.Event()  # never set: every stream waits for its next chunk

    async def parking(count: int, item: Any) -> AsyncIterator[Any]:
        nonlocal parked
        yield item
        parked += 1
        if parked == target:
            reached.set()
        await upstream.wait()

    async def send(message: Message) -> None:
        pass

    async def receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    app = make(1, parking)  # one app, as a server has: what is measured is the streams

    async def stream() -> None:
        await app(http_scope(spec_version=spec, state={}), receive, send)

    async def open_streams(group: anyio.abc.TaskGroup, count: int) -> None:
        # In batches, each parked before the next opens: what is measured is what an
        # open stream keeps, not the transient peak of thousands of heads at once.
        nonlocal target, reached
        with anyio.fail_after(TIMEOUT):
            for batch in range(0, count, BATCH):
                target = parked + min(BATCH, count - batch)
                reached = anyio.Event()
                for _ in range(target - parked):
                    group.start_soon(stream)
                await reached.wait()

    result: dict[str, Any] = {}

    async def main() -> None:
        async with anyio.create_task_group() as group:
            await open_streams(group, WARMUP)
            gc.collect()
            before = _rss()
            await open_streams(group, streams)
            gc.collect()
            after = _rss()
            result.update(before=before, after=after, per_stream=(after - before) / streams)
            group.cancel_scope.cancel()
            # Skip tearing down thousands of streams: the process exits right after.
            print(json.dumps(result), flush=True)
            os._exit(0)

    anyio.run(main)
    return result


def _measure(key: str, spec: str, streams: int) -> float:
    root = Path(__file__).resolve().parent.parent
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", key, spec, str(streams)],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"memory benchmark of {key} (spec {spec}) failed:\n{exc.stderr[-2000:]}"
        ) from None
    return float(json.loads(completed.stdout.strip().splitlines()[-1])["per_stream"])


def run(variants: Sequence[Variant], counts: Counts) -> Results:
    """Measure every available variant on both ASGI paths, two subprocesses at a time."""
    results = Results(counts)
    jobs = [
        (spec, variant.key)
        for _ in range(counts.rounds)
        for spec in SPECS
        for variant in variants
        if variant.available
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        values = pool.map(lambda job: _measure(job[1], job[0], counts.streams), jobs)
        for job, value in zip(jobs, values, strict=True):
            results.per_stream.setdefault(job, []).append(value)
    return results


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
