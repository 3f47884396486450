"""The LLM gateway example (examples/gateway): the bug report's probes on real servers.

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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from examples.gateway.app import MASTER_KEY, Gateway
from examples.gateway.demo import (
    HEADER_NAMES,
    KEEPS_HEADERS_WITHOUT_FIX,
    PROBES,
    Probe,
    ProbeResult,
    Running,
    check_results,
    create_key,
    main,
    ratelimit_headers,
    run_probe,
    run_probes,
    running,
    serve,
)
from examples.gateway.limiter import KeyLimits, RateLimiter
from examples.gateway.upstream import (
    OVERLOADED_HEADERS,
    OVERLOADED_MODEL,
    REPLY,
    create_upstream_app,
)
from header_first_stream import HeaderFirstStreamingResponse

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0

REMAINING_REQUESTS, LIMIT_REQUESTS, REMAINING_TOKENS, LIMIT_TOKENS = HEADER_NAMES
SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"


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


def _headers(
    remaining_requests: int, remaining_tokens: int, rpm: int = 6000, tpm: int = 100000
) -> dict[str, str]:
    return {
        REMAINING_REQUESTS: str(remaining_requests),
        LIMIT_REQUESTS: str(rpm),
        REMAINING_TOKENS: str(remaining_tokens),
        LIMIT_TOKENS: str(tpm),
    }


def _post(url: str, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url, headers={"authorization": f"Bearer {key}"}, json=body, timeout=TIMEOUT)


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


# -- the quota ----------------------------------------------------------------------------


def test_the_request_after_the_last_allowed_one_gets_429_with_retry_after(
    fixed: Running,
) -> None:
    key = create_key(fixed.gateway_url, rpm_limit=3)
    chat_sync, chat_stream, _, messages_sync = PROBES[:4]

    with httpx.Client(timeout=TIMEOUT) as client:
        allowed = [
            run_probe(client, fixed.gateway_url, key, probe)
            for probe in (chat_sync, chat_stream, messages_sync)
        ]
        refused = [
            _post(fixed.gateway_url + probe.path, key, probe.body)
            for probe in (chat_stream, chat_sync)
        ]

    assert [(r.status, r.complete, r.ratelimit) for r in allowed] == [
        (200, True, _headers(2, 99999, rpm=3)),
        (200, True, _headers(1, 99998, rpm=3)),
        (200, True, _headers(0, 99997, rpm=3)),
    ]
    for response in refused:
        assert response.status_code == 429
        assert ratelimit_headers(response.headers) == _headers(0, 99997, rpm=3)
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert response.json()["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    ("rpm_limit", "tpm_limit", "names"),
    [
        (10, None, [REMAINING_REQUESTS, LIMIT_REQUESTS]),
        (None, 1000, [REMAINING_TOKENS, LIMIT_TOKENS]),
        (None, None, []),
    ],
    ids=["rpm-only", "tpm-only", "no-limits"],
)
def test_a_key_gets_the_two_headers_of_each_limit_it_has(
    fixed: Running, rpm_limit: int | None, tpm_limit: int | None, names: list[str]
) -> None:
    key = create_key(fixed.gateway_url, rpm_limit=rpm_limit, tpm_limit=tpm_limit)

    results = run_probes(fixed.gateway_url, key)

    assert [list(r.ratelimit) for r in results] == [names] * len(PROBES)
    assert all(r.status == 200 and r.complete for r in results)


def test_a_request_whose_token_estimate_does_not_fit_gets_429(fixed: Running) -> None:
    key = create_key(fixed.gateway_url, rpm_limit=None, tpm_limit=10)
    small = {"model": "test-chat", "messages": [{"role": "user", "content": "hello"}]}
    large = {"model": "test-chat", "messages": [{"role": "user", "content": "x" * 40}]}

    first = _post(fixed.gateway_url + "/v1/chat/completions", key, small)
    refused = _post(fixed.gateway_url + "/v1/chat/completions", key, large)

    assert first.status_code == 200
    assert ratelimit_headers(first.headers) == {REMAINING_TOKENS: "9", LIMIT_TOKENS: "10"}
    assert refused.status_code == 429
    assert ratelimit_headers(refused.headers) == {REMAINING_TOKENS: "9", LIMIT_TOKENS: "10"}
    assert "tokens per minute" in refused.json()["error"]["message"]


@pytest.mark.anyio
async def test_the_limiter_window_resets_after_a_minute_and_refusals_are_not_counted() -> None:
    now = [1000.0]
    limiter = RateLimiter(clock=lambda: now[0])
    limits = KeyLimits(rpm_limit=2, tpm_limit=100)

    first = await limiter.check_and_reserve("k", limits, 30)
    second = await limiter.check_and_reserve("k", limits, 30)
    now[0] = 1059.5
    third = await limiter.check_and_reserve("k", limits, 30)
    other_key = await limiter.check_and_reserve("other", limits, 30)
    now[0] = 1060.0
    after_reset = await limiter.check_and_reserve("k", limits, 30)

    assert (first.allowed, second.allowed, third.allowed, after_reset.allowed) == (
        True,
        True,
        False,
        True,
    )
    assert (third.retry_after, third.exceeded) == (1, "requests")
    assert third.headers == _headers(0, 40, rpm=2, tpm=100)
    assert other_key.headers == _headers(1, 70, rpm=2, tpm=100)
    assert after_reset.headers == _headers(1, 70, rpm=2, tpm=100)


# -- concurrency ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_streams_on_different_keys_never_see_each_others_numbers(
    fixed: Running,
) -> None:
    limits = [(1000 + 111 * i, 50000 + 7777 * i) for i in range(4)]
    keys = [create_key(fixed.gateway_url, rpm_limit=rpm, tpm_limit=tpm) for rpm, tpm in limits]
    per_key = 3
    seen: dict[str, list[dict[str, str]]] = {key: [] for key in keys}
    bodies: list[bytes] = []
    all_heads = anyio.Event()
    probe = PROBES[1]  # chat/completions (stream=true)

    async def one_stream(client: httpx.AsyncClient, key: str) -> None:
        async with client.stream(
            "POST",
            fixed.gateway_url + probe.path,
            headers={"authorization": f"Bearer {key}"},
            json=probe.body,
        ) as response:
            seen[key].append(ratelimit_headers(response.headers))
            if sum(map(len, seen.values())) == len(keys) * per_key:
                all_heads.set()
            # Every stream stays open until all heads are in: they all run at once.
            await all_heads.wait()
            bodies.append(await response.aread())

    with anyio.fail_after(30):
        async with httpx.AsyncClient(timeout=TIMEOUT) as client, anyio.create_task_group() as tg:
            for key in keys:
                for _ in range(per_key):
                    tg.start_soon(one_stream, client, key)

    assert len(bodies) == len(keys) * per_key
    assert all(body.endswith(probe.marker) for body in bodies)
    for key, (rpm, tpm) in zip(keys, limits, strict=True):
        assert sorted(seen[key], key=lambda h: -int(h[REMAINING_REQUESTS])) == [
            _headers(rpm - n, tpm - n, rpm=rpm, tpm=tpm) for n in range(1, per_key + 1)
        ]


# -- upstream errors ----------------------------------------------------------------------

_OVERLOADED_CASES = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, False),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, True),
    ("/v1/embeddings", {"input": "hi"}, False),
    ("/v1/responses", {"input": "hi"}, True),
    ("/v1/messages", {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}, False),
    ("/v1/messages", {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}, True),
]


@pytest.mark.parametrize(
    ("path", "body", "stream"),
    _OVERLOADED_CASES,
    ids=[
        f"{path.rsplit('/', 1)[1]}-{'stream' if s else 'sync'}" for path, _, s in _OVERLOADED_CASES
    ],
)
def test_an_upstream_429_reaches_the_client_with_its_status_and_headers(
    fixed: Running, path: str, body: dict[str, Any], stream: bool
) -> None:
    key = create_key(fixed.gateway_url, models=())
    request = {**body, "model": OVERLOADED_MODEL, "stream": stream}

    with (
        httpx.Client(timeout=TIMEOUT) as client,
        client.stream(
            "POST",
            fixed.gateway_url + path,
            headers={"authorization": f"Bearer {key}"},
            json=request,
        ) as response,
    ):
        head = dict(response.headers)
        content = response.read()

    assert response.status_code == 429
    assert {name: head[name] for name in OVERLOADED_HEADERS} == OVERLOADED_HEADERS
    assert ratelimit_headers(response.headers) == _headers(5999, 99999)
    assert head["content-type"] == JSON
    error = json.loads(content)
    if path == "/v1/messages":
        assert error["type"] == "error"
        assert error["error"]["type"] == "rate_limit_error"
    else:
        assert error["error"]["code"] == "rate_limit_exceeded"


def test_an_unreachable_upstream_gives_502_with_the_headers_not_200() -> None:
    # A port that was free a moment ago: connecting to it is refused.
    with serve(create_upstream_app()) as gone:
        pass
    with running(fix=True, upstream_url=gone) as servers:
        key = create_key(servers.gateway_url)
        stream = _post(servers.gateway_url + PROBES[1].path, key, PROBES[1].body)
        sync = _post(servers.gateway_url + PROBES[0].path, key, PROBES[0].body)

    assert (stream.status_code, sync.status_code) == (502, 502)
    assert ratelimit_headers(stream.headers) == _headers(5999, 99999)
    assert stream.json()["error"]["type"] == "upstream_error"
    assert sync.json()["error"]["type"] == "upstream_error"


def test_the_gateway_passes_each_chunk_on_before_the_upstream_sent_the_next() -> None:
    release = threading.Event()

    async def held_back() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        # Bounded: the test releases it at once; a failing test does not hang here.
        await anyio.to_thread.run_sync(release.wait, 10)
        yield b"data: [DONE]\n\n"

    async def chat(request: Request) -> StreamingResponse:
        return StreamingResponse(held_back(), media_type="text/event-stream")

    upstream = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    probe = PROBES[1]
    with (
        serve(upstream) as upstream_url,
        running(upstream_url=upstream_url) as servers,
        httpx.Client(timeout=TIMEOUT) as client,
    ):
        key = create_key(servers.gateway_url)
        with client.stream(
            "POST",
            servers.gateway_url + probe.path,
            headers={"authorization": f"Bearer {key}"},
            json=probe.body,
        ) as response:
            chunks = response.iter_raw()
            first = b""
            while len(first) < len(b"data: one\n\n"):  # in case TCP splits it
                first += next(chunks)
            upstream_done_before_first = release.is_set()
            release.set()
            rest = b"".join(chunks)

    assert ratelimit_headers(response.headers) == _headers(5999, 99999)
    assert (first, upstream_done_before_first) == (b"data: one\n\n", False)
    assert rest == b"data: [DONE]\n\n"


def test_a_client_that_leaves_mid_stream_closes_the_upstream_stream() -> None:
    upstream_closed = threading.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            for _ in range(2000):  # 20 s at most
                yield b"data: {}\n\n"
                await anyio.sleep(0.01)
        finally:
            upstream_closed.set()

    async def chat(request: Request) -> HeaderFirstStreamingResponse:
        # The library's response closes its iterator as soon as the gateway hangs up.
        return HeaderFirstStreamingResponse(endless(), media_type="text/event-stream")

    upstream = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    probe = PROBES[1]
    with (
        serve(upstream) as upstream_url,
        running(upstream_url=upstream_url) as servers,
        httpx.Client(timeout=TIMEOUT) as client,
    ):
        key = create_key(servers.gateway_url)
        with client.stream(
            "POST",
            servers.gateway_url + probe.path,
            headers={"authorization": f"Bearer {key}"},
            json=probe.body,
        ) as response:
            first = next(response.iter_raw())
        # Leaving the block closed the connection with the body unread.
        closed_in_time = upstream_closed.wait(10)

    assert first.startswith(b"data: {}")
    assert closed_in_time


# -- keys and requests the gateway refuses -------------------------------------------------


@pytest.mark.parametrize(
    ("path", "auth", "body", "status", "message"),
    [
        ("/key/generate", "sk-wrong", {}, 401, "master key"),
        ("/key/generate", MASTER_KEY, {"rpm_limit": 0}, 400, "'rpm_limit' must be a positive"),
        ("/key/generate", MASTER_KEY, {"models": "test-chat"}, 400, "'models' must be a list"),
        ("/v1/chat/completions", "sk-unknown", {"model": "test-chat"}, 401, "invalid or missing"),
        ("/v1/chat/completions", MASTER_KEY, {"model": "gpt-x"}, 400, "unknown model 'gpt-x'"),
    ],
)
def test_the_gateway_refuses_bad_keys_and_bodies_with_a_reason(
    fixed: Running, path: str, auth: str, body: dict[str, Any], status: int, message: str
) -> None:
    response = _post(fixed.gateway_url + path, auth, body)

    assert response.status_code == status
    assert message in response.json()["error"]["message"]


def test_a_key_may_only_use_its_models(fixed: Running) -> None:
    key = create_key(fixed.gateway_url, models=["test-embedding"])

    response = _post(fixed.gateway_url + "/v1/chat/completions", key, PROBES[0].body)

    assert response.status_code == 401
    assert ratelimit_headers(response.headers) == {}
    assert response.json()["error"]["message"] == "this key may not use model 'test-chat'"


def test_the_master_key_is_not_rate_limited(fixed: Running) -> None:
    response = _post(fixed.gateway_url + "/v1/chat/completions", MASTER_KEY, PROBES[0].body)

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == REPLY
    assert ratelimit_headers(response.headers) == {}


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
