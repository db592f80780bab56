"""Where rt keeps everything in one Redis (or Valkey) dataset, under one prefix.

| key | type | holds |
|---|---|---|
| `P:epoch` | string | the log's epoch, made once (SET NX) with the dataset |
| `P:seq` | string | the last event id given out (INCR) |
| `P:log` | stream | every stored event, entry id `0-<id>`, field `e` = the event JSON: what each node's reader follows in id order |
| `P:log:<flow>` | stream | the same events per flow, for catch-up reads of a few flows |
| `P:msg:<id>` | string | a message's state JSON |
| `P:ver` | hash | message id -> its state's version (bumped by every change) |
| `P:flow:<flow>` | sorted set | the flow's message ids (score = id), for history pages |
| `P:tag:<flow>:<tag>` | sorted set | the flow's messages holding the tag |
| `P:deleted` | set | deleted message ids: their `message` and `edit` events read back blank |
| `P:ops` | hash | `user NUL uuid` -> what the op returned (PROTOCOL.md 2 idempotency) |
| `P:users`, `P:tokens`, `P:flows` | hashes | the directory: name -> JSON, token hash -> user, flow -> JSON |
| `P:members:<flow>` | set | a flow's members |
| `P:dirv` | string | the directory's version (INCR on every change) |
| `P:ticket:<t>` | string, with expiry | a stream ticket's JSON |
| `P:node:<id>` | string, with expiry | a node is alive while this key is |
| `P:presence:<node>` | hash | `flow NUL user` -> 1 while the node has a claimant there |
| `P:claim:<user> NUL <client>` | string | the node and generation of the live claimant |
| `P:gen` | string | the claims' generation counter |
| `P:streams:<user>` | sorted set | the user's live claimants on every node (score: when opened) |
| `P:bus`, `P:control` | pub/sub channels | ephemeral events; claims and presence between nodes |
"""

from __future__ import annotations

SEP = "\x00"


class Keys:
    def __init__(self, prefix: str = "rt") -> None:
        self.prefix = prefix
        p = prefix + ":"
        self.epoch = p + "epoch"
        self.seq = p + "seq"
        self.log = p + "log"
        self.ver = p + "ver"
        self.deleted = p + "deleted"
        self.ops = p + "ops"
        self.users = p + "users"
        self.tokens = p + "tokens"
        self.flows = p + "flows"
        self.dirv = p + "dirv"
        self.gen = p + "gen"
        self.bus = p + "bus"
        self.control = p + "control"

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def flow_log(self, flow: str) -> str:
        return self._k("log", flow)

    def message(self, message_id: int) -> str:
        return self._k("msg", str(message_id))

    def flow_messages(self, flow: str) -> str:
        return self._k("flow", flow)

    def tagged(self, flow: str, tag: str) -> str:
        return self._k("tag", flow, tag)

    def members(self, flow: str) -> str:
        return self._k("members", flow)

    def ticket(self, ticket: str) -> str:
        return self._k("ticket", ticket)

    def node(self, node: str) -> str:
        return self._k("node", node)

    def presence(self, node: str) -> str:
        return self._k("presence", node)

    def claim(self, user: str, client: str) -> str:
        return self._k("claim", user + SEP + client)

    def streams(self, user: str) -> str:
        return self._k("streams", user)
