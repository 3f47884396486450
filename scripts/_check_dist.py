"""The distributions, checked as a user gets them (run by ``scripts/check-dist``).

1. ``python -m build`` makes the sdist and the wheel; ``twine check --strict`` passes; every
   classifier is a real one (trove-classifiers).
2. The wheel holds the package's modules, ``py.typed`` and the license, nothing else; its
   runtime requirements are floors, and the ``sse`` extra is there.
3. A wheel built from the unpacked sdist is the same wheel: same files, same bytes.
4. In a fresh venv outside the checkout, with only the wheel installed: the package
   imports from the venv; the lazy SSE name raises the documented ImportError; with
   uvicorn, examples/quickstart.py serves a stream with the resolver's headers; with the
   ``sse`` extra, an SSE app serves events with the resolver's headers. Each server runs on
   127.0.0.1 on a free port and is read with curl; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import email
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "header_first_stream"
STARTUP_TIMEOUT = 20.0
REQUEST_TIMEOUT = 10
COMMAND_TIMEOUT = 600

SSE_IMPORT_ERROR = (
    "HeaderFirstEventSourceResponse needs sse-starlette (No module named 'sse_starlette'); "
    "install the 'sse' extra: pip install 'header-first-stream[sse]'"
)

SSE_APP = """
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Route

from header_first_stream import HeaderFirstEventSourceResponse


async def events() -> AsyncIterator[dict[str, str]]:
    yield {"event": "token", "data": "hello"}
    yield {"event": "token", "data": "world"}


async def cost() -> dict[str, str]:
    return {"x-request-cost": "0.0042"}


async def stream(request):
    return HeaderFirstEventSourceResponse(events(), header_resolver=cost, ping=0)


app = Starlette(routes=[Route("/events", stream)])
"""


class CheckFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    print("+", " ".join(str(a) for a in args), flush=True)
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    if result.returncode != 0:
        raise CheckFailed(
            f"exit status {result.returncode}\n--- stdout\n{result.stdout}\n"
            f"--- stderr\n{result.stderr}"
        )
    return result.stdout


def clean_env() -> dict[str, str]:
    """This environment without the variables that would point a venv at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    return env


# --- 1-3: the distributions -------------------------------------------------------------


def build(source: Path, outdir: Path, *which: str) -> None:
    run(sys.executable, "-m", "build", *which, "--outdir", outdir, source)


