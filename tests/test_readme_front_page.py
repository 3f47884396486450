"""The README is a short front page: two commands that exist, links that resolve."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_LINES = 80

_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def _slug(heading: str) -> str:
    """The anchor GitHub and MkDocs' toc give a heading (for the headings used here)."""
    text = re.sub(r"[^\w\s-]", "", heading.lower()).strip()
    return re.sub(r"\s+", "-", text)


def test_front_page_is_short_and_gives_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_LINES
    commands = [line.split()[1] for line in lines if line.startswith("$ ")]
    assert commands == ["scripts/demo", "scripts/test"]
    for command in commands:
        assert os.access(ROOT / command, os.X_OK), f"{command} is not executable"


def test_every_relative_link_resolves() -> None:
    targets = [m["target"] for m in _LINK.finditer(README.read_text())]
    relative = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert len(relative) >= 10, relative  # the links into the docs are there
    for target in relative:
        path, _, anchor = target.partition("#")
        file = ROOT / path
        assert file.exists(), f"README links to {target}, which does not exist"
        if anchor:
            headings = [
                _slug(line.lstrip("#"))
                for line in file.read_text().splitlines()
                if line.startswith("#")
            ]
            assert anchor in headings, f"README links to {target}: no such heading"


def test_slug_matches_the_toc_extension() -> None:
    assert _slug("## Why it exists") == "why-it-exists"
    assert _slug("What the middleware does not do") == "what-the-middleware-does-not-do"


def test_every_figure_in_what_it_costs_comes_from_the_benchmark_report() -> None:
    section = README.read_text().split("## What it costs", 1)[1].split("\n## ", 1)[0]
    figures = re.findall(r"\d+\.\d+\u00d7", section)  # the multiplication sign
    assert len(figures) >= 6, section
    targets = (ROOT / "docs" / "benchmarks.md").read_text().split("## Targets", 1)[1]
    targets = targets.split("\n## ", 1)[0]
    for figure in figures:
        assert figure in targets, f"README's {figure} is not in docs/benchmarks.md's targets"
