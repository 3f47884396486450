"""The benchmark harness runs and reports every variant (``--quick``; no timing asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import _apps, breakdown, e2e, report


def _quiet(message: str) -> None:
    pass


def test_quick_run_writes_a_report_with_every_variant_row(tmp_path: Path) -> None:
    assert report.main(["--quick", "--out", str(tmp_path)], progress=_quiet) == 0

    text = (tmp_path / "benchmarks.md").read_text()
    assert (tmp_path / "benchmarks.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    sections = {part.partition("\n")[0]: part for part in text.split("\n## ")[1:]}
    assert list(sections) == [
        "Run",
        "Targets",
        "In process: cost per chunk and per response",
        "Where a response's time goes at spec 2.4",
        "End to end",
        "Memory per open stream",
    ]

    def rows(section: str, label: str) -> int:
        lines = sections[section].splitlines()
        return sum(line.startswith(f"| {label} | ") for line in lines)

    for variant in _apps.variants():
        assert variant.available, variant.missing
        # Two backends, each with a per-chunk and a per-response table.
        assert rows("In process: cost per chunk and per response", variant.label) == 4
        assert rows("Memory per open stream", variant.label) == 1
    for e2e_variant in e2e.VARIANTS:
        assert rows("End to end", e2e_variant.label) == 1
    for step in breakdown.STEPS:  # one row per step, a figure per backend
        assert rows("Where a response's time goes at spec 2.4", step) == 1, step
    for what in (
        "`HeaderFirstStreamingResponse`, per chunk",
        "`HeaderFirstStreamingResponse`, per response (no-op resolver)",
        "SSE variant with pings, per chunk",
        "SSE variant, per response",
        "middleware, per chunk",
        "end to end, throughput",
        "end to end, time to first byte (p50, one request at a time)",
        "memory per open stream",
    ):
        assert rows("Targets", what) == 1, what
    assert "quick (tiny counts" in text
    assert "scripts/bench" in text


def test_a_variant_that_cannot_be_imported_is_reported_not_available(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_apps, "find_public", lambda name, module: None)
    args = ["--quick", "--out", str(tmp_path), "--parts", "inprocess", "--backends", "asyncio"]
    assert report.main(args, progress=_quiet) == 0

    rows = (tmp_path / "benchmarks.md").read_text().splitlines()
    sse = next(v for v in _apps.variants() if v.key == _apps.OURS_SSE)
    middleware = next(v for v in _apps.variants() if v.key == _apps.MIDDLEWARE)
    assert (
        f"| {sse.label} | not available: HeaderFirstEventSourceResponse is not importable |"
        in "\n".join(rows)
    )
    assert (
        f"| {middleware.label} | not available: HeaderFirstMiddleware is not importable |"
        in "\n".join(rows)
    )
    target = "| SSE variant with pings, per chunk | ≤ 2\u00d7 raw ASGI | not available | \u2013 |"
    assert target in rows


def test_unknown_part_is_refused_with_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--quick", "--parts", "inprocess,disk"], progress=_quiet)

    assert exit_info.value.code == 2
    assert (
        "unknown part(s) disk: choose from inprocess, breakdown, e2e, memory"
        in capsys.readouterr().err
    )
