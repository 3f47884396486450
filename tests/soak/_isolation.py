"""Cross-request isolation of late headers under concurrency, on a real server.

FastAPI behind `HeaderFirstMiddleware` (with a resolver that reads the current store):
async and sync endpoints, async and sync dependencies, a child task, a header added from
inside Starlette's stream while the head is held, and `HeaderFirstStreamingResponse`'s own
resolver. Every response must carry exactly its own id in each id header, once.
"""

from __future__ import annotations

import random

import anyio
import httpx

from .._servers import send_all_at_once
from ._wire import Server

KINDS = ("async", "sync", "stream", "hfs")
ID_HEADERS = ("x-request-id", "x-dep", "x-child", "x-resolver-saw")
CLIENTS = 8
CONNECTIONS_PER_CLIENT = 16


def run(server: Server, requests: int, seed: int) -> tuple[dict[str, object], list[str]]:
    rng = random.Random(seed)
    paths = [f"/iso/{rng.choice(KINDS)}/id-{index}" for index in range(requests)]
    mismatches: list[str] = []
    errors: list[str] = []
    checked: list[int] = []

    async def one(client: httpx.AsyncClient, index: int) -> None:
        own = f"id-{index}".encode()
        try:
            response = await client.get(paths[index])
        except httpx.HTTPError as exc:
            errors.append(f"{paths[index]}: {exc!r}")
            return
        for name in ID_HEADERS:
            values = [value for key, value in response.headers.raw if key == name.encode()]
            if values != [own]:
                mismatches.append(f"{paths[index]}: {name} = {values!r}")
        if response.status_code != 200 or response.content != b'{"id":"' + own + b'"}':
            mismatches.append(f"{paths[index]}: {response.status_code} {response.content!r}")
        checked.append(index)

    async def main() -> float:
        limits = httpx.Limits(max_connections=CONNECTIONS_PER_CLIENT)
        return await send_all_at_once(
            server.url,
            one,
            requests,
            clients=CLIENTS,
            limits=limits,
            client_timeout=30.0,
            within=300,
        )

    seconds = anyio.run(main)
    failures = [*mismatches[:20], *errors[:20]]
    if len(checked) + len(errors) != requests:
        failures.append(f"{requests} requests, {len(checked)} checked, {len(errors)} errors")
    report = {
        "requests": requests,
        "concurrent connections": CLIENTS * CONNECTIONS_PER_CLIENT,
        "kinds": {kind: sum(f"/{kind}/" in path for path in paths) for kind in KINDS},
        "mismatches": len(mismatches),
        "errors": len(errors),
        "seconds": round(seconds, 1),
    }
    return report, failures
