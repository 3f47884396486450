"""What the demo prints: a run's results as a table, two runs side by side, and the bug
report's curl commands for a running gateway."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence

from .app import MASTER_KEY
from .probes import HEADER_NAMES, PROBES, RPM_LIMIT, TPM_LIMIT, ProbeResult

_COLUMNS = ("remaining-requests", "limit-requests", "remaining-tokens", "limit-tokens")


def format_table(results: Sequence[ProbeResult]) -> str:
    """The results as a table: shape, status, body, and the four headers' values."""
    rows: list[tuple[str, ...]] = [("shape", "status", "body", *_COLUMNS)]
    for result in results:
        values = [result.ratelimit.get(name, "MISSING") for name in HEADER_NAMES]
        body = "complete" if result.complete else "INCOMPLETE"
        rows.append((result.shape, str(result.status), body, *values))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def format_side_by_side(without_fix: Sequence[ProbeResult], with_fix: Sequence[ProbeResult]) -> str:
    """One line per shape: what the client got without and with this library."""

    def cell(result: ProbeResult) -> str:
        return f"{result.status}, {len(result.ratelimit)} of 4 headers"

    rows = [("shape", "without the fix", "with header-first-stream")]
    rows += [
        (before.shape, cell(before), cell(after))
        for before, after in zip(without_fix, with_fix, strict=True)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = []
    for row in rows:
        lost = row[1].endswith(" 0 of 4 headers")
        marker = "  <- lost" if lost else ""
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + marker
        )
    return "\n".join(lines)


def curl_commands(gateway_url: str, key: str) -> str:
    """The bug report's curl commands, for this gateway and key."""
    auth = ["-H", "Authorization: Bearer $KEY", "-H", "Content-Type: application/json"]
    generate = [
        "curl", "-sS", "$PROXY/key/generate",
        "-H", f"Authorization: Bearer {MASTER_KEY}", "-H", "Content-Type: application/json",
        "-d", json.dumps({"models": ["test-embedding", "test-chat", "test-anthropic"],
                          "tpm_limit": TPM_LIMIT, "rpm_limit": RPM_LIMIT}),
    ]  # fmt: skip
    lines = [
        f"KEY={key}",
        f"PROXY={gateway_url}",
        "",
        "# another key:",
        _shell(generate),
    ]
    for probe in PROBES:
        stream = ["-N"] if probe.stream else []
        command = [
            "curl", "-sS", "-D", "-", "-o", "/dev/null", *stream, *auth,
            f"$PROXY{probe.path}", "-d", json.dumps(probe.body, separators=(",", ":")),
        ]  # fmt: skip
        lines += ["", f"# {probe.shape}", _shell(command) + " | grep -i ratelimit"]
    return "\n".join(lines)


def _shell(words: Sequence[str]) -> str:
    # Quote for the shell, but leave $KEY and $PROXY to be expanded.
    quoted = []
    for word in words:
        if "$" in word and "'" not in word:
            quoted.append(f'"{word}"')
        else:
            quoted.append(shlex.quote(word))
    return " ".join(quoted)
