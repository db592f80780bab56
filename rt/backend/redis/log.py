"""`RedisLog`: the event log and message states in Redis, shared by every node.

The op rules stay in one place, `rt.core.ops.plan`, as for SQLite: a node
reads the message's state and its version, plans the op in Python, and one
small script (`COMMIT`) applies the plan atomically in Redis, after
checking, in this order, that the `(user, uuid)` is unused (else it answers
the first result, or `uuid_mismatch`) and that the state's version is
still the one planned from (else `conflict`: the node reads again and plans
again). So concurrent tag changes from two nodes never lose an update, and
an edit never lands after the delete it raced with. The script takes the
next id (INCR), appends the event to the log stream with entry id `0-<id>`
(so a cursor stays an integer) and to its flow's stream, writes the new
state and its indexes, and records the uuid, in one step.

Ops of one batch are planned together (one round trip reads every state
they touch) and committed in one pipeline, in order; only an op whose
message another op changed meanwhile goes round again.

Every node follows the log stream with a blocking XREAD (`run`) and hands
the events to its feed in id order: the writer's role in a single node,
the reader's here (docs/architecture.md section 5). Reads of old events
come from the per-flow streams, with the content of deleted messages'
`message` and `edit` events blanked as they are read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import trio

from rt.backend.redis.connection import UNREACHABLE, reachable, reaching
from rt.backend.redis.keys import SEP, Keys
from rt.core.errors import RtError
from rt.core.events import Event, MessageState
from rt.core.ops import Change, Op, next_state, plan
from rt.store.contracts import Directory, Log, OpResult, new_epoch, now_ms

log = logging.getLogger("rt.redis")

# ARGV: prefix, op key, fingerprint, message id ("0" for a post), the version planned
# from, "change" | "noop", the event (starting '{"id":0,') or the no-op's answer, the
# new state (starting '{"id":0,' for a post, '{"edited":0,' for an edit), the flow,
# the event type, the tags gained and lost (JSON arrays).
COMMIT = r"""
local p, opkey, fp, mid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local seen = redis.call('HGET', p..':ops', opkey)
if seen then
  local at = string.find(seen, '\0', 1, true)
  if string.sub(seen, 1, at - 1) ~= fp then return {'mismatch'} end
  return {'replay', string.sub(seen, at + 1)}
end
if mid ~= '0' then
  local v = tonumber(redis.call('HGET', p..':ver', mid) or '0')
  if v ~= tonumber(ARGV[5]) then return {'conflict'} end
end
if ARGV[6] == 'noop' then
  redis.call('HSET', p..':ops', opkey, fp..'\0n'..ARGV[7])
  return {'noop'}
end
local sid = tostring(redis.call('INCR', p..':seq'))
local flow, etype, state = ARGV[9], ARGV[10], ARGV[8]
local event = '{"id":'..sid..','..string.sub(ARGV[7], 9)
redis.call('XADD', p..':log', '0-'..sid, 'e', event)
redis.call('XADD', p..':log:'..flow, '0-'..sid, 'e', event)
local target = mid
if etype == 'message' then
  target = sid
  state = '{"id":'..sid..','..string.sub(state, 9)
  redis.call('ZADD', p..':flow:'..flow, tonumber(sid), sid)
elseif etype == 'edit' then
  state = '{"edited":'..sid..','..string.sub(state, 13)
end
redis.call('SET', p..':msg:'..target, state)
redis.call('HINCRBY', p..':ver', target, 1)
for _, t in ipairs(cjson.decode(ARGV[11])) do
  redis.call('ZADD', p..':tag:'..flow..':'..t, tonumber(target), target)
end
for _, t in ipairs(cjson.decode(ARGV[12])) do
  redis.call('ZREM', p..':tag:'..flow..':'..t, target)
