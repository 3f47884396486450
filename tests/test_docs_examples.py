"""Every complete program in the docs runs on a real server and prints what the page shows.

The convention, for ``README.md`` and ``docs/**/*.md`` (examples are never copied by hand
into a test; this file extracts them from the Markdown):

- A fenced block opened with ````` ```python title="NAME.py" ````` is a complete program
  (Material for MkDocs shows the title above the block; GitHub ignores it). It must define
  an ASGI application named ``app``.
- The ``console`` block that follows it, before the next program, shows it at work:
  ``$ uvicorn NAME:app`` (this test serves ``app`` on uvicorn with httptools, on 127.0.0.1
  and a free port, in place of that command), then ``$ curl ...`` commands, each followed
  by what it prints. Each command is run with bash, with the free port in place of 8000,
  and its output must equal the lines below it exactly, less the ``date`` and ``server``
  headers uvicorn adds (the pages leave them out and say so), with CRLF read as LF.
- A program without such a console block fails: every program shows what it does.
- Every other ``python`` block is a fragment: it is not run, but it must parse.

The servers are uvicorn on asyncio, as the pages tell readers to run them; the behaviours
themselves are pinned on asyncio and trio by the other test modules.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ._servers import serve

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
CURL_TIMEOUT = 15

# Pages that must each hold at least one program (so that a broken convention, which would
# find none, fails instead of passing on nothing).
PAGES_WITH_PROGRAMS = {
    "docs/quickstart.md",
    "docs/howto/gateway-rate-limits.md",
    "docs/howto/early-errors.md",
    "docs/howto/sse.md",
    "docs/howto/middleware-and-hooks.md",
}

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,})(?P<lang>[\w-]*)(?P<info>.*)$")
_TITLE = re.compile(r'title="(?P<title>[^"]+)"')


@dataclass
class Block:
    page: str
    line: int
    lang: str
    title: str | None
    code: str


@dataclass
class Program:
    block: Block
    # (command, expected output) pairs from the console block after it.
    commands: list[tuple[str, str]] = field(default_factory=list)
    server_command: str | None = None

    @property
    def id(self) -> str:
        return f"{self.block.page}:{self.block.line}:{self.block.title}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, dedented by their fence's indentation."""
    found: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        assert end < len(lines), f"{page}:{i + 1}: unclosed code block"
        title = _TITLE.search(opening["info"])
        found.append(
            Block(
                page=str(page.relative_to(ROOT) if page.is_relative_to(ROOT) else page),
                line=i + 1,
                lang=opening["lang"],
                title=title["title"] if title else None,
                code="\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n",
            )
        )
        i = end + 1
    return found


def parse_console(code: str) -> list[tuple[str, str]]:
    """``$ command`` lines (with ``\\`` continuations) and the output below each."""
    pairs: list[tuple[str, str]] = []
    lines = code.rstrip("\n").split("\n")
    i = 0
    while i < len(lines):
        assert lines[i].startswith("$ "), f"console output before any command: {lines[i]!r}"
        command = lines[i][2:]
        while command.endswith("\\"):
            i += 1
            command = command[:-1] + lines[i].strip()
        i += 1
        output: list[str] = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        pairs.append((command, "\n".join(output)))
    return pairs


def programs(pages: list[Path]) -> list[Program]:
    found: list[Program] = []
    for page in pages:
        current: Program | None = None
        for block in blocks(page):
            if block.lang == "python" and block.title is not None:
                current = Program(block)
                found.append(current)
            elif block.lang == "console" and current is not None and not current.commands:
                pairs = parse_console(block.code)
                if pairs and pairs[0][0].startswith("uvicorn "):
                    current.server_command = pairs[0][0]
                    current.commands = pairs[1:]
    return found


PROGRAMS = programs(PAGES)
FRAGMENTS = [b for page in PAGES for b in blocks(page) if b.lang == "python" and b.title is None]


def test_every_page_that_teaches_has_programs() -> None:
    pages = {program.block.page for program in PROGRAMS}
    assert pages >= PAGES_WITH_PROGRAMS, PAGES_WITH_PROGRAMS - pages


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda b: f"{b.page}:{b.line}")
def test_every_python_fragment_parses(fragment: Block) -> None:
    ast.parse(fragment.code, filename=f"{fragment.page}:{fragment.line}")


