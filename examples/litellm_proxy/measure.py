"""``python -m examples.litellm_proxy.measure``: what each fix covers, and what it costs.

From the repository root, in an environment with LiteLLM (as `demo`). Starts the mock
upstream and three LiteLLM proxies in front of it (`running`): LiteLLM alone, with
``response_headers_callback.py`` (LiteLLM's own response-headers hook) and with
``header_first_callback.py`` (this library), all three at once. Against each it sends
every response shape, ``/v1/chat/completions`` and ``/v1/messages``, streaming and not,
and the same to a model the upstream answers with ``429`` and its own rate-limit headers;
the timed requests go to each proxy in turn, so that the machine's load weighs on each
alike.

Prints two Markdown tables:

- coverage: per shape, the status and which headers reach the client: the limiter's four
  ``x-ratelimit-api_key-*`` headers and the upstream's ``retry-after`` and
  ``x-ratelimit-*-requests`` (under any name: LiteLLM prefixes some ``llm_provider-``);
- timing, over ``--requests`` requests per shape after ``--warmup``: the median and 90th
  percentile of the time to the response head, to the first body bytes, and the gap
  between the two (for a stream: what LiteLLM does between sending the head and the
  first chunk, the time `HeaderFirstMiddleware` holds the head).

The times are the client's, on 127.0.0.1, with an upstream that answers at once: they
are LiteLLM's own overhead, and they move with the machine's load.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

from .running import litellm_executable, litellm_proxy, mock_upstream

SETUPS: dict[str, tuple[str, ...]] = {
    "LiteLLM alone": (),
    "LiteLLM's hook": ("response_headers_callback.py",),
    "header-first-stream": ("header_first_callback.py",),
}
HELLO = [{"role": "user", "content": "hello"}]
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"model": "test-chat", "messages": HELLO}),
    "chat stream": ("/v1/chat/completions", {"model": "test-chat", "messages": HELLO}),
    "messages": (
        "/v1/messages",
        {"model": "test-anthropic", "max_tokens": 6, "messages": HELLO},
    ),
    "messages stream": (
        "/v1/messages",
        {"model": "test-anthropic", "max_tokens": 6, "messages": HELLO},
    ),
    "upstream 429": ("/v1/chat/completions", {"model": "test-overloaded", "messages": HELLO}),
    "upstream 429 stream": (
        "/v1/chat/completions",
        {"model": "test-overloaded", "messages": HELLO},
    ),
}
TIMED = ("chat", "chat stream", "messages", "messages stream")
UPSTREAM_HEADERS = ("retry-after", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests")


@dataclass(frozen=True)
class Sample:
    status: int
    headers: httpx.Headers
    head: float
    """Seconds from sending the request to its response head."""
    first_bytes: float
    """Seconds from sending the request to the first body bytes."""


def request(client: httpx.Client, shape: str) -> Sample:
    path, body = SHAPES[shape]
    started = time.perf_counter()
    with client.stream(
        "POST",
        path,
        json={**body, "stream": shape.endswith("stream")},
        headers={"authorization": f"Bearer sk-measure-{shape.replace(' ', '-')}"},
    ) as response:
        head = time.perf_counter() - started
        chunks = response.iter_raw()
        next(chunks, b"")
        first_bytes = time.perf_counter() - started
        for _ in chunks:
            pass
    return Sample(response.status_code, response.headers, head, first_bytes)


def coverage(sample: Sample) -> str:
    """The status, how many of the limiter's four headers and of the upstream's three
    came, and the gap between the head and the first body bytes."""
    limiter = sum(name.startswith("x-ratelimit-api_key-") for name in sample.headers)
    upstream = sum(
        any(name == wanted or name.endswith(f"-{wanted}") for name in sample.headers)
        for wanted in UPSTREAM_HEADERS
    )
    gap = (sample.first_bytes - sample.head) * 1000
    return f"{sample.status}; {limiter}/4; {upstream}/3; {gap:.1f} ms"


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered) * 1000:.1f} / {p90 * 1000:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.litellm_proxy.measure", description=__doc__
    )
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    litellm_executable()
    covered: dict[str, dict[str, str]]
    timed: dict[str, dict[str, list[Sample]]]
    with (
        mock_upstream() as upstream,
        tempfile.TemporaryDirectory() as temporary,
        contextlib.ExitStack() as stack,
    ):
        clients: dict[str, httpx.Client] = {}
        for number, (setup, callbacks) in enumerate(SETUPS.items()):
            directory = Path(temporary) / str(number)
            directory.mkdir()
            print(f"# starting a proxy: {setup} ...", flush=True)
            url = stack.enter_context(litellm_proxy(directory, upstream, callbacks))
            clients[setup] = stack.enter_context(httpx.Client(base_url=url, timeout=60.0))
        covered = {
            setup: {shape: coverage(request(client, shape)) for shape in SHAPES}
            for setup, client in clients.items()
        }
        # Round-robin over the proxies, so that the machine's load weighs on each alike.
        timed = {setup: {shape: [] for shape in TIMED} for setup in SETUPS}
        for shape in TIMED:
            for number in range(args.warmup + args.requests):
                for setup, client in clients.items():
                    sample = request(client, shape)
                    if number >= args.warmup:
                        timed[setup][shape].append(sample)
    print(
        f"\nLiteLLM {version('litellm')}. The first request of each shape on a fresh proxy: "
        "status; limiter's headers; upstream's headers; gap from head to first body bytes.\n"
    )
    print("| shape | " + " | ".join(SETUPS) + " |")
    print("| --- |" + " --- |" * len(SETUPS))
    for shape in SHAPES:
        print(f"| {shape} | " + " | ".join(covered[setup][shape] for setup in SETUPS) + " |")
    print(
        f"\nms, median / p90 of {args.requests} requests per shape: "
        "head = to the response head, first = to the first body bytes, gap = first - head.\n"
    )
    print("| shape | measure | " + " | ".join(SETUPS) + " |")
    print("| --- | --- |" + " --- |" * len(SETUPS))
    for shape in TIMED:
        for measure in ("head", "first", "gap"):
            cells = []
            for setup in SETUPS:
                samples = timed[setup][shape]
                values = {
                    "head": [s.head for s in samples],
                    "first": [s.first_bytes for s in samples],
                    "gap": [s.first_bytes - s.head for s in samples],
                }[measure]
                cells.append(_ms(values))
            print(f"| {shape} | {measure} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
