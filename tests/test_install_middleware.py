"""`install_middleware`: before start-up, after the stack was built, twice, with lifespan.

Tier 1 (direct ASGI calls, asyncio and trio) for where the middleware lands; tier 3 (real
servers) for an app that is already serving requests when the middleware is installed, as
LiteLLM callbacks loaded from its config.yaml are. Pinned against Starlette 1.10, whose
``middleware_stack`` attribute `install_middleware` relies on.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
import starlette
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from header_first_stream import HeaderFirstMiddleware, add_late_headers, install_middleware

from ._asgi import Recorder, call
from ._servers import serve

WAIT = 5.0


def test_the_starlette_version_the_late_install_was_checked_against() -> None:
    # _install.py relies on `Starlette.middleware_stack` (None until the first call, then
    # the built stack, called for every scope): re-check it before changing this pin.
    assert starlette.__version__ == "1.10.0"


async def endpoint(request: Request) -> Response:
    add_late_headers({"x-rate": 41})
    return JSONResponse({"ok": True})


def starlette_app(**kwargs: Any) -> Starlette:
    return Starlette(routes=[Route("/", endpoint)], **kwargs)


def fastapi_app(**kwargs: Any) -> FastAPI:
    app = FastAPI(**kwargs)
    app.add_api_route("/", endpoint)
    return app


APPS = pytest.mark.parametrize(
    "make_app", [starlette_app, fastapi_app], ids=["starlette", "fastapi"]
)

JSON_HEAD = [(b"content-length", b"11"), (b"content-type", b"application/json")]


def instances_in_stack(app: Starlette) -> int:
    count, layer = 0, app.middleware_stack
    while layer is not None:
        count += isinstance(layer, HeaderFirstMiddleware)
        layer = getattr(layer, "app", None)
    return count


class CountingResolver:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope) -> dict[str, int]:
        self.calls += 1
        return {"x-resolver-calls": self.calls}


# --- before start-up -------------------------------------------------------------------


@APPS
@pytest.mark.anyio
async def test_before_start_up_it_is_add_middleware_and_a_second_call_does_nothing(
    make_app: Any,
) -> None:
    app = make_app()
    resolver = CountingResolver()
    assert install_middleware(app, resolver=resolver) is True
    assert install_middleware(app, resolver=resolver) is False
    assert [m.cls for m in app.user_middleware] == [HeaderFirstMiddleware]
    assert app.middleware_stack is None  # nothing built yet: add_middleware's way
    first = await call(app)
    second = await call(app)
    assert first.headers == [*JSON_HEAD, (b"x-rate", b"41"), (b"x-resolver-calls", b"1")]
    assert second.headers == [*JSON_HEAD, (b"x-rate", b"41"), (b"x-resolver-calls", b"2")]
    assert instances_in_stack(app) == 1


@pytest.mark.anyio
async def test_an_app_given_the_middleware_in_its_constructor_is_not_given_it_twice() -> None:
    app = starlette_app(middleware=[Middleware(HeaderFirstMiddleware)])
    assert install_middleware(app) is False
    await call(app)  # builds the stack
    assert install_middleware(app) is False
    assert instances_in_stack(app) == 1


def test_before_start_up_it_goes_outside_the_apps_own_middleware_as_add_middleware_does() -> None:
    app = starlette_app(middleware=[Middleware(GZipMiddleware)])
    assert install_middleware(app) is True
    classes: list[object] = [m.cls for m in app.user_middleware]
    assert classes == [HeaderFirstMiddleware, GZipMiddleware]


# --- after the stack was built --------------------------------------------------------


@APPS
@pytest.mark.anyio
async def test_after_the_stack_was_built_it_wraps_it_once(make_app: Any) -> None:
    app = make_app()
    before = await call(app)  # the first call builds the stack
    assert before.headers == JSON_HEAD
    with pytest.raises(
        RuntimeError, match="Cannot add middleware after an application has started"
    ):
        app.add_middleware(HeaderFirstMiddleware)
    resolver = CountingResolver()
    assert install_middleware(app, resolver=resolver) is True
    assert install_middleware(app, resolver=resolver) is False
    assert isinstance(app.middleware_stack, HeaderFirstMiddleware)
    assert instances_in_stack(app) == 1
    after = await call(app)
    assert after.headers == [*JSON_HEAD, (b"x-rate", b"41"), (b"x-resolver-calls", b"1")]
    assert after.body == b'{"ok":true}'


@pytest.mark.anyio
async def test_a_request_in_flight_during_a_late_install_finishes_without_it() -> None:
    entered, release = anyio.Event(), anyio.Event()
    added: list[bool] = []

    async def slow(request: Request) -> Response:
        entered.set()
        await release.wait()
        added.append(add_late_headers({"x-rate": 1}))
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/", slow)])
    in_flight = Recorder()
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as group:
            group.start_soon(call, app, None, None, in_flight)
            await entered.wait()
            assert install_middleware(app) is True
            release.set()
        after = await call(app)
    assert added == [False, True]
    assert in_flight.headers == JSON_HEAD
    assert after.headers == [*JSON_HEAD, (b"x-rate", b"1")]


@pytest.mark.anyio
async def test_a_stack_rebuilt_after_a_late_install_has_the_middleware_once() -> None:
    app = starlette_app()
    await call(app)
    assert install_middleware(app) is True
    app.middleware_stack = None  # as some test fixtures do
    recorder = await call(app)
    assert recorder.headers == [*JSON_HEAD, (b"x-rate", b"41")]
    assert instances_in_stack(app) == 1
    assert not isinstance(app.middleware_stack, HeaderFirstMiddleware)  # add_middleware's place


@pytest.mark.anyio
async def test_installed_late_it_is_outside_the_error_middleware_so_a_500_has_late_headers() -> (
    None
):
    async def broken(request: Request) -> Response:
        add_late_headers({"x-request-id": "r-1"})
        raise RuntimeError("endpoint broke")

    app = Starlette(routes=[Route("/", broken)])
    with pytest.raises(RuntimeError, match="endpoint broke"):
        await call(app)
    install_middleware(app)
    recorder = Recorder()
    with pytest.raises(RuntimeError, match="endpoint broke"):
        await call(app, send=recorder)
    assert recorder.status == 500
    assert recorder.headers == [
        (b"content-length", b"21"),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"x-request-id", b"r-1"),
    ]
    assert recorder.body == b"Internal Server Error"


# --- what it refuses ----------------------------------------------------------------------


def test_options_are_checked_at_once_not_at_the_first_request() -> None:
    app = starlette_app()
    with pytest.raises(ValueError, match="resolver_timeout must be a positive number"):
        install_middleware(app, resolver_timeout=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'timeout'"):
        install_middleware(app, timeout=1)
    assert app.user_middleware == []


def test_an_app_that_is_not_starlette_is_refused_with_the_fix() -> None:
    async def bare(scope: Scope, receive: Any, send: Any) -> None:
        pass  # pragma: no cover

    with pytest.raises(TypeError) as info:
        install_middleware(bare)  # type: ignore[arg-type]
    assert str(info.value) == (
        "install_middleware() needs a Starlette or FastAPI app, got function; "
        "wrap any other ASGI app directly: app = HeaderFirstMiddleware(app)"
    )


def test_a_stack_whose_layers_loop_is_walked_a_bounded_number_of_times() -> None:
    class Loop:
        def __init__(self) -> None:
            self.app = self

    app = starlette_app()
    loop = Loop()
    app.middleware_stack = loop  # type: ignore[assignment]
    assert install_middleware(app) is True
    wrapper = app.middleware_stack
    assert isinstance(wrapper, HeaderFirstMiddleware)
    assert wrapper.app is loop  # type: ignore[comparison-overlap]


# --- on a real server -------------------------------------------------------------------


def get(url: str) -> httpx.Response:
    with httpx.Client(timeout=WAIT) as client:
        return client.get(url + "/")


@pytest.mark.parametrize("server", ["uvicorn-h11", "hypercorn-trio"])
def test_installed_into_an_app_already_serving_requests(server: str) -> None:
    app = starlette_app()
    with serve(app, server) as url:
        before = get(url)
        assert app.middleware_stack is not None  # built by the first request
        assert install_middleware(app) is True
        after = get(url)
        assert install_middleware(app) is False
        again = get(url)
    assert before.status_code == after.status_code == again.status_code == 200
    assert "x-rate" not in before.headers
    assert after.headers["x-rate"] == "41"
    assert again.headers.get_list("x-rate") == ["41"]
    assert after.content == b'{"ok":true}'


@pytest.mark.parametrize("server", ["uvicorn-h11", "hypercorn-trio"])
def test_installed_from_a_lifespan_start_up_as_config_loaded_callbacks_are(server: str) -> None:
    installed: list[bool] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The stack was built for this very lifespan call: add_middleware would raise here.
        installed.append(install_middleware(app))
        installed.append(install_middleware(app))
        yield

    app = fastapi_app(lifespan=lifespan)
    config = {"lifespan": "on"} if server.startswith("uvicorn") else {}
    with serve(app, server, **config) as url:
        response = get(url)
    assert installed == [True, False]
    assert response.status_code == 200
    assert response.headers.get_list("x-rate") == ["41"]
    assert response.json() == {"ok": True}
