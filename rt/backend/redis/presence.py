"""`RedisPresence`: who follows which flow, on any node, announced once per user and flow.

Each node counts its own claimants per (flow, user), as `LocalPresence`
does, and keeps a view of the whole cluster: for each (flow, user), the
nodes where the user is present. A node tells the others when its own
count for a (flow, user) becomes 1 or 0 (the control channel), and writes
it to `P:presence:<node>`, so a node that starts later loads the view.

Every node announces to its *own* hub what the view says, the same way:
`online` when a (flow, user) goes from no node to some node (unless it was
only within its grace), `offline` `grace` seconds after it went to no node.
So each follower, on whichever node, hears each change once, and a
reconnect to another node does not flap. A node whose lease expired is
taken out of the view as if all its users had left (offline after grace);
`leave_now` (access revoked) is immediate everywhere. `snapshot` answers
from the view at once, as `ready` needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import trio

from rt.backend.redis.keys import SEP, Keys
from rt.backend.redis.node import Node
from rt.core.events import Event, presence_event


class RedisPresence:
    def __init__(
        self, client: Any, keys: Keys, node: Node, grace: float, publish: Callable[[Event], None]
    ) -> None:
        self.client = client
        self.keys = keys
        self.node = node
        self.grace = grace
        self._publish = publish  # this node's hub only
        self._counts: dict[tuple[str, str], int] = {}
        self._where: dict[tuple[str, str], set[str]] = {}
        self._offline_at: dict[tuple[str, str], float] = {}
        self._changed = trio.Event()
        node.on_control.append(self._on_control)
        node.on_dead.append(self._on_dead)

    async def load(self) -> None:
        """The cluster's presence as the live nodes wrote it (no announcement)."""
        for other in self.node.alive - {self.node.id}:
            fields = await self.client.hkeys(self.keys.presence(other))
            for field in fields:
                text = field.decode() if isinstance(field, bytes) else field
                flow, _, user = text.partition(SEP)
                self._where.setdefault((flow, user), set()).add(other)

    # -- this node's claimants ----------------------------------------------------------

    def join(self, user: str, flows: Iterable[str]) -> None:
        for flow in flows:
            key = (flow, user)
            count = self._counts.get(key, 0) + 1
            self._counts[key] = count
            if count == 1:
                self._arrived(key, self.node.id)
                self.node.later(self._write, "join", flow, user)

    def leave(self, user: str, flows: Iterable[str]) -> None:
        for flow in flows:
            key = (flow, user)
            count = self._counts.get(key, 0) - 1
            if count > 0:
                self._counts[key] = count
                continue
            self._counts.pop(key, None)
            self._went(key, self.node.id)
            self.node.later(self._write, "leave", flow, user)

    def leave_now(self, user: str, flows: Iterable[str]) -> None:
        for flow in flows:
            key = (flow, user)
            self._counts.pop(key, None)
            self._gone_now(key)
            self.node.later(self._write, "leave_now", flow, user)

    async def _write(self, kind: str, flow: str, user: str) -> None:
        field = flow + SEP + user
        if kind == "join":
            await self.client.hset(self.keys.presence(self.node.id), {field: b"1"})
        else:
            await self.client.hdel(self.keys.presence(self.node.id), [field])
        await self.node.tell(kind, flow=flow, user=user)

    # -- the cluster's view ------------------------------------------------------------

    def _arrived(self, key: tuple[str, str], node: str) -> None:
        nodes = self._where.setdefault(key, set())
        was_present = bool(nodes) or self._offline_at.pop(key, None) is not None
        nodes.add(node)
        if not was_present:
            self._publish(presence_event(key[0], key[1], "online"))

    def _went(self, key: tuple[str, str], node: str) -> None:
        nodes = self._where.get(key)
        if nodes is None or node not in nodes:
            return
        nodes.discard(node)
        if not nodes:
            del self._where[key]
            self._offline_at[key] = trio.current_time() + self.grace
            self._changed.set()

    def _gone_now(self, key: tuple[str, str]) -> None:
        present = self._where.pop(key, None) or self._offline_at.pop(key, None) is not None
        if present:
            self._publish(presence_event(key[0], key[1], "offline"))

    def _on_control(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind not in ("join", "leave", "leave_now"):
            return
        key = (message["flow"], message["user"])
        if kind == "join":
            self._arrived(key, message["n"])
        elif kind == "leave":
            self._went(key, message["n"])
        else:
            self._counts.pop(key, None)
            self._gone_now(key)

    def _on_dead(self, node: str) -> None:
        for key in [k for k, nodes in self._where.items() if node in nodes]:
            self._went(key, node)
        self.node.later(self.client.delete, [self.keys.presence(node)])

    # -- reads and the clock -----------------------------------------------------------

    def online(self, flow: str) -> list[str]:
        users = {u for (f, u) in self._where if f == flow}
        users.update(u for (f, u) in self._offline_at if f == flow)
        return sorted(users)

    def snapshot(self, flows: Iterable[str]) -> dict[str, list[str]]:
        return {flow: self.online(flow) for flow in flows}

    async def run(self) -> None:
        while True:
            now = trio.current_time()
            due = [key for key, at in self._offline_at.items() if at <= now]
            for key in due:
                del self._offline_at[key]
                self._publish(presence_event(key[0], key[1], "offline"))
            next_at = min(self._offline_at.values(), default=math.inf)
            self._changed = trio.Event()
            with trio.move_on_at(next_at):
                await self._changed.wait()
