"""`RedisClaims`: one live stream per (user, client id) in the whole cluster.

Each node keeps `LocalClaims` for its own claimants (the takeover there is
as on a single node). Across nodes (docs/architecture.md section 5):

1. A new claimant takes the next generation (`P:gen`) and swaps itself into
   `P:claim:<user NUL client>` (SET ... GET), learning the previous holder.
2. If the previous holder is a live claimant on another node, it is told on
   the control channel (`claim`); that node ends it at once (detached from
   its hub: it delivers nothing more) and answers `released` once it has
   finished. The new claimant waits for that, or `write_timeout`, whichever
   comes first, then checks that the key still names it (a third claimant
   may have won meanwhile).
3. `P:streams:<user>` counts the user's claimants on every node; past
   `max_streams` the oldest are told to end with `evicted`.

A polling session whose next poll lands on another node moves there: the
claim carries its flows and transport, the old node answers its pending
poll `[]` (as for a newer poll on one node) instead of `superseded`, and
its `released` carries the session's `handover()` (what the client has not
been told yet), which the new claimant gets by `take_handover` before
`claim` returns; the new node then continues from the poll's cursor with no
new `ready` (rt/service/polling.py).
A dead node's claims are forgotten when its lease expires.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import trio

from rt.backend.claims import LocalClaims
from rt.backend.redis.connection import reaching
from rt.backend.redis.keys import SEP, Keys
from rt.backend.redis.node import Node

# Deletes the claim key only if it still names the releasing claimant.
RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""


class RedisClaims:
    def __init__(
        self, client: Any, keys: Keys, node: Node, write_timeout: float, max_streams: int
    ) -> None:
        self.client = client
        self.keys = keys
        self.node = node
        self.write_timeout = write_timeout
        self.max_streams = max_streams
        # This node's claimants; eviction is counted cluster-wide, here.
        self.local = LocalClaims(write_timeout, max_streams=1 << 30)
        self._claims: dict[int, tuple[bytes, str]] = {}  # id(session) -> (value, member)
        self._released: dict[tuple[str, str, str], trio.Event] = {}
        self._handovers: dict[tuple[str, str, str], Any] = {}
        self._release = client.register_script(RELEASE)
        node.on_control.append(self._on_control)
        node.on_dead.append(self._on_dead)

    # -- the contract --------------------------------------------------------------------

    @property
    def on_takeover(self) -> Any:
        return self.local.on_takeover

    @on_takeover.setter
    def on_takeover(self, hook: Any) -> None:
        self.local.on_takeover = hook

    def __len__(self) -> int:
        return len(self.local)

    def claimants(self) -> list[Any]:
        return self.local.claimants()

    def holder(self, key: tuple[str, str]) -> Any | None:
        return self.local.holder(key)

    async def claim(self, session: Any) -> bool:
        if not await self.local.claim(session):
            return False
        return await self._claim_cluster(session)

    @reaching("claiming the stream")
    async def _claim_cluster(self, session: Any) -> bool:
        user, client = session.key
        gen = await self.client.incr(self.keys.gen)
        value = orjson.dumps(
            {
                "node": self.node.id,
                "gen": gen,
                "kind": "poll" if getattr(session, "is_polling", False) else "stream",
                "flows": list(session.flows),
                "transport": session.transport,
            }
        )
        member = f"{self.node.id}{SEP}{gen}{SEP}{client}"
        async with self.client.pipeline(transaction=True) as pipe:
            previous_req = pipe.set(self.keys.claim(user, client), value, get=True)
            pipe.zadd(self.keys.streams(user), {member: time.time()})
        self._claims[id(session)] = (value, member)
        previous = await previous_req
        if previous:
            held = orjson.loads(previous)
            if held["node"] != self.node.id and await self.node.is_alive(held["node"]):
                done = self._released.setdefault((user, client, str(held["gen"])), trio.Event())
                await self.node.tell(
                    "claim",
                    to=held["node"],  # every node hears it; only the holder answers
                    user=user,
                    client=client,
                    gen=held["gen"],
                    move=bool(getattr(session, "is_polling", False)),
                )
                with trio.move_on_after(self.write_timeout):
                    await done.wait()
                self._released.pop((user, client, str(held["gen"])), None)
                handover = self._handovers.pop((user, client, str(held["gen"])), None)
                if (take := getattr(session, "take_handover", None)) is not None:
                    take(handover)
        if await self.client.get(self.keys.claim(user, client)) != value:
            return False  # a newer claimant, on some node, won meanwhile
        await self._evict_past_limit(user)
        return True

    def release(self, session: Any) -> None:
        self.local.release(session)
        claim = self._claims.pop(id(session), None)
        if claim is not None:
            value, member = claim
            user, client = session.key
            self.node.later(
                self._release,
                [self.keys.claim(user, client), self.keys.streams(user)],
                [value, member],
            )

    @reaching("looking up a stream's claim")
    async def elsewhere(self, key: tuple[str, str]) -> dict[str, Any] | None:
        """The claim of (user, client) if a live claimant on another node holds it."""
        raw = await self.client.get(self.keys.claim(*key))
        if not raw:
            return None
        held = orjson.loads(raw)
        if held["node"] == self.node.id or not await self.node.is_alive(held["node"]):
            return None
        return held

    # -- eviction ------------------------------------------------------------------------

    async def _evict_past_limit(self, user: str) -> None:
        members = await self.client.zrange(self.keys.streams(user), 0, -1)
        excess = len(members) - self.max_streams
        for raw in members[: max(0, excess)]:
            node, gen, client = (raw.decode() if isinstance(raw, bytes) else raw).split(SEP)
            if node == self.node.id:
                self._evict_local(user, client, int(gen))
            else:
                await self.node.tell("evict", user=user, client=client, gen=int(gen))

    def _evict_local(self, user: str, client: str, gen: int) -> None:
        session = self.local.holder((user, client))
        if session is not None and self._gen_of(session) == gen:
            session.end("evicted")

    def _gen_of(self, session: Any) -> int | None:
        claim = self._claims.get(id(session))
        return orjson.loads(claim[0])["gen"] if claim else None

    # -- other nodes ---------------------------------------------------------------------

    def _on_control(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "claim":
            if message.get("to") != self.node.id:
                return
            key = (message["user"], message["client"])
            session = self.local.holder(key)
            if session is None or self._gen_of(session) != message["gen"]:
                # Not (or no longer) ours: say so at once, nobody need wait.
                self.node.later(self._tell_released, key, message["gen"])
                return
            session.end(
                "moved"
                if message.get("move") and getattr(session, "is_polling", False)
                else "superseded"
            )
            self.node.spawn(self._tell_released_when_done, session, key, message["gen"])
        elif kind == "released":
            key3 = (message["user"], message["client"], str(message["gen"]))
            done = self._released.get(key3)
            if done is not None:
                if message.get("handover") is not None:
                    self._handovers[key3] = message["handover"]
                done.set()
        elif kind == "evict":
            self._evict_local(message["user"], message["client"], message["gen"])

    async def _tell_released(self, key: tuple[str, str], gen: int) -> None:
        await self.node.tell("released", user=key[0], client=key[1], gen=gen)

    async def _tell_released_when_done(self, session: Any, key: tuple[str, str], gen: int) -> None:
        with trio.move_on_after(self.write_timeout):
            await session.done.wait()
        give = getattr(session, "handover", None)
        moved = session.ended is not None and session.ended.reason == "moved"
        handover = give() if give is not None and moved else None
        await self.node.tell("released", user=key[0], client=key[1], gen=gen, handover=handover)

    def _on_dead(self, node: str) -> None:
        for done in self._released.values():
            done.set()  # whoever we waited for on that node is gone
