"""Fixtures that sse-starlette's tests expect but its sdist does not ship (written here).

Copied into the extracted ``tests/`` by scripts/test-peers. The tests name an autouse
``reset_shutdown_state`` fixture: sse-starlette's shutdown state is process-global
(``AppStatus``) and per thread (the watcher), so every test starts with it cleared.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sse_starlette import sse


def _reset() -> None:
    sse.AppStatus.should_exit = False
    sse.AppStatus.enable_automatic_graceful_drain = True
    sse._thread_state.shutdown_state = None


@pytest.fixture(autouse=True)
def reset_shutdown_state() -> Iterator[None]:
    _reset()
    yield
    _reset()