def only(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    check(len(found) == 1, f"expected one {pattern} in {directory}, found {found}")
    return found[0]


def wheel_contents(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def check_wheel(wheel: Path, version: str) -> None:
    contents = wheel_contents(wheel)
    dist_info = f"header_first_stream-{version}.dist-info"
    # The package's committed modules: a stray file in the checkout must not ship.
    modules = sorted(
        Path(p).name for p in run("git", "-C", ROOT, "ls-files", f"{PACKAGE}/*.py").split()
    )
    expected = {f"{PACKAGE}/{name}" for name in modules} | {
        f"{PACKAGE}/py.typed",
        f"{dist_info}/METADATA",
        f"{dist_info}/WHEEL",
        f"{dist_info}/RECORD",
        f"{dist_info}/licenses/LICENSE",
    }
    check(
        set(contents) == expected,
        f"the wheel should hold exactly {sorted(expected)}; extra: "
        f"{sorted(set(contents) - expected)}, missing: {sorted(expected - set(contents))}",
    )
    for name in modules:
        check(
            contents[f"{PACKAGE}/{name}"] == (ROOT / PACKAGE / name).read_bytes(),
            f"{PACKAGE}/{name} in the wheel differs from the checkout",
        )
    check(
        contents[f"{dist_info}/licenses/LICENSE"] == (ROOT / "LICENSE").read_bytes(),
        "the wheel's LICENSE differs from the checkout's",
    )

    metadata = email.message_from_bytes(contents[f"{dist_info}/METADATA"])
    check(metadata["Name"] == "header-first-stream", f"Name: {metadata['Name']!r}")
    check(metadata["Version"] == version, f"Version: {metadata['Version']!r}")
    requires_python = metadata["Requires-Python"]
    check(requires_python == ">=3.11", f"Requires-Python: {requires_python}")
    license_expression = metadata["License-Expression"]
    check(license_expression == "MIT", f"License-Expression: {license_expression}")
    check(metadata.get_all("License-File") == ["LICENSE"], "License-File should be LICENSE")
    check(
        metadata["Description-Content-Type"] == "text/markdown",
        f"Description-Content-Type: {metadata['Description-Content-Type']!r}",
    )
    description = metadata.get_payload(decode=True)
    check(description == (ROOT / "README.md").read_bytes(), "the description is not README.md")
    requires = metadata.get_all("Requires-Dist") or []
    runtime = sorted(r for r in requires if "extra ==" not in r)
    check(
        runtime == ["anyio>=4.5", "starlette>=1.0"],
        f"runtime requirements should be the two floors, not {runtime}",
    )
    check(
        "sse-starlette>=3.0; extra == 'sse'" in requires,
        f"the sse extra should require sse-starlette>=3.0: {requires}",
    )
    check("sse" in (metadata.get_all("Provides-Extra") or []), "no 'sse' extra")
    check(not metadata.get_all("Project-URL"), "project URLs appeared: check each is true")

    from trove_classifiers import classifiers as known

    declared = metadata.get_all("Classifier") or []
    check(bool(declared), "no classifiers")
    unknown = [c for c in declared if c not in known]
    check(not unknown, f"not PyPI classifiers: {unknown}")
    print(f"ok: the wheel holds {len(contents)} files: the package, py.typed, the license")


def check_sdist(sdist: Path, wheel: Path, work: Path) -> None:
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
        archive.extractall(work / "sdist", filter="data")
    top = names[0].split("/")[0]
    for required in ("pyproject.toml", "LICENSE", "README.md", f"{PACKAGE}/py.typed"):
        check(f"{top}/{required}" in names, f"the sdist lacks {required}")
    # Nothing but committed files (no .venv, site/, caches, patch leftovers).
    tracked = set(run("git", "-C", ROOT, "ls-files").splitlines())
    with tarfile.open(sdist) as archive:
        files = [m.name.split("/", 1)[1] for m in archive.getmembers() if m.isfile()]
    untracked = sorted(set(files) - tracked - {"PKG-INFO"})
    check(not untracked, f"the sdist holds files that are not in git: {untracked}")
    rebuilt_dir = work / "from-sdist"
    build(work / "sdist" / top, rebuilt_dir, "--wheel")
    rebuilt = only(rebuilt_dir, "*.whl")
    check(rebuilt.name == wheel.name, f"{rebuilt.name} != {wheel.name}")
    original, again = wheel_contents(wheel), wheel_contents(rebuilt)
    check(
        sorted(original) == sorted(again),
        f"file lists differ: {sorted(set(original) ^ set(again))}",
    )
    differ = [name for name in original if original[name] != again[name]]
    check(not differ, f"the wheel built from the sdist differs in {differ}")
    print(f"ok: the wheel built from the sdist is the same ({len(again)} files, same bytes)")


# --- 4: the wheel alone -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(python: Path, script: Path, port: int) -> Iterator[None]:
    """Run ``script`` (which serves on ``$PORT``) until the port answers; stop it after."""
    env = {**clean_env(), "PORT": str(port)}
    process = subprocess.Popen(
        [str(python), str(script)],
        cwd=script.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                raise CheckFailed(f"{script.name} exited during start-up:\n{output}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                check(time.monotonic() < deadline, f"{script.name}: no server on {port} in time")
                time.sleep(0.1)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=REQUEST_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=REQUEST_TIMEOUT)


def curl(url: str, *headers: str) -> tuple[list[str], bytes]:
    """GET ``url`` with curl: the head's lines (less date and server) and the body."""
    args = ["curl", "-sS", "-N", "--max-time", str(REQUEST_TIMEOUT), "-D", "-"]
    for header in headers:
        args += ["-H", header]
    result = subprocess.run(
        [*args, url], capture_output=True, timeout=REQUEST_TIMEOUT + 5, check=False
    )
    check(result.returncode == 0, f"curl {url}: {result.stderr.decode()}")
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    lines = [
        line
        for line in head.decode("latin-1").split("\r\n")
        if not line.lower().startswith(("date:", "server:"))
    ]
    return lines, body


def check_installed(work: Path, wheel: Path) -> None:
    venv = work / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    pip: list[str | Path] = [
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]
    app_dir = work / "app"  # outside the checkout: nothing there shadows the installed wheel
    app_dir.mkdir()
    env = clean_env()

    run(*pip, wheel, env=env)
    where = run(
        python,
        "-c",
        "import header_first_stream as h; from header_first_stream import *; "
        "print(h.__file__, h.__version__)",
        cwd=app_dir,
        env=env,
    ).split()
    check(where[0].startswith(str(venv)), f"imported from {where[0]}, not from the venv")
    print(f"ok: import header_first_stream {where[1]} from {where[0]}")

    message = run(
        python,
        "-c",
        "import header_first_stream\n"
        "try:\n"
        "    header_first_stream.HeaderFirstEventSourceResponse\n"
        "except ImportError as exc:\n"
        "    print(exc)\n",
        cwd=app_dir,
        env=env,
    ).strip()
    check(message == SSE_IMPORT_ERROR, f"without the extra: {message!r}")
    print(f"ok: without the sse extra: ImportError: {message}")

    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    tested = {r.split("==")[0]: r for r in pins["optional-dependencies"]["test"]}
    run(*pip, tested["uvicorn"], env=env)
    quickstart = app_dir / "quickstart.py"
    shutil.copy(ROOT / "examples" / "quickstart.py", quickstart)
    port = free_port()
    with serving(python, quickstart, port):
        for remaining in ("99", "98"):
            head, body = curl(f"http://127.0.0.1:{port}/chat", "x-api-key: alice")
            expected = [
                "HTTP/1.1 200 OK",
                "content-type: text/event-stream; charset=utf-8",
                "x-ratelimit-limit-requests: 100",
                f"x-ratelimit-remaining-requests: {remaining}",
                "Transfer-Encoding: chunked",  # h11: uvicorn without httptools
            ]
            check(head == expected, f"quick start /chat head: {head}")
            check(body == b"data: Hello\n\ndata: from\n\ndata: a\n\ndata: stream\n\n", repr(body))
    print("ok: the quick start serves its stream with the resolver's headers on uvicorn")

    run(*pip, f"{wheel}[sse]", tested["sse-starlette"], env=env)
    (app_dir / "sse_app.py").write_text(
        SSE_APP
        + "\nif __name__ == '__main__':\n    import os\n\n    import uvicorn\n\n"
        + "    uvicorn.run(app, host='127.0.0.1', port=int(os.environ['PORT']))\n"
    )
    port = free_port()
    with serving(python, app_dir / "sse_app.py", port):
        head, body = curl(f"http://127.0.0.1:{port}/events")
    expected = [
        "HTTP/1.1 200 OK",
        "content-type: text/event-stream; charset=utf-8",
        "cache-control: no-store",
        "connection: keep-alive",  # over HTTP/1.x, as sse-starlette sends it
        "x-accel-buffering: no",
        "x-request-cost: 0.0042",
        "Transfer-Encoding: chunked",
    ]
    check(head == expected, f"SSE head: {head}")
    check(
        body == b"event: token\r\ndata: hello\r\n\r\nevent: token\r\ndata: world\r\n\r\n",
        f"SSE body: {body!r}",
    )
    print("ok: with the sse extra, HeaderFirstEventSourceResponse streams with its headers")


def main() -> int:
    namespace: dict[str, object] = {}
    init = (ROOT / PACKAGE / "__init__.py").read_text()
    line = next(x for x in init.splitlines() if x.startswith("__version__ = "))
    exec(line, namespace)
    version = str(namespace["__version__"])
    with tempfile.TemporaryDirectory(prefix="hfs-dist-") as tmp:
        work = Path(tmp)
        check(ROOT not in work.parents, "the work directory must be outside the checkout")
        dist = work / "dist"
        build(ROOT, dist, "--sdist", "--wheel")  # both from the tree; the sdist's wheel below
        sdist, wheel = only(dist, "*.tar.gz"), only(dist, "*.whl")
        run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel)
        check_wheel(wheel, version)
        check_sdist(sdist, wheel, work)
        check_installed(work, wheel)
    print("check-dist: all checks passed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckFailed as failure:
        print(f"check-dist: FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
