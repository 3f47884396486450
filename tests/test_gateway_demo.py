"""The LLM gateway example (examples/gateway): the bug report's probes, the demo's entry
point and serve mode, and curl, on real servers.

Upstream and gateway run on uvicorn on 127.0.0.1 (the demo's own `serve`, lifespan on,
bounded waits); clients are httpx (streaming: the head is read before the body), curl,
and the demo's entry point in a subprocess.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from examples.gateway.app import Gateway
from examples.gateway.demo import Running, main
from examples.gateway.probes import (
    HEADER_NAMES,
    KEEPS_HEADERS_WITHOUT_FIX,
    PROBES,
    Probe,
    ProbeResult,
    check_results,
    create_key,
    ratelimit_headers,
    run_probes,
)
from examples.gateway.upstream import OVERLOADED_MODEL

from ._gateway import JSON, REMAINING_REQUESTS, TIMEOUT, _headers, _post

REPO = Path(__file__).resolve().parent.parent


SSE = "text/event-stream; charset=utf-8"


# -- the demo's probes ------------------------------------------------------------------


def test_every_shape_carries_all_four_headers_counting_down(fixed: Running) -> None:
    key = create_key(fixed.gateway_url)

    results = run_probes(fixed.gateway_url, key)

    assert [(r.shape, r.status, r.content_type, r.complete) for r in results] == [
        ("chat/completions (sync)", 200, JSON, True),
        ("chat/completions (stream=true)", 200, SSE, True),
        ("embeddings (sync)", 200, JSON, True),
        ("messages (sync)", 200, JSON, True),
        ("messages (stream=true)", 200, SSE, True),
        ("responses (stream=true)", 200, SSE, True),
    ]
    # Each probe's prompt "hello" is estimated at one token.
    assert [r.ratelimit for r in results] == [_headers(5999 - i, 99999 - i) for i in range(6)]
    assert check_results(results) == []


def test_demo_entry_point_prints_six_complete_rows_and_exits_0() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "examples.gateway"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = [
        line.split()
        for line in completed.stdout.splitlines()
        if line.startswith(tuple(p.shape for p in PROBES))
    ]
    assert [" ".join(row[:-6]) for row in rows] == [p.shape for p in PROBES]
    assert [row[-6:] for row in rows] == [
        ["200", "complete", str(5999 - i), "6000", str(99999 - i), "100000"] for i in range(6)
    ]


def test_check_results_reports_a_missing_header_and_counts_that_do_not_go_down(
    fixed: Running,
) -> None:
    key = create_key(fixed.gateway_url)
    first, second = run_probes(fixed.gateway_url, key)[:2]
    stripped = ProbeResult(second.shape, 200, SSE, {REMAINING_REQUESTS: "5998"}, complete=False)

    assert check_results([first, second]) == []
    assert check_results([second, first]) == [
        "chat/completions (sync): remaining counts did not go down after "
        "chat/completions (stream=true)"
    ]
    assert check_results([first, stripped]) == [
        "chat/completions (stream=true): the body is incomplete",
        "chat/completions (stream=true): missing " + ", ".join(HEADER_NAMES[1:]),
    ]


# -- without the fix: the bug report ------------------------------------------------------


def test_without_fix_streams_and_plain_dicts_lose_exactly_their_headers(
    unfixed: Running,
) -> None:
    key = create_key(unfixed.gateway_url)

    results = run_probes(unfixed.gateway_url, key)

    assert all(r.status == 200 and r.complete for r in results)
    assert {r.shape: r.ratelimit for r in results} == {
        "chat/completions (sync)": _headers(5999, 99999),
        "chat/completions (stream=true)": {},
        "embeddings (sync)": _headers(5997, 99997),
        "messages (sync)": {},
        "messages (stream=true)": {},
        "responses (stream=true)": {},
    }
    assert {r.shape for r in results if r.ratelimit} == KEEPS_HEADERS_WITHOUT_FIX
    # As the report says: the counters still went down for every request.
    next_request = run_probes(unfixed.gateway_url, key)[0]
    assert next_request.ratelimit == _headers(5993, 99993)


def test_without_fix_mode_of_the_demo_shows_the_bug_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--without-fix"]) == 0

    out = capsys.readouterr().out
    lost = [line.split("  ")[0] for line in out.splitlines() if line.endswith("<- lost")]
    assert lost == [
        "chat/completions (stream=true)",
        "messages (sync)",
        "messages (stream=true)",
        "responses (stream=true)",
    ]
    assert "Bug shown: without the fix 4 of 6 shapes lose their headers" in out


def test_without_fix_an_upstream_429_on_a_stream_becomes_a_200_and_a_broken_stream(
    unfixed: Running,
) -> None:
    key = create_key(unfixed.gateway_url, models=())
    body = {"model": OVERLOADED_MODEL, "stream": True, "messages": [{"role": "user"}]}

    with (
        httpx.Client(timeout=TIMEOUT) as client,
        client.stream(
            "POST",
            unfixed.gateway_url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json=body,
        ) as response,
    ):
        assert response.status_code == 200
        assert "retry-after" not in response.headers
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()


# -- serving the gateway -------------------------------------------------------------------


def test_the_gateway_says_how_to_serve_it_without_lifespan() -> None:
    with pytest.raises(RuntimeError, match="lifespan events on"):
        _ = Gateway("http://127.0.0.1:9").client


# -- curl -----------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("probe", PROBES, ids=[p.shape for p in PROBES])
def test_curl_sees_the_four_headers_on_every_shape(fixed: Running, probe: Probe) -> None:
    key = create_key(fixed.gateway_url)
    curl = shutil.which("curl")
    assert curl is not None

    command = [
        curl, "-sS", "-N", "-D", "-", "--max-time", "10",
        "-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json",
        fixed.gateway_url + probe.path, "-d", json.dumps(probe.body),
    ]  # fmt: skip

    completed = subprocess.run(command, capture_output=True, timeout=30)

    assert completed.returncode == 0, completed.stderr
    head, _, body = completed.stdout.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert status_line == "HTTP/1.1 200 OK"
    assert {name: headers.get(name) for name in HEADER_NAMES} == _headers(5999, 99999)
    assert probe.marker in body


# -- scripts/demo --serve -------------------------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_serve_mode_prints_a_working_key_and_stops_cleanly(stop: signal.Signals) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.gateway", "--serve"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Bounded: a demo that hangs is killed, which ends the reads below.
    watchdog = threading.Timer(30, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        printed: dict[str, str] = {}
        for line in process.stdout:
            name, sep, value = line.strip().partition("=")
            if sep and name in ("KEY", "PROXY"):
                printed[name] = value
            if line.startswith("curl"):
                break
        response = _post(printed["PROXY"] + PROBES[4].path, printed["KEY"], PROBES[4].body)
        process.send_signal(stop)
        out, err = process.communicate(timeout=30)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()

    assert response.status_code == 200
    assert ratelimit_headers(response.headers) == _headers(5999, 99999)
    assert process.returncode == 0, err
    assert out.endswith("stopping\n")
