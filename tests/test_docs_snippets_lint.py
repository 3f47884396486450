"""The programs in docs/ pass the project's ruff rules and mypy --strict as a user's file would.

Each is linted alone, as ``app.py`` in an empty directory (so that ``header_first_stream``
is a third-party import there, as in a user's project), with the rules of pyproject.toml.
mypy checks them all in one run, with the project's cache (scripts/check filled it for
the same frameworks, which tests/test_frameworks.py imports).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ._programs import ROOT, python_snippets

PROGRAMS = {
    **{
        f"frameworks.md: {name}": source
        for name, source in python_snippets(
            ROOT / "docs" / "frameworks.md", "Using it with "
        ).items()
    },
    **{
        f"frameworks.md: FastAPI's own streaming, {name}": source
        for name, source in python_snippets(
            ROOT / "docs" / "frameworks.md", "FastAPI's own streaming, "
        ).items()
    },
    **{
        f"hooks.md: {name}": source
        for name, source in python_snippets(ROOT / "docs" / "hooks.md", "Example: ").items()
    },
}

RUFF = [sys.executable, "-m", "ruff"]
RULES = ["--isolated", "--line-length", "100", "--target-version", "py311"]


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_the_program_is_ruff_clean(name: str, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(PROGRAMS[name], encoding="utf-8")
    select = "E,F,W,I,B,UP,SIM,RUF,ASYNC"
    lint = subprocess.run(
        [*RUFF, "check", *RULES, "--select", select, "--no-cache", "app.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    style = subprocess.run(
        [*RUFF, "format", *RULES, "--no-cache", "--check", "--diff", "app.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert style.returncode == 0, style.stdout + style.stderr


def test_the_programs_pass_mypy_strict(tmp_path: Path) -> None:
    for index, source in enumerate(PROGRAMS.values()):
        (tmp_path / f"program_{index}.py").write_text(source, encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--ignore-missing-imports",  # Django ships no type information
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            *sorted(path.name for path in tmp_path.glob("program_*.py")),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"Success: no issues found in {len(PROGRAMS)} source files")
