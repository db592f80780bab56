"""`World`: a served rt with users alice and bob, shared by the stream and matrix tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from rt.core.ops import post_op
from rt.web.server import Server
from tests.clients import TLS
from tests.helpers import Api, new_flow, serve_rt, uuid, wait_for


def http_client(server: Server, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers=headers, timeout=10, verify=TLS)


class FastApi(Api):
    """`Api` with the shared TLS context (tests/clients.py `TLS`: made once, it is slow)."""

    def __init__(self, server: Server, token: str | None = None) -> None:
        self.server = server
        self.token = token
        self.http = http_client(server, {"Authorization": f"Bearer {token}"} if token else {})


@dataclass
class World:
    server: Server
    alice: FastApi
    bob: FastApi

    @property
    def service(self) -> Any:
        return self.server.service

    def counts(self) -> tuple[int, int]:
        """(claimants, hub subscribers): both 0 with no stream open."""
        return len(self.service.claims), self.service.hub.count()

    async def wait_counts(self, expected: tuple[int, int], deadline: float = 3.0) -> None:
        with trio.fail_after(deadline):
            await wait_for(lambda: self.counts() == expected)

    def sample(self, name: str, transport: str) -> float:
        value = self.service.metrics.registry.get_sample_value(name, {"transport": transport})
        return value or 0.0

    async def post(
        self, api: Api, flow: str = "general", content: str | None = None, uid: str | None = None
    ) -> dict[str, Any]:
        r = await api.post(flow, content or f"m-{uuid()}", uid)
        assert r.status_code == 201, r.text
        return r.json()

    async def one_by_one(self, user: str, count: int, content: str) -> list[int]:
        """`count` posts, each stored (and published) before the next: each is its own
        writer batch, so an idle stream gets each as its own direct write."""
        ids = []
        for _ in range(count):
            result = await self.service.apply(
                post_op(user, "general", {"content": content, "uuid": uuid()})
            )
            ids.append(result.body["id"])
        return ids

    async def burst(
        self, user: str, count: int, flow: str = "general", content: str | None = None
    ) -> list[int]:
        """`count` posts queued in one scheduler batch, so the writer stores them in one batch."""
        ids: list[int] = []

        async def one(i: int) -> None:
            result = await self.service.apply(
                post_op(user, flow, {"content": content or f"burst {i}", "uuid": uuid()})
            )
            ids.append(result.body["id"])

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
        return sorted(ids)


@asynccontextmanager
async def world(*, secret: bool = False, **overrides: Any) -> AsyncIterator[World]:
    """A server with open flows `general` and `other` (and, with `secret`, a private
    `secret` of bob's), and users alice and bob."""
    async with serve_rt(**overrides) as server:
        directory = server.service.directory
        alice = FastApi(server, await directory.create_user("alice"))
        bob = FastApi(server, await directory.create_user("bob"))
        await new_flow(server, "general")
        await new_flow(server, "other")
        if secret:
            await new_flow(server, "secret", private=True, owner="bob", members=("bob",))
        try:
            yield World(server, alice, bob)
        finally:
            await alice.aclose()
            await bob.aclose()