def _strip_server_headers(output: str) -> str:
    lines = output.replace("\r\n", "\n").split("\n")
    kept = [line for line in lines if not line.lower().startswith(("date:", "server:"))]
    return "\n".join(kept).rstrip("\n")


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.id)
def test_program_serves_what_the_page_shows(program: Program, tmp_path: Path) -> None:
    check_program(program, tmp_path)


def check_program(program: Program, tmp_path: Path) -> None:
    """Serve the program's ``app`` and run its page's curl commands; assert the output."""
    block = program.block
    assert block.title is not None and block.title.endswith(".py")
    module_name = block.title.removesuffix(".py")
    assert program.server_command == f"uvicorn {module_name}:app", (
        f"{program.id}: the console block after the program must start with "
        f"`$ uvicorn {module_name}:app`, then show `$ curl ...` commands and their output"
    )
    assert program.commands, f"{program.id}: no `$ curl` command shows what the program does"

    path = tmp_path / block.title
    path.write_text(block.code)
    spec = importlib.util.spec_from_file_location(f"docs_example_{module_name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    assert shutil.which("curl"), "curl is not installed (scripts/test installs it with apt-get)"
    with serve(module.app, "uvicorn-httptools") as url:
        port = url.rsplit(":", 1)[1]
        for command, expected in program.commands:
            assert shlex.split(command)[0] == "curl", f"{program.id}: not a curl command"
            assert "127.0.0.1:8000" in command, f"{program.id}: curl 127.0.0.1:8000, please"
            result = subprocess.run(
                ["bash", "-c", command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")],
                capture_output=True,
                timeout=CURL_TIMEOUT,
                check=False,
            )
            assert result.returncode == 0, f"{command}: {result.stderr.decode()}"
            actual = _strip_server_headers(result.stdout.decode())
            assert actual == expected.rstrip("\n"), f"{program.id}: {command}\n{actual}"


HELLO_APP = (
    "from starlette.applications import Starlette\n"
    "from starlette.responses import PlainTextResponse\n"
    "from starlette.routing import Route\n\n\n"
    "async def hello(request):\n"
    "    return PlainTextResponse('hello')\n\n\n"
    "app = Starlette(routes=[Route('/', hello)])\n"
)


def _page(tmp_path: Path, program: str, console: str) -> Program:
    page = tmp_path / "page.md"
    page.write_text(f'```python title="app.py"\n{program}```\n\n```console\n{console}```\n')
    (found,) = programs([page])
    return found


def test_a_program_that_prints_what_its_page_shows_passes(tmp_path: Path) -> None:
    console = "$ uvicorn app:app\n$ curl -s http://127.0.0.1:8000/\nhello\n"
    check_program(_page(tmp_path, HELLO_APP, console), tmp_path)


@pytest.mark.parametrize(
    ("program", "console", "message"),
    [
        (HELLO_APP, "$ uvicorn app:app\n$ curl -s http://127.0.0.1:8000/\ngoodbye\n", "hello"),
        (
            "raise RuntimeError('broken example')\n",
            "$ uvicorn app:app\n$ curl -s http://127.0.0.1:8000/\nhello\n",
            "broken example",
        ),
        (HELLO_APP, "$ uvicorn app:app\n", "no `$ curl` command"),
        (HELLO_APP, "$ curl -s http://127.0.0.1:8000/\nhello\n", "must start with"),
        (HELLO_APP, "$ uvicorn app:app\n$ curl -s http://127.0.0.1:8000/nope\nhello\n", "Not"),
    ],
    ids=["wrong-output", "raises", "no-curl", "no-uvicorn", "wrong-path"],
)
def test_a_program_that_does_not_print_what_its_page_shows_fails(
    tmp_path: Path, program: str, console: str, message: str
) -> None:
    with pytest.raises((AssertionError, RuntimeError), match=re.escape(message)):
        check_program(_page(tmp_path, program, console), tmp_path)


def test_the_parser_reads_the_convention(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Text\n\n"
        '```python title="app.py"\n'
        "app = None\n"
        "```\n\n"
        "- in a list:\n\n"
        "    ```console\n"
        "    $ uvicorn app:app\n"
        "    $ curl -s \\\n"
        "        http://127.0.0.1:8000/\n"
        "    hello\n"
        "    world\n"
        "    ```\n"
    )
    found = blocks(page)
    assert [(b.lang, b.title) for b in found] == [("python", "app.py"), ("console", None)]
    assert found[0].code == "app = None\n"
    assert parse_console(found[1].code) == [
        ("uvicorn app:app", ""),
        ("curl -s http://127.0.0.1:8000/", "hello\nworld"),
    ]
