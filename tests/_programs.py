"""Tier-3 helpers for programs as users run them: snippets taken from the docs, served in a
child process by a real server on 127.0.0.1.

The snippets are read from the Markdown itself, never copied into the tests: what the docs
show is what is tested.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STOP_TIMEOUT = 10.0

_SECTION = re.compile(r"^## (.+)$", re.MULTILINE)
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def python_snippets(markdown: Path, heading_prefix: str) -> dict[str, str]:
    """The first Python block of each ``## {heading_prefix}NAME`` section, by NAME."""
    text = markdown.read_text(encoding="utf-8")
    headings = list(_SECTION.finditer(text))
    snippets: dict[str, str] = {}
    for index, heading in enumerate(headings):
        title = heading.group(1)
        if not title.startswith(heading_prefix):
            continue
        end = headings[index + 1].start() if index + 1 < len(headings) else len(text)
        block = _PYTHON_BLOCK.search(text, heading.end(), end)
        assert block is not None, f"section {title!r} of {markdown.name} has no Python block"
        snippets[title.removeprefix(heading_prefix)] = block.group(1)
    return snippets


@contextlib.contextmanager
def serve_program(source: str, directory: Path, module: str, server: str) -> Iterator[str]:
    """Write ``source`` to ``directory/module.py`` and serve its ``app`` in a child process.

    Yields the base URL. The listening socket is bound here, before the child starts, so
    requests queue until it accepts; the parent's copy is closed once the child has it, so
    a child that dies makes requests fail at once instead of waiting.
    """
    (directory / f"{module}.py").write_text(source, encoding="utf-8")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    log = directory / f"{module}.log"
    with log.open("wb") as stderr:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests._program_server",
                server,
                str(directory),
                module,
                str(sock.fileno()),
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            pass_fds=[sock.fileno()],
        )
    sock.close()
    try:
        yield f"http://127.0.0.1:{port}"
    except BaseException:
        print(f"--- {module} on {server}, its output:\n{log.read_text(errors='replace')}")
        raise
    finally:
        child.terminate()
        try:
            child.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - a server that ignores SIGTERM
            child.kill()
            child.wait(STOP_TIMEOUT)
