"""`Node`: this rt process as one node of a cluster: its id, its liveness, the control channel.

- **Liveness**: the node renews `P:node:<id>` (expiring after `LEASE`) every
  second; a node whose key expired is dead, and every other node forgets
  its presence and its claims (`on_dead`).
- **Control**: one pub/sub channel carries what nodes tell each other
  (presence changes, claims, releases, evictions) as JSON objects with
  `n` (the sender) and `t` (the kind); `on_control` handlers get every
  message from another node.
- **Work queue**: `later(coro_fn, *args)` runs Redis writes a synchronous
  caller cannot wait for (presence changes, releases) in order, in the
  node's own task; `spawn` runs a longer wait in a task of its own.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio

from rt.backend.redis.keys import Keys
from rt.backend.redis.state import subscribe

log = logging.getLogger("rt.redis")

LEASE_MS = 3000
RENEW_EVERY = 1.0


class Node:
    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.id = secrets.token_hex(4)
        self.on_control: list[Callable[[dict[str, Any]], None]] = []
        self.on_dead: list[Callable[[str], None]] = []
        self.alive: set[str] = set()
        self._send, self._receive = trio.open_memory_channel[Any](100_000)
        self._nursery: trio.Nursery | None = None

    def later(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `await fn(*args)` soon, in order, in the node's task (never blocks)."""
        try:
            self._send.send_nowait((fn, args))
        except trio.WouldBlock:
            log.error("rt: the node's Redis work queue is full; a write was dropped")

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `fn(*args)` in a task of the node's own (for waits that must not hold
        up the work queue)."""
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    async def tell(self, kind: str, **fields: Any) -> None:
        await self.client.publish(
            self.keys.control, orjson.dumps({"n": self.id, "t": kind, **fields})
        )

    async def start(self) -> None:
        await self._renew()
        self.alive = await self.live_nodes()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._work)
            nursery.start_soon(self._lease)
            nursery.start_soon(subscribe, self.client, self.keys.control, self._control)

    async def _work(self) -> None:
        async for fn, args in self._receive:
            for attempt in range(50):
                try:
                    await fn(*args)
                    break
                except Exception as error:  # Redis away: try again, in order
                    if attempt == 0:
                        log.warning("rt: a Redis write failed (%s); retrying", error)
                    await trio.sleep(0.2)

    async def _renew(self) -> None:
        await self.client.set(self.keys.node(self.id), b"1", px=LEASE_MS)

    async def is_alive(self, node: str) -> bool:
        """Whether `node` holds its lease: from the set renewed every second, or, for a
        node not in it (one that started within the last second), from Redis."""
        if node in self.alive:
            return True
        if await self.client.exists([self.keys.node(node)]):
            self.alive.add(node)
            return True
        return False

    async def live_nodes(self) -> set[str]:
        found: set[str] = set()
        cursor = 0
        pattern = self.keys.node("*")
        while True:
            cursor, names = await self.client.scan(cursor, match=pattern, count=1000)
            for name in names:
                text = name.decode() if isinstance(name, bytes) else name
                found.add(text.rsplit(":", 1)[1])
            if not cursor:
                return found

    async def _lease(self) -> None:
        while True:
            await trio.sleep(RENEW_EVERY)
            try:
                await self._renew()
                now = await self.live_nodes()
            except Exception as error:
                log.warning("rt: renewing this node's lease in Redis failed: %s", error)
                continue
            for dead in self.alive - now - {self.id}:
                log.info("rt: node %s is gone (its lease expired)", dead)
                for handler in self.on_dead:
                    handler(dead)
            self.alive = now

    def _control(self, data: bytes) -> None:
        message = orjson.loads(data)
        if message.get("n") == self.id:
            return
        self.alive.add(message["n"])
        for handler in self.on_control:
            handler(message)
