from __future__ import annotations

import pytest


# Every async test runs on both anyio backends, named explicitly.
@pytest.fixture(params=[pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
