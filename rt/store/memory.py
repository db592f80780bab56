"""`MemoryLog` and `MemoryDirectory`: everything in memory, for `--db :memory:` and as
the verified fakes.

Nothing survives the process. They follow the contracts of
rt/store/contracts.py and pass the same conformance checks (`rt.testing`)
as the SQLite ones.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence

from rt.core.errors import RtError
from rt.core.events import Event, Flow, MessageState
from rt.core.ops import Change, Op, next_state, plan
from rt.store.contracts import (
    Directory,
    Log,
    OpResult,
    UserRecord,
    hash_token,
    new_epoch,
    new_token,
    now_ms,
)
from rt.store.window import EventWindow


class MemoryLog(Log):
    """The whole log in memory. `directory` answers who owns a flow (for deletes)."""

    def __init__(self, directory: Directory | None = None) -> None:
        self.epoch = new_epoch()
        self.directory = directory
        self._log = EventWindow(capacity=None)
        self._states: dict[int, MessageState] = {}
        self._by_flow: dict[str, list[int]] = {}
        self._uuids: dict[tuple[str, str], tuple[str, int | None, dict | None]] = {}
        self._ids = itertools.count(1)
        self._last = 0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def tail(self, count: int) -> tuple[int, list[Event]]:
        return self._last, self._log.read_last(count)

    async def apply_batch(self, ops: Sequence[Op]) -> list[OpResult | RtError]:
        started = time.perf_counter()
        outcomes = [self._apply(op) for op in ops]
        if self.on_hold is not None:
            self.on_hold(time.perf_counter() - started)
        events = [o.event for o in outcomes if isinstance(o, OpResult) and o.event is not None]
        if events and self.feed is not None:
            await self.feed.committed(events)
        return outcomes

    def _apply(self, op: Op) -> OpResult | RtError:
        key = (op.user, op.uuid)
        seen = self._uuids.get(key)
        if seen is not None:
            fingerprint, event_id, body = seen
            if fingerprint != op.fingerprint:
                return RtError(
                    "uuid_mismatch",
                    f"uuid {op.uuid} was used for another op; make a new uuid for a new op",
                )
            if event_id is not None:
                event = self._log.get(event_id)
                assert event is not None
                return OpResult(200, event.data, replay=True)
            assert body is not None
            return OpResult(200, body, replay=True)
        flow = self.directory.flow(op.flow) if self.directory is not None else None
        state = self._states.get(op.message) if op.message is not None else None
        try:
            decision = plan(op, state, flow.owner if flow else None)
        except RtError as exc:
            return exc
        if not isinstance(decision, Change):
            body = decision.body()
            self._uuids[key] = (op.fingerprint, None, body)
            return OpResult(200, body)
        event_id = next(self._ids)
        data = {"id": event_id, **decision.fields, "sent": now_ms()}
        new = next_state(state, data)
        self._states[new.id] = new
        if data["type"] == "message":
            self._by_flow.setdefault(op.flow, []).append(event_id)
        event = Event(data)
        self._log.append([event])
        self._last = event_id
        if data["type"] == "delete":
            self._log.blank(new.id)
        self._uuids[key] = (op.fingerprint, event_id, None)
        return OpResult(201 if data["type"] == "message" else 200, event.data, event)

    async def read(self, flows: Iterable[str], after: int, upto: int, limit: int) -> list[Event]:
        return [e for e in self._log.read(frozenset(flows), after, limit) if e.id <= upto]  # type: ignore[operator]

    async def history(self, flow, *, before, after, limit, tag, upto):
        ids = self._by_flow.get(flow, [])
        states = [
            self._states[i]
            for i in ids
            if i <= upto and (before is None or i < before) and (after is None or i > after)
        ]
        if tag is not None:
            states = [s for s in states if tag in s.tags]
        return states[:limit] if after is not None else states[-limit:] if limit else []

    async def message(self, message_id: int) -> MessageState | None:
        return self._states.get(message_id)

    async def uuid_used(self, user: str, uuid: str) -> bool:
        return (user, uuid) in self._uuids


class MemoryDirectory(Directory):
    def __init__(self) -> None:
        self._users: dict[str, UserRecord] = {}
        self._tokens: dict[str, str] = {}  # hash -> user
        self._flows: dict[str, Flow] = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    # -- users -------------------------------------------------------------

    async def create_user(self, name: str, *, guest: bool = False) -> str:
        if name in self._users:
            raise RtError("exists", f"user {name} already exists; pick another name")
        self._users[name] = UserRecord(name, guest, now_ms())
        return await self.add_token(name)

    async def add_token(self, name: str) -> str:
        if name not in self._users:
            raise RtError("not_found", f"no user named {name}")
        token = new_token()
        self._tokens[hash_token(token)] = name
        return token

    async def revoke_tokens(self, name: str) -> None:
        if name not in self._users:
            raise RtError("not_found", f"no user named {name}")
        self._tokens = {h: u for h, u in self._tokens.items() if u != name}

    def authenticate(self, token: str) -> str | None:
        return self._tokens.get(hash_token(token))

    def user_exists(self, name: str) -> bool:
        return name in self._users

    async def list_users(self) -> list[UserRecord]:
        return sorted(self._users.values(), key=lambda u: u.name)

    # -- flows -------------------------------------------------------------

    async def create_flow(self, name, *, private=False, owner=None, members=()):
        if name in self._flows:
            raise RtError("exists", f"flow {name} already exists")
        for user in [*members, *([owner] if owner else [])]:
            if user not in self._users:
                raise RtError("not_found", f"no user named {user}")
        members = frozenset(members) | ({owner} if owner else set())
        self._flows[name] = Flow(name, private, owner, members)
        return self._flows[name]

    def flow(self, name: str) -> Flow | None:
        return self._flows.get(name)

    def flows(self) -> list[Flow]:
        return sorted(self._flows.values(), key=lambda f: f.name)

    async def add_member(self, flow: str, user: str) -> None:
        f = self._require_flow(flow)
        if user not in self._users:
            raise RtError("not_found", f"no user named {user}")
        self._flows[flow] = Flow(f.name, f.private, f.owner, f.members | {user})

    async def remove_member(self, flow: str, user: str) -> None:
        f = self._require_flow(flow)
        self._flows[flow] = Flow(f.name, f.private, f.owner, f.members - {user})

    def _require_flow(self, name: str) -> Flow:
        f = self._flows.get(name)
        if f is None:
            raise RtError("not_found", f"no flow named {name}")
        return f
