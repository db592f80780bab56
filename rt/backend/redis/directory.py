"""`RedisDirectory`: users, tokens, flows and members in Redis, cached on each node.

Lookups are served from this node's cache, as for SQLite. Every change
bumps `P:dirv`; `refresh` (twice a second, and after a lookup that missed)
reloads the cache when the version moved, so a user, token or flow made on
another node is seen here within half a second, at once when asked for. A
node's own changes update its cache as they are made. Names are claimed
with HSETNX, so two nodes cannot both create one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from rt.backend.redis.connection import reaching
from rt.backend.redis.keys import Keys
from rt.core.errors import RtError
from rt.core.events import Flow
from rt.store.contracts import Directory, UserRecord, hash_token, new_token, now_ms


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisDirectory(Directory):
    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._users: dict[str, UserRecord] = {}
        self._tokens: dict[str, str] = {}
        self._flows: dict[str, Flow] = {}
        self._version: int | None = None

    async def open(self) -> None:
        await self._load()

    async def close(self) -> None:
        pass

    async def _version_now(self) -> int:
        return int(await self.client.get(self.keys.dirv) or 0)

    async def _load(self) -> None:
        keys = self.keys
        version = await self._version_now()
        async with self.client.pipeline(transaction=True) as pipe:
            users_req = pipe.hgetall(keys.users)
            tokens_req = pipe.hgetall(keys.tokens)
            flows_req = pipe.hgetall(keys.flows)
        users = {_text(k): orjson.loads(v) for k, v in (await users_req).items()}
        tokens = {_text(k): _text(v) for k, v in (await tokens_req).items()}
        flows = {_text(k): orjson.loads(v) for k, v in (await flows_req).items()}
        members: dict[str, set[str]] = {}
        if flows:
            async with self.client.pipeline(transaction=False) as pipe:
                reqs = {name: pipe.smembers(keys.members(name)) for name in flows}
            members = {name: {_text(m) for m in await req} for name, req in reqs.items()}
        self._users = {n: UserRecord(n, bool(u["guest"]), u["created"]) for n, u in users.items()}
        self._tokens = tokens
        self._flows = {
            n: Flow(n, bool(f["private"]), f["owner"], frozenset(members.get(n, ())))
            for n, f in flows.items()
        }
        self._version = version

    @reaching("reloading users and flows")
    async def refresh(self) -> bool:
        if await self._version_now() == self._version:
            return False
        await self._load()
        return True

    async def _changed(self) -> None:
        """Bump the version; if nobody else changed anything since our load, we are current."""
        version = await self.client.incr(self.keys.dirv)
        if self._version is not None and version == self._version + 1:
            self._version = version

    # -- users and tokens --------------------------------------------------------------

    @reaching("creating a user")
    async def create_user(self, name: str, *, guest: bool = False) -> str:
        record = UserRecord(name, guest, now_ms())
        made = await self.client.hsetnx(
            self.keys.users, name, orjson.dumps({"guest": guest, "created": record.created})
        )
        if not made:
            raise RtError("exists", f"user {name} already exists; pick another name")
        token = new_token()
        await self.client.hset(self.keys.tokens, {hash_token(token): name})
        await self._changed()
        self._users[name] = record
        self._tokens[hash_token(token)] = name
        return token

    async def _require_user(self, name: str) -> None:
        if name not in self._users and not await self.client.hexists(self.keys.users, name):
            raise RtError("not_found", f"no user named {name}")

    @reaching("adding a token")
    async def add_token(self, name: str) -> str:
        await self._require_user(name)
        token = new_token()
        await self.client.hset(self.keys.tokens, {hash_token(token): name})
        await self._changed()
        self._tokens[hash_token(token)] = name
        return token

    @reaching("revoking tokens")
    async def revoke_tokens(self, name: str) -> None:
        await self._require_user(name)
        tokens = await self.client.hgetall(self.keys.tokens)
        theirs = [_text(h) for h, u in tokens.items() if _text(u) == name]
        if theirs:
            await self.client.hdel(self.keys.tokens, theirs)
        await self._changed()
        self._tokens = {h: u for h, u in self._tokens.items() if u != name}

    def authenticate(self, token: str) -> str | None:
        return self._tokens.get(hash_token(token))

    def user_exists(self, name: str) -> bool:
        return name in self._users

    @reaching("listing users")
    async def list_users(self) -> list[UserRecord]:
        await self.refresh()
        return sorted(self._users.values(), key=lambda u: u.name)

    # -- flows -----------------------------------------------------------------------

    @reaching("creating a flow")
    async def create_flow(
        self,
        name: str,
        *,
        private: bool = False,
        owner: str | None = None,
        members: Iterable[str] = (),
    ) -> Flow:
        everyone = frozenset(members) | ({owner} if owner else set())
        for user in sorted(everyone):
            await self._require_user(user)
        made = await self.client.hsetnx(
            self.keys.flows, name, orjson.dumps({"private": private, "owner": owner})
        )
        if not made:
            raise RtError("exists", f"flow {name} already exists")
        if everyone:
            await self.client.sadd(self.keys.members(name), list(everyone))
        await self._changed()
        flow = Flow(name, bool(private), owner, everyone)
        self._flows[name] = flow
        return flow

    async def _require_flow(self, name: str) -> Flow:
        flow = self._flows.get(name)
        if flow is None:
            await self.refresh()
            flow = self._flows.get(name)
        if flow is None:
            raise RtError("not_found", f"no flow named {name}")
        return flow

    def flow(self, name: str) -> Flow | None:
        return self._flows.get(name)

    def flows(self) -> list[Flow]:
        return sorted(self._flows.values(), key=lambda f: f.name)

    @reaching("adding a member")
    async def add_member(self, flow: str, user: str) -> None:
        f = await self._require_flow(flow)
        await self._require_user(user)
        await self.client.sadd(self.keys.members(flow), [user])
        await self._changed()
        self._flows[flow] = Flow(f.name, f.private, f.owner, f.members | {user})

    @reaching("removing a member")
    async def remove_member(self, flow: str, user: str) -> None:
        f = await self._require_flow(flow)
        await self.client.srem(self.keys.members(flow), [user])
        await self._changed()
        self._flows[flow] = Flow(f.name, f.private, f.owner, f.members - {user})
