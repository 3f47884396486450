"""``python -m examples.litellm_proxy``, the README's one command, shows the bug and the fix.

Run as a reader runs it, from the repository root, in a subprocess; the test reads what it
prints: four ``curl -i`` outputs, non-streaming then streaming, without the fix, then with
``header_first_callback.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys

from ..running import EXAMPLE, STARTUP_TIMEOUT
from .test_litellm_proxy import expected_rate_limit_headers

ROOT = EXAMPLE.parent.parent


def _heads(output: str) -> list[list[str]]:
    """The header lines of each curl output, the status line first."""
    blocks = re.split(r"^\$ curl .*\n", output, flags=re.MULTILINE)[1:]
    return [block.partition("\n\n")[0].splitlines() for block in blocks]


def _rate_limit_headers(head: list[str]) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in head if line.lower().startswith("x-ratelimit-"))


def test_the_command_shows_the_headers_without_and_with_the_fix() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.litellm_proxy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=2 * STARTUP_TIMEOUT + 60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    heads = _heads(done.stdout)
    assert len(heads) == 4, done.stdout
    content_types = ["application/json", "text/event-stream"] * 2
    for head, content_type in zip(heads, content_types, strict=True):
        assert head[0] == "HTTP/1.1 200 OK", head
        assert any(line.startswith(f"content-type: {content_type}") for line in head), head
    without_plain, without_stream, fixed_plain, fixed_stream = map(_rate_limit_headers, heads)
    # A fresh proxy each: its first request, then its second, on the same key.
    assert without_plain == expected_rate_limit_headers(1)
    assert without_stream == {}  # the bug
    assert fixed_plain == expected_rate_limit_headers(1)
    assert fixed_stream == expected_rate_limit_headers(2)
    assert done.stdout.rstrip().endswith("The bug, and the fix: shown.")
