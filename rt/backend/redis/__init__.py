"""The Redis (or Valkey) backend: `rt serve --redis URL` runs any number of nodes as one server.

Everything a node shares lives in one Redis dataset (rt/backend/redis/keys.py):
the log (`RedisLog`), the directory (`RedisDirectory`), tickets, presence,
claims, rate limits and the ephemeral bus. Each node keeps its own
`MemoryHub` and feed: it follows the one log in id order and fans it out to
its own connections (docs/architecture.md section 5). `open_redis_backend`
checks the server's persistence against `--sync` first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from rt.backend import Backend
from rt.backend.contracts import RateLimit
from rt.backend.redis.claims import RedisClaims
from rt.backend.redis.connection import check_persistence, open_client
from rt.backend.redis.directory import RedisDirectory
from rt.backend.redis.keys import Keys
from rt.backend.redis.log import RedisLog
from rt.backend.redis.node import Node
from rt.backend.redis.presence import RedisPresence
from rt.backend.redis.state import RedisBus, RedisRateLimit, RedisTickets
from rt.config import Config
from rt.hub.contracts import Hub


@dataclass
class RedisBackend(Backend):
    client: Any = None
    keys: Keys | None = None
    node: Node | None = None

    def rate_limit(self, name: str, rate: float, burst: float) -> RateLimit:
        assert self.keys is not None
        return RedisRateLimit(self.client, self.keys, name, rate, burst)

    async def run(self) -> None:
        assert self.node is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.node.run)
            await super().run()


@asynccontextmanager
async def open_redis_backend(config: Config, hub: Hub) -> AsyncIterator[RedisBackend]:
    assert config.redis is not None
    async with open_client(config.redis) as client:
        await check_persistence(client, config.sync)
        keys = Keys(config.redis_prefix)
        node = Node(client, keys)
        await node.start()
        directory = RedisDirectory(client, keys)
        await directory.open()
        log = RedisLog(client, keys, directory)
        await log.open()
        presence = RedisPresence(client, keys, node, config.presence_grace, hub.publish_ephemeral)
        await presence.load()
        yield RedisBackend(
            log=log,
            directory=directory,
            tickets=RedisTickets(client, keys, config.ticket_ttl),
            presence=presence,
            claims=RedisClaims(client, keys, node, config.write_timeout, config.max_streams),
            bus=RedisBus(client, keys, hub, node.id),
            client=client,
            keys=keys,
            node=node,
        )


@asynccontextmanager
async def open_redis_directory(url: str, prefix: str = "rt") -> AsyncIterator[RedisDirectory]:
    """The directory alone (the `rt user` and `rt flow` commands with `--redis`)."""
    async with open_client(url) as client:
        directory = RedisDirectory(client, Keys(prefix))
        await directory.open()
        yield directory


__all__ = ["RedisBackend", "open_redis_backend", "open_redis_directory"]
