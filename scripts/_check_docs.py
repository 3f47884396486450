"""Build the documentation site with --strict, then show that the strict build can fail.

Run by ``scripts/docs``. The site goes to ``site/``. Each failure check copies the docs to a
temporary directory, breaks one thing, and expects ``mkdocs build --strict`` to fail and to
name what is broken:

- a link to a page that does not exist;
- a link to an anchor that does not exist;
- an API reference directive for a name the package does not have;
- a nav entry whose page is missing (the API page, deleted);
- a page in docs/ that the nav leaves out;
- an include (``<!-- include: PATH -->``) of a file that does not exist.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 300
COPIED = [
    "mkdocs.yml",
    "docs",
    "header_first_stream",
    "CHANGELOG.md",
    "scripts/_docs_hooks.py",
    "examples/litellm_proxy/README.md",
]


def mkdocs_build(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )


def append(path: str, text: str) -> Callable[[Path], None]:
    def breaker(project: Path) -> None:
        with (project / path).open("a") as page:
            page.write(text)

    return breaker


def delete(path: str) -> Callable[[Path], None]:
    def breaker(project: Path) -> None:
        (project / path).unlink()

    return breaker


def create(path: str) -> Callable[[Path], None]:
    def breaker(project: Path) -> None:
        (project / path).write_text("# Not in the nav\n")

    return breaker


BREAKAGES: list[tuple[str, Callable[[Path], None], str]] = [
    (
        "a broken internal link",
        append("docs/quickstart.md", "\nSee [the missing page](no-such-page.md).\n"),
        "no-such-page.md",
    ),
    (
        "a broken anchor",
        append("docs/quickstart.md", "\nSee [a row](behaviours.md#no-such-row).\n"),
        "no-such-row",
    ),
    (
        "an API directive for a missing name",
        append("docs/reference.md", "\n::: header_first_stream.NoSuchName\n"),
        "NoSuchName",
    ),
    ("a missing API page", delete("docs/reference.md"), "reference.md"),
    ("a page left out of the nav", create("docs/orphan.md"), "orphan.md"),
    (
        "an include of a missing file",
        append("docs/quickstart.md", "\n<!-- include: examples/no-such-file.md -->\n"),
        "examples/no-such-file.md",
    ),
]


def main() -> int:
    result = mkdocs_build(ROOT, ROOT / "site")
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        print("docs: the strict build failed", file=sys.stderr)
        return 1
    print(f"docs: built {ROOT / 'site'} with --strict")

    failed = False
    for what, breaker, named in BREAKAGES:
        with tempfile.TemporaryDirectory(prefix="hfs-docs-") as tmp:
            project = Path(tmp)
            for name in COPIED:
                source = ROOT / name
                if source.is_dir():
                    shutil.copytree(source, project / name)
                else:
                    (project / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(source, project / name)
            breaker(project)
            broken = mkdocs_build(project, project / "site")
        output = broken.stdout + broken.stderr
        if broken.returncode == 0 or named not in output:
            failed = True
            print(f"docs: FAILED: {what} did not fail the strict build naming {named!r}")
            sys.stderr.write(output)
        else:
            print(f"docs: ok: {what} fails the strict build ({named!r} named)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
