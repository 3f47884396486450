"""``python -m examples.litellm_proxy``: the bug and its fix, shown with ``curl -i``.

From the repository root, in an environment with LiteLLM (``scripts/litellm-example``
makes one and runs this). Starts the mock upstream and a real LiteLLM proxy in front of
it (`running`: offline, DB-free keys with rpm/tpm limits, all on 127.0.0.1, ephemeral
ports), first without a callback, then with the fix, and runs ``curl -i`` for one
non-streaming and one streaming ``/v1/chat/completions`` request against each, printing
what curl prints.

Exit status 0 when the output shows the bug and the fix: without the fix, the
non-streaming answer carries the four ``x-ratelimit-api_key-*`` headers and the stream
none; with it, both carry all four. 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

from .custom_auth import RPM_LIMIT, TPM_LIMIT
from .running import litellm_executable, litellm_proxy, mock_upstream

FIXES = {
    "header-first": "header_first_callback.py",
    "litellm-hook": "response_headers_callback.py",
}
"""The ``--fix`` choices: this library's callback, or LiteLLM's own response-headers hook."""

KEY = "sk-example"
CURL_TIMEOUT = 30
RATE_LIMIT_HEADERS = 4


def curl_command(url: str, stream: bool) -> list[str]:
    """The ``curl -i`` of one chat request with `KEY`."""
    body = {"model": "test-chat", "messages": [{"role": "user", "content": "hello"}]}
    return [
        *("curl", "-sS", "-i", "-N", "--max-time", str(CURL_TIMEOUT)),
        f"{url}/v1/chat/completions",
        *("-H", f"authorization: Bearer {KEY}", "-H", "content-type: application/json"),
        *("-d", json.dumps({**body, "stream": stream})),
    ]


def rate_limit_header_count(output: str) -> int:
    """How many ``x-ratelimit-*`` headers the head of curl's output has."""
    head = output.replace("\r\n", "\n").partition("\n\n")[0]
    return sum(line.lower().startswith("x-ratelimit-") for line in head.splitlines())


def _probe(url: str, stream: bool) -> int:
    command = curl_command(url, stream)
    print(f"$ {shlex.join(command)}", flush=True)
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=CURL_TIMEOUT + 5
    ).stdout
    print(output.replace("\r\n", "\n").rstrip("\n"))
    count = rate_limit_header_count(output)
    print(f"# {'stream' if stream else 'non-stream'}: {count} x-ratelimit-* headers\n", flush=True)
    return count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.litellm_proxy", description=__doc__)
    parser.add_argument(
        "--fix",
        choices=FIXES,
        default="header-first",
        help="header-first: header_first_callback.py (this library, the default); "
        "litellm-hook: response_headers_callback.py (LiteLLM's own hook)",
    )
    args = parser.parse_args(argv)
    try:
        litellm_executable()
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    fix = FIXES[args.fix]
    setups = [("without the fix (LiteLLM alone)", ()), (f"with {fix}", (fix,))]
    counts: dict[str, tuple[int, int]] = {}
    with mock_upstream() as upstream, tempfile.TemporaryDirectory() as temporary:
        print(
            f"LiteLLM {version('litellm')}, mock upstream on {upstream}; every bearer token "
            f"is a key with rpm_limit={RPM_LIMIT}, tpm_limit={TPM_LIMIT} (custom_auth.py).\n"
        )
        for number, (title, callbacks) in enumerate(setups):
            directory = Path(temporary) / str(number)
            directory.mkdir()
            print(f"=== {title} ===", flush=True)
            with litellm_proxy(directory, upstream, callbacks) as url:
                print(f"# proxy on {url}, its directory {directory}\n", flush=True)
                counts[title] = (_probe(url, stream=False), _probe(url, stream=True))
    print("x-ratelimit-* headers   non-stream  stream")
    for title, (plain, stream) in counts.items():
        print(f"{title:<40}{plain:>3}{stream:>8}")
    (without, fixed) = counts.values()
    shown = without == (RATE_LIMIT_HEADERS, 0) and fixed == (RATE_LIMIT_HEADERS,) * 2
    print("The bug, and the fix: shown." if shown else "NOT as expected: see above.")
    return 0 if shown else 1
