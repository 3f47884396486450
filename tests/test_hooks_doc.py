"""The plugin program of docs/hooks.md, run as it is: installed after start-up, its hook's
header reaches the client on a stream and on JSON (uvicorn on asyncio, hypercorn's trio
worker; each in a child process, with the app's lifespan)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ._programs import ROOT, python_snippets, serve_program

WAIT = 30.0


def test_the_doc_has_one_example() -> None:
    assert list(python_snippets(ROOT / "docs" / "hooks.md", "Example: ")) == [
        "a plugin that installs the middleware at start-up"
    ]


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn-trio"])
def test_the_plugin_program_sends_its_hooks_header(server: str, tmp_path: Path) -> None:
    [source] = python_snippets(ROOT / "docs" / "hooks.md", "Example: ").values()
    with (
        serve_program(source, tmp_path, "plugin_example", server) as url,
        httpx.Client(timeout=WAIT) as client,
    ):
        stream = client.get(url + "/stream")
        json = client.get(url + "/json")
    for response in (stream, json):
        assert response.status_code == 200
        assert response.headers.get_list("x-ratelimit-remaining-requests") == ["41"]
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.content == b"data: hello\n\n"
    assert json.content == b'{"ok":true}'
