"""The gateway's scale options, checked without Redis: command line, factory, constructor.

The behaviour with a real Redis and worker processes is in the scale tier
(`tests.test_gateway_redis`, `tests.test_gateway_redis_outage`; ``scripts/test-scale``).
"""

from __future__ import annotations

import sys

import pytest

from examples.gateway.app import Gateway
from examples.gateway.demo import main
from examples.gateway.workers import create_app


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "2"], "--workers needs --redis URL: without a shared store each worker"),
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--redis", "redis://127.0.0.1:1/0", "--without-fix"], "--redis runs the fixed gateway"),
    ],
)
def test_demo_refuses_options_that_cannot_share_quotas(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_with_redis_but_without_the_redis_package_says_how_to_get_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if not installed: import fails
    with pytest.raises(SystemExit) as exited:
        main(["--redis", "redis://127.0.0.1:1/0"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "scripts/demo: error: --redis needs the `redis` package, which the demo's own "
        "environment gets on first use: run scripts/demo (or pip install -e "
        "'.[demo,demo-redis]')"
    )


def test_the_worker_factory_names_the_missing_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_UPSTREAM_URL", raising=False)
    with pytest.raises(RuntimeError, match="GATEWAY_UPSTREAM_URL is not set; set it to"):
        create_app()


def test_the_worker_factory_names_a_bad_store_error_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_UPSTREAM_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("GATEWAY_ON_STORE_ERROR", "ignore")
    with pytest.raises(RuntimeError, match="must be 'error' or 'degrade', got 'ignore'"):
        create_app()


def test_the_gateway_names_a_bad_store_error_policy() -> None:
    with pytest.raises(ValueError, match="on_store_error must be 'error' or 'degrade', got 'x'"):
        Gateway("http://127.0.0.1:9", on_store_error="x")  # type: ignore[arg-type]
