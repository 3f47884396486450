from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Iterator

import pytest

from examples.gateway.demo import Running, running, serve
from examples.gateway.upstream import create_upstream_app

from ._asgi import LOGGER, FakeUvicornServer


# Every async test runs on both anyio backends, named explicitly.
@pytest.fixture(params=[pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """`caplog`, capturing the library's records from INFO up.

    Garbage from earlier tests is collected first: a late-header store that no head took
    logs a WARNING when it is freed, which must not land in this test's records.
    """
    gc.collect()
    caplog.set_level(logging.INFO, logger=LOGGER)
    return caplog


@pytest.fixture
def uvicorn_like() -> Iterator[FakeUvicornServer]:
    """A uvicorn-like server's SIGTERM handler, installed for the test: set its
    ``should_exit`` to make the package notice the server's exit by polling."""
    server = FakeUvicornServer()
    previous = signal.signal(signal.SIGTERM, server.handle_exit)
    try:
        yield server
    finally:
        signal.signal(signal.SIGTERM, previous)


# The gateway example on real servers (tests/test_gateway_*.py): one upstream and one
# gateway with and without the fix, per test module.


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    # A small pause between events, as a model streams, so that streams overlap.
    with serve(create_upstream_app(chunk_delay=0.002)) as url:
        yield url


@pytest.fixture(scope="module")
def fixed(upstream_url: str) -> Iterator[Running]:
    with running(fix=True, upstream_url=upstream_url) as servers:
        yield servers


@pytest.fixture(scope="module")
def unfixed(upstream_url: str) -> Iterator[Running]:
    with running(fix=False, upstream_url=upstream_url) as servers:
        yield servers