end
if etype == 'delete' then redis.call('SADD', p..':deleted', target) end
redis.call('HSET', p..':ops', opkey, fp..'\0e'..sid)
return {'stored', sid}
"""


MAX_REPLANS = 20  # a message changed this often under one op: give up (retry class)


def _state(raw: bytes | None) -> MessageState | None:
    if raw is None:
        return None
    d = orjson.loads(raw)
    return MessageState(
        d["id"],
        d["flow"],
        d["user"],
        d["sent"],
        d["content"],
        tuple(d["tags"]),
        d["edited"],
        d["deleted"],
    )


def _state_json(state: MessageState, kind: str) -> bytes:
    """The new state as COMMIT expects it: the id (or `edited`) to fill in first."""
    d = state.to_dict()
    if kind == "message":
        return orjson.dumps({"id": 0, **{k: v for k, v in d.items() if k != "id"}})
    if kind == "edit":
        return orjson.dumps({"edited": 0, **{k: v for k, v in d.items() if k != "edited"}})
    return orjson.dumps(d)


def _event_id(entry_id: Any) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(text.split("-", 1)[1])


class RedisLog(Log):
    """The log in Redis (see the module docstring). `directory` answers flow owners."""

    def __init__(self, client: Any, keys: Keys, directory: Directory) -> None:
        self.client = client
        self.keys = keys
        self.directory = directory
        self.epoch = ""
        self._commit: Any = None
        self._followed = 0  # the last id handed to the feed
        self._uuid_order = trio.Lock()

    async def open(self) -> None:
        await self.client.set(self.keys.epoch, new_epoch(), condition="NX")
        epoch = await self.client.get(self.keys.epoch)
        self.epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
        self._commit = self.client.register_script(COMMIT)

    async def close(self) -> None:
        pass

    # -- reading the log -------------------------------------------------------------

    @reaching("reading the log's tail")
    async def tail(self, count: int) -> tuple[int, list[Event]]:
        last = await self.client.xrevrange(self.keys.log, count=1)
        head = _event_id(last[0].identifier) if last else 0
        events = []
        if count > 0 and head:
            entries = await self.client.xrevrange(self.keys.log, count=count)
            events = await self._events(list(reversed(entries)))
        self._followed = head
        return head, events

    async def _events(self, entries: Sequence[Any]) -> list[Event]:
        """Events from stream entries, with deleted messages' content blanked."""
        data = _decode(entries)
        about = {
            d["message"] if d["type"] == "edit" else d["id"]
            for d in data
            if d["type"] in ("message", "edit")
        }
        if about:
            flags = await self.client.smismember(self.keys.deleted, [str(m) for m in about])
            gone = {m for m, flag in zip(about, flags, strict=True) if flag}
            for d in data:
                if (
                    d["type"] in ("message", "edit")
                    and (d["message"] if d["type"] == "edit" else d["id"]) in gone
                ):
                    d["content"] = ""
        return [Event(d) for d in data]

    @reaching("reading the log")
    async def read(self, flows: Iterable[str], after: int, upto: int, limit: int) -> list[Event]:
        wanted = sorted(set(flows))
        if limit <= 0 or not wanted or after >= upto:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            results = [
                pipe.xrange(self.keys.flow_log(flow), f"({'0-'}{after}", f"0-{upto}", count=limit)
                for flow in wanted
            ]
        entries = [entry for result in results for entry in await result]
        entries.sort(key=lambda e: _event_id(e.identifier))
        return await self._events(entries[:limit])

    async def run(self) -> None:
        """Follow the log (blocking XREAD) and hand new events to the feed, in id order."""
        while True:
            try:
                answer = await self.client.xread(
                    {self.keys.log: f"0-{self._followed}"}, count=1000, block=1000
                )
            except UNREACHABLE as error:
                log.warning("rt: following the Redis log failed (%s); retrying", error)
                await trio.sleep(0.5)
                continue
            if not answer:
                continue
            entries = next(iter(answer.values()))
            if not entries:
                continue
            # As committed, with no lookup of deletes (a round trip each time): a
            # delete comes later in the log, and the feed's window blanks then.
            events = [Event(d) for d in _decode(entries)]
            self._followed = events[-1].id or self._followed
            if self.feed is not None:
                await self.feed.committed(events)

    # -- applying ops ----------------------------------------------------------------

    async def apply_batch(self, ops: Sequence[Op]) -> list[OpResult | RtError]:
        with reachable("applying ops"):
            return await self._apply_batch(ops)

    async def _apply_batch(self, ops: Sequence[Op]) -> list[OpResult | RtError]:
        outcomes: list[OpResult | RtError | None] = [None] * len(ops)
        pending = list(range(len(ops)))
        for _ in range(MAX_REPLANS):
            if not pending:
                break
            pending = await self._round(ops, pending, outcomes)
        for i in pending:
            outcomes[i] = RtError("internal", "the message changed too often meanwhile; retry")
        return outcomes  # type: ignore[return-value]

    async def _round(
        self, ops: Sequence[Op], which: list[int], outcomes: list[OpResult | RtError | None]
    ) -> list[int]:
        """Plan and commit the ops `which`; the indexes that must go round again."""
        keys = self.keys
        async with self.client.pipeline(transaction=False) as pipe:
            reads = [
                (
                    pipe.hget(keys.ops, ops[i].user + SEP + ops[i].uuid),
                    pipe.get(keys.message(ops[i].message or 0)) if ops[i].message else None,
                    pipe.hget(keys.ver, str(ops[i].message)) if ops[i].message else None,
                )
                for i in which
            ]
        planned: list[tuple[int, list[Any]]] = []
        again: list[int] = []
        for i, (seen_req, state_req, ver_req) in zip(which, reads, strict=True):
            op = ops[i]
            seen = await seen_req
            if seen is not None:
                outcomes[i] = await self._seen(op, seen)
                continue
            state = _state(await state_req) if state_req is not None else None
            version = int(await ver_req or 0) if ver_req is not None else -1
            flow = self.directory.flow(op.flow)
            try:
                decision = plan(op, state, flow.owner if flow else None)
            except RtError as error:
                outcomes[i] = error
                continue
            planned.append((i, self._commit_args(op, state, version, decision)))
        if not planned:
            return again
        async with self.client.pipeline(transaction=False) as pipe:
            results = [(i, args, self._commit(args=args, client=pipe)) for i, args in planned]
        for i, args, result in results:
            answer = [x.decode() if isinstance(x, bytes) else x for x in await result]
            kind = answer[0]
            if kind == "conflict":
                again.append(i)
            elif kind == "stored":
                outcomes[i] = _stored(args, int(answer[1]))
            elif kind == "noop":
                outcomes[i] = OpResult(200, orjson.loads(args[6]))
            elif kind == "mismatch":  # the uuid was used on another node meanwhile
                outcomes[i] = _mismatch(ops[i])
            else:  # replay: the same op was stored from another node meanwhile
                outcomes[i] = await self._seen(
                    ops[i], ops[i].fingerprint.encode() + b"\x00" + answer[1].encode()
                )
        return sorted(again)

    def _commit_args(
        self, op: Op, state: MessageState | None, version: int, decision: Any
    ) -> list[Any]:
        keys = self.keys
        head = [
            keys.prefix,
            op.user + SEP + op.uuid,
            op.fingerprint,
            str(op.message or 0),
            str(version),
        ]
        if not isinstance(decision, Change):
            return [
                *head,
                "noop",
                orjson.dumps(decision.body()),
                b"",
                op.flow,
                op.kind,
                b"[]",
                b"[]",
            ]
        data = {"id": 0, **decision.fields, "sent": now_ms()}
        new = next_state(state, {**data, "id": 0})
        gained = sorted(set(new.tags) - set(state.tags)) if state is not None else []
        lost = sorted(set(state.tags) - set(new.tags)) if state is not None else []
        return [
            *head,
            "change",
            orjson.dumps(data),
            _state_json(new, op.kind),
            op.flow,
            op.kind,
            orjson.dumps(gained),
            orjson.dumps(lost),
        ]

    async def _event(self, event_id: int) -> Event:
        entries = await self.client.xrange(self.keys.log, f"0-{event_id}", f"0-{event_id}")
        return (await self._events(entries))[0]

    async def _seen(self, op: Op, seen: bytes) -> OpResult | RtError:
        """The answer to a retry: `seen` is `fingerprint NUL (e<id> | n<body>)`."""
        fingerprint, _, result = seen.partition(b"\x00")
        if fingerprint.decode() != op.fingerprint:
            return _mismatch(op)
        if result[:1] == b"e":
            event = await self._event(int(result[1:]))
            return OpResult(200, event.data, replay=True)
        return OpResult(200, orjson.loads(result[1:]), replay=True)

    # -- state reads -------------------------------------------------------------------

    async def history(self, flow, *, before, after, limit, tag, upto):
        with reachable("reading history"):
            return await self._history(flow, before, after, limit, tag, upto)

    async def _history(self, flow, before, after, limit, tag, upto):
        if limit <= 0:
            return []
        index = self.keys.tagged(flow, tag) if tag is not None else self.keys.flow_messages(flow)
        low = f"({after}" if after is not None else "-inf"
        high = f"({min(before, upto + 1)}" if before is not None else str(upto)
        if after is not None:
            ids = await self.client.zrangebyscore(index, low, high, offset=0, count=limit)
        else:
            ids = await self.client.zrange(
                index, high, low, sortby="BYSCORE", rev=True, offset=0, count=limit
            )
            ids = list(reversed(ids))
        if not ids:
            return []
        raws = await self.client.mget([self.keys.message(int(i)) for i in ids])
        return [s for s in (_state(r) for r in raws) if s is not None]

    async def message(self, message_id: int) -> MessageState | None:
        with reachable("reading a message"):
            return _state(await self.client.get(self.keys.message(message_id)))

    async def uuid_used(self, user: str, uuid: str) -> bool:
        # One at a time (a FIFO lock): answers in the order asked (the contract).
        async with self._uuid_order:
            with reachable("checking a uuid"):
                return bool(await self.client.hexists(self.keys.ops, user + SEP + uuid))


def _decode(entries: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        orjson.loads(e.field_values[b"e"] if b"e" in e.field_values else e.field_values["e"])
        for e in entries
    ]


def _stored(args: list[Any], event_id: int) -> OpResult:
    """The answer to an op the commit script stored as `event_id`: the event is the one
    planned (args[6], with its id), exactly as the script wrote it, so reading it back
    would cost one round trip per op (one after another: latency to Redis would
    serialise the batch)."""
    event = Event({**orjson.loads(args[6]), "id": event_id})
    return OpResult(201 if event.type == "message" else 200, event.data, event)


def _mismatch(op: Op) -> RtError:
    return RtError(
        "uuid_mismatch", f"uuid {op.uuid} was used for another op; make a new uuid for a new op"
    )
