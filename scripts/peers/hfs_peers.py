"""pytest plugin: a peer's own test suite, run against header-first-stream's classes.

`scripts/test-peers` loads it (``-p hfs_peers --peer NAME``) into the released tests of
Starlette (``--peer starlette``) and sse-starlette (``--peer sse-starlette``), and
`scripts/test-peers-apps` into those of two applications built on them, FastAPI
(``--peer fastapi``) and the MCP Python SDK (``--peer mcp``). Before any conftest or test
module is imported, it replaces

- ``starlette.responses.StreamingResponse`` with `HeaderFirstStreamingResponse`;
- ``sse_starlette.EventSourceResponse`` and ``sse_starlette.sse.EventSourceResponse`` with
  `HeaderFirstEventSourceResponse`,

so ``from starlette.responses import StreamingResponse`` in a test gets ours.

It proves the substitution happened, three ways: the collected test modules and the peer's
own modules must hold no original class (and at least one must hold ours); the originals'
``__call__`` raises if an instance that is not ours runs; and the summary names what was
replaced.

``--hfs-mode`` says what else is done:

- ``substituted`` (the default): the substitution only;
- ``middleware``: also every Starlette (and FastAPI) application's middleware stack is
  wrapped in `HeaderFirstMiddleware`, outermost (outside Starlette's
  ``ServerErrorMiddleware``, as a server-level wrap puts it). An application whose stack
  does not hold it fails the request loudly, and a run in which no request went through it
  fails;
- ``unmodified``: nothing at all (the peer's own baseline).

The peers' tests that fail in a mode for a documented reason are read from the table
under `EXPECTED_HEADING` in ``docs/differences.md`` (the one list of them): each is marked
as a strict expected failure, so that it must fail, and an entry that no longer matches a
collected test is an error.

`DESELECTED` is the one list of the peers' tests that are not run, each with its reason:
tests that reach into the original's private attributes, logger or internals, one that
needs an example file the sdist does not ship, and one that pins concurrent ``send()``
calls, which this package never makes (docs/differences.md lists them all). A listed test
that no longer exists is an error, so the list cannot go stale.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

_BACKENDS = ("asyncio", "trio")

# Each entry: a node id, or a prefix of node ids (a file, a class, a test without its
# parameters), relative to the peer's rootdir, and why it is not run.
DESELECTED: dict[str, dict[str, str]] = {
    "starlette": {},
    # The applications run whole: what fails there is listed in docs/differences.md.
    "fastapi": {},
    "mcp": {},
    "sse-starlette": {
        "tests/test_broadcasting_example.py": (
            "tests examples/02_broadcasting.py, which the sdist does not ship; it tests "
            "the example's own queue (MessageBroadcaster), not EventSourceResponse"
        ),
        "tests/test_issue217.py::"
        "test_send_whenInterruptedAndCleanupStuck_thenDeadlineCancelsCleanup": (
            "expects a log record from the logger named 'sse_starlette.sse'"
        ),
        # Call the private watcher on the class and drive AppStatus's signal handler.
        **dict.fromkeys(
            [
                "tests/test_multi_loop.py::TestIssue149HandleExitSignaling::"
                "test_handle_exit_wakes_waiting_task",
                "tests/test_multi_loop.py::TestIssue149HandleExitSignaling::"
                "test_handle_exit_wakes_multiple_waiting_tasks",
                "tests/test_multi_loop.py::TestIssue149HandleExitSignaling::"
                "test_manual_shutdown_ignores_signal",
                "tests/test_multi_loop.py::TestUvicornIntrospection::"
                "test_uvicorn_should_exit_ignored_when_disabled",
            ],
            "awaits the private EventSourceResponse._listen_for_exit_signal() on the class, "
            "a staticmethod there (and AppStatus.handle_exit/original_handler, its uvicorn "
            "patch)",
        ),
        **dict.fromkeys(
            [
                "tests/test_sse.py::TestEventSourceResponse::"
                "test_ping_whenTimerTicks_thenSendsOneMessagePerTick",
                "tests/test_sse.py::TestEventSourceResponse::"
                "test_ping_whenSendTimesOut_thenRaisesSendTimeoutError",
            ],
            "calls the private method _ping(send), stops it through the attribute "
            "`active` and patches sse_starlette.sse.anyio.sleep",
        ),
        # Count log records by sse-starlette's logger name ("sse_starlette.sse").
        **dict.fromkeys(
            [
                "tests/test_sse.py::TestEventSourceResponse::"
                f"test_stream_whenEncodingFails_thenClosesSuspendedGenerator[{backend}-True-{error}]"
                for backend in _BACKENDS
                for error in ("unknown_field", "retry", "string")
            ]
            + [
                "tests/test_sse.py::TestEventSourceResponse::"
                f"test_send_whenInterrupted_thenClosesSuspendedGenerator[{backend}-True-{cause}]"
                for backend in _BACKENDS
                for cause in ("disconnect", "shutdown", "cancel", "send_error", "timeout")
            ]
            + [
                "tests/test_issue217.py::"
                "test_stream_whenEncodingFailsAndCleanupStuck_thenDeadlineCancelsCleanup",
                "tests/test_issue217.py::"
                "test_send_whenCleanupSwallowsDeadlineCancellation_thenStillWarns",
            ],
            "expects a log record from the logger named 'sse_starlette.sse'",
        ),
        # Behaviour, not internals: the one deliberate difference that a peer test pins.
        "tests/test_sse.py::TestEventSourceResponse::"
        "test_ping_whenConcurrentWithEvents_thenRespectsLocking": (
            "expects sse-starlette to call send() for a ping while an event's send() is "
            "still running (it asserts the WouldBlock that overlap raises); we never call "
            "send() concurrently: that ping is skipped, the event keeps the connection alive"
        ),
        "tests/test_sse.py::TestEventSourceResponse::"
        "test_disconnect_whenClientDisconnects_thenHandlesGracefully": (
            "asserts sse-starlette's DEBUG log text \"chunk: b'data: 4...'\" (its logger's "
            "internal messages), through an httpx_client fixture its sdist does not ship"
        ),
    },
}

_REPLACED: list[tuple[str, str]] = []
_USED: set[str] = set()  # the entries that deselected a test in this run


def _substitute() -> None:
    import sse_starlette
    import sse_starlette.sse
    import starlette.responses

    from header_first_stream import HeaderFirstEventSourceResponse, HeaderFirstStreamingResponse

    original_streaming = starlette.responses.StreamingResponse
    original_sse = sse_starlette.sse.EventSourceResponse
    if original_streaming is HeaderFirstStreamingResponse:
        return  # already done (pytest may configure twice, e.g. under pytester)
    _guard(original_streaming, HeaderFirstStreamingResponse)
    _guard(original_sse, HeaderFirstEventSourceResponse)
    starlette.responses.StreamingResponse = HeaderFirstStreamingResponse  # type: ignore[misc]
    sse_starlette.EventSourceResponse = HeaderFirstEventSourceResponse  # type: ignore[misc]
    sse_starlette.sse.EventSourceResponse = HeaderFirstEventSourceResponse  # type: ignore[misc]
    _ORIGINALS[original_streaming] = HeaderFirstStreamingResponse
    _ORIGINALS[original_sse] = HeaderFirstEventSourceResponse
    _REPLACED.extend(
        [
            ("starlette.responses.StreamingResponse", "HeaderFirstStreamingResponse"),
            ("sse_starlette.EventSourceResponse", "HeaderFirstEventSourceResponse"),
            ("sse_starlette.sse.EventSourceResponse", "HeaderFirstEventSourceResponse"),
        ]
    )


_ORIGINALS: dict[type, type] = {}


def _guard(original: type, substitute: type) -> None:
    # An instance of the original class (not of ours, which may call up to it) that runs
    # means a test escaped the substitution: fail that test loudly.
    original_call = original.__call__

    async def guarded_call(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if not isinstance(self, substitute):
            raise AssertionError(
                f"the original {original.__module__}.{original.__qualname__} ran "
                f"({type(self).__qualname__}) instead of {substitute.__qualname__}: "
                "the substitution missed this test"
            )
        await original_call(self, scope, receive, send)

    original.__call__ = guarded_call  # type: ignore[method-assign]


MODES = ("substituted", "middleware", "unmodified")

# The peers' modules that must hold our classes, not the originals, once substituted
# (the test modules are checked too).
_PEER_PACKAGES = {"fastapi": ("fastapi",), "mcp": ("mcp",)}

# Requests (HTTP scopes) that went through a Starlette app wrapped in the middleware.
_WRAPPED = {"requests": 0}


def _wrap_every_app(peer: str) -> None:
    # Outermost, around the stack each app builds once: what wrapping the app for the
    # server (`HeaderFirstMiddleware(app)`) does, for every app a test builds.
    from starlette.applications import Starlette

    from header_first_stream import HeaderFirstMiddleware

    classes: list[type[Any]] = [Starlette]
    if peer == "fastapi":
        from fastapi import FastAPI

        classes.append(FastAPI)  # it builds its stack itself, without super()

    for cls in classes:
        build = cls.build_middleware_stack

        def wrapped_build(self: Any, build: Any = build) -> Any:
            return HeaderFirstMiddleware(build(self))

        cls.build_middleware_stack = wrapped_build  # type: ignore[method-assign]

    original_call = Starlette.__call__

    async def checked_call(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        if not _holds(self.middleware_stack, HeaderFirstMiddleware):
            raise AssertionError(
                f"the middleware stack of {type(self).__qualname__} holds no "
                "HeaderFirstMiddleware: hfs_peers did not wrap this app"
            )
        if scope["type"] == "http":
            _WRAPPED["requests"] += 1
        await original_call(self, scope, receive, send)

    Starlette.__call__ = checked_call  # type: ignore[method-assign]
    _REPLACED.append(("every Starlette app's middleware stack", "wrapped in HeaderFirstMiddleware"))


def _holds(stack: Any, middleware: type) -> bool:
    # Through whatever wraps the stack later (OpenTelemetry's instrumentation does).
    seen: set[int] = set()
    while stack is not None and id(stack) not in seen:
        if isinstance(stack, middleware):
            return True
        seen.add(id(stack))
        stack = getattr(stack, "app", None)
    return False


EXPECTED_HEADING = "### The applications' tests that fail, and why"
_DIFFERENCES = Path(__file__).resolve().parents[2] / "docs" / "differences.md"
_PROJECTS = {"FastAPI": "fastapi", "MCP": "mcp"}


def expected_failures(peer: str, mode: str) -> dict[str, str]:
    """The test ids that docs/differences.md lists as failing for ``peer`` in ``mode``.

    Its table under `EXPECTED_HEADING` has the columns project (FastAPI, MCP), mode
    (substituted, middleware, both), test (a node id in backquotes) and why.
    """
    text = _DIFFERENCES.read_text(encoding="utf-8")
    start = text.find("\n" + EXPECTED_HEADING + "\n")
    if start < 0:
        raise pytest.UsageError(f"{_DIFFERENCES} has no section {EXPECTED_HEADING!r}")
    section = text[start + len(EXPECTED_HEADING) + 2 :]
    following = re.search(r"^#", section, re.MULTILINE)
    rows = [
        line
        for line in section[: following.start() if following else None].splitlines()
        if line.startswith("|")
    ]
    if len(rows) < 2 or [c.strip() for c in rows[0].strip("|").split("|")] != [
        "project",
        "mode",
        "test",
        "why",
    ]:
        raise pytest.UsageError(
            f"the table under {EXPECTED_HEADING!r} in {_DIFFERENCES} must have the columns "
            "| project | mode | test | why |"
        )
    listed: dict[str, str] = {}
    for row in rows[2:]:
        cells = [c.strip() for c in row.strip().strip("|").split("|", 3)]
        if len(cells) != 4 or cells[0] not in _PROJECTS:
            raise pytest.UsageError(f"{_DIFFERENCES}: a row that cannot be read: {row!r}")
        project, row_mode, test, why = cells
        if row_mode not in ("substituted", "middleware", "both"):
            raise pytest.UsageError(f"{_DIFFERENCES}: unknown mode {row_mode!r} in {row!r}")
        if not (test.startswith("`") and test.endswith("`")):
            raise pytest.UsageError(f"{_DIFFERENCES}: the test id must be in backquotes: {row!r}")
        if _PROJECTS[project] == peer and row_mode in (mode, "both"):
            listed[test.strip("`")] = why
    return listed


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--peer",
        choices=sorted(DESELECTED),
        required=True,
        help="whose test suite this is: selects the list of deselected tests",
    )
    parser.addoption(
        "--hfs-mode",
        choices=MODES,
        default="substituted",
        help="substituted: our classes in place of the originals; middleware: also every "
        "app wrapped in HeaderFirstMiddleware; unmodified: the peer's own baseline",
    )


# A wrapper, first: before the warnings plugin's wrapper applies the peer's warning filters,
# which import the categories they name (MCP's name mcp.MCPDeprecationWarning, and importing
# mcp imports its transports).
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> Generator[None]:
    # The options as parsed so far: Config.getoption answers only after this hook.
    known = early_config.known_args_namespace
    if known.hfs_mode != "unmodified":
        _substitute()
        if known.hfs_mode == "middleware":
            _wrap_every_app(known.peer)
    return (yield)


def _matches(nodeid: str, entry: str) -> bool:
    return nodeid == entry or nodeid.startswith((entry + "::", entry + "["))


def _modules(items: list[pytest.Item]) -> Iterator[Any]:
    seen: set[int] = set()
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and id(module) not in seen:
            seen.add(id(module))
            yield module


@pytest.hookimpl(tryfirst=True)  # before -k and -m deselect: the list sees every test
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    peer = config.getoption("--peer")
    mode = config.getoption("--hfs-mode")
    listed = DESELECTED[peer]
    # An entry is stale if its file was collected but none of its tests (a run of some
    # files only does not make the entries of the others stale).
    files = {item.nodeid.split("::", 1)[0] for item in items}
    unused = {entry for entry in listed if entry.split("::", 1)[0].split("[", 1)[0] in files}
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        entry = next((e for e in listed if _matches(item.nodeid, e)), None)
        if entry is None:
            kept.append(item)
        else:
            unused.discard(entry)
            dropped.append(item)
    if unused:
        raise pytest.UsageError(
            f"DESELECTED in {__file__} lists tests that were not collected: "
            f"{sorted(unused)} (remove them from the list)"
        )
    if mode != "unmodified":
        _mark_expected_failures(kept, expected_failures(peer, mode), files)
        _check_substituted(kept, peer)
    _USED.update(e for e in listed if any(_matches(item.nodeid, e) for item in dropped))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _mark_expected_failures(
    items: list[pytest.Item], listed: dict[str, str], files: set[str]
) -> None:
    unused = {entry for entry in listed if entry.split("::", 1)[0] in files}
    for item in items:
        entry = next((e for e in listed if _matches(item.nodeid, e)), None)
        if entry is not None:
            unused.discard(entry)
            item.add_marker(pytest.mark.xfail(strict=True, reason=listed[entry]))
    if unused:
        raise pytest.UsageError(
            f"{_DIFFERENCES} lists tests that were not collected: {sorted(unused)} "
            "(remove them from the list)"
        )


def _check_substituted(items: list[pytest.Item], peer: str) -> None:
    packages = _PEER_PACKAGES.get(peer, ())
    peer_modules = [
        module
        for name, module in list(sys.modules.items())
        if module is not None and name.split(".", 1)[0] in packages
    ]
    holding_ours = 0
    for module in [*_modules(items), *peer_modules]:
        for name, value in vars(module).items():
            for original, ours in _ORIGINALS.items():
                if value is original:
                    raise pytest.UsageError(
                        f"{module.__name__}.{name} is the original {original.__qualname__}, "
                        f"not {ours.__qualname__}: the substitution came too late"
                    )
                if value is ours:
                    holding_ours += 1
    if not holding_ours:
        raise pytest.UsageError(
            "no collected test module (nor the peer's own) holds a substituted class: "
            "these tests would not test header-first-stream"
        )


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"hfs_peers: {old} is {new}" for old, new in _REPLACED]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A middleware run that wrapped nothing tested nothing of the middleware.
    if (
        session.config.getoption("--hfs-mode") == "middleware"
        and not _WRAPPED["requests"]
        and session.testscollected
        and exitstatus == pytest.ExitCode.OK
    ):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if config.getoption("--hfs-mode") == "middleware":
        terminalreporter.write_line(
            f"hfs_peers: {_WRAPPED['requests']} HTTP requests went through "
            "HeaderFirstMiddleware" + ("" if _WRAPPED["requests"] else " (none: a failure)")
        )
    listed = DESELECTED[config.getoption("--peer")]
    if _USED:
        terminalreporter.section("deselected by hfs_peers (tests of private internals)")
    for entry, reason in listed.items():
        if entry in _USED:
            terminalreporter.write_line(f"{entry}: {reason}")
