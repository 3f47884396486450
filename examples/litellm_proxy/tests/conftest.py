"""The LiteLLM tier: a real LiteLLM proxy, started as a subprocess on 127.0.0.1.

Run by ``scripts/test-litellm``, once per LiteLLM release, each in its own
``.venv-litellm-VERSION``; the default suite does not collect this directory. The proxies
are set up by `examples.litellm_proxy.running`, as ``python -m examples.litellm_proxy``
sets them up; here each runs under ``strace`` (``trace=True``), so that a test can check
that LiteLLM connected to nothing but 127.0.0.1.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..running import mock_upstream


@pytest.fixture(scope="session")
def upstream_url() -> Iterator[str]:
    """The mock OpenAI/Anthropic provider on uvicorn, on 127.0.0.1."""
    with mock_upstream() as url:
        yield url


_FAMILY = re.compile(r"connect\(\d+, \{sa_family=(\w+)")
_PORT = re.compile(r"sin6?_port=htons\((\d+)\)")
_ADDRESS = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


def connections(directory: Path) -> list[tuple[str, str | None, int | None]]:
    """Every ``connect()`` of a proxy started in ``directory``: (family, address, port)."""
    found: list[tuple[str, str | None, int | None]] = []
    for line in (directory / "connect.log").read_text().splitlines():
        family = _FAMILY.search(line)
        if family is None:
            continue  # not a connect() line: a signal, an exit status
        port = _PORT.search(line)
        address = _ADDRESS.search(line)
        found.append(
            (
                family[1],
                (address[1] or address[2]) if address else None,
                int(port[1]) if port else None,
            )
        )
    return found
