"""Operations that store events, and the pure rules that apply them.

The writer of each store applies ops one at a time against the current
state of their message, in commit order, with `plan` (PROTOCOL.md section
2, checks 3 to 5). Because the rules live here and not in each store, both
stores answer every op identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rt.core.errors import RtError, bad_request
from rt.core.events import MessageState
from rt.core.grammar import (
    MAX_TAGS,
    check_content,
    check_flow,
    check_message_id,
    check_tags,
    check_uuid,
)


@dataclass(frozen=True, slots=True)
class Op:
    """An operation that may store one event.

    `kind` is the event type it makes: message, edit, tag or delete.
    `message` is None for a post. Two ops with the same uuid from one user
    must have equal `fingerprint`s, or the second gets `uuid_mismatch`.
    """

    kind: str
    user: str
    flow: str
    uuid: str
    message: int | None = None
    content: str | None = None
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        return repr((self.kind, self.flow, self.message, self.content, self.add, self.remove))


def post_op(user: str, flow: str, body: dict[str, Any]) -> Op:
    return Op(
        "message",
        user,
        check_flow(flow),
        check_uuid(body.get("uuid")),
        content=check_content(body.get("content")),
    )


def edit_op(user: str, flow: str, message: Any, body: dict[str, Any]) -> Op:
    return Op(
        "edit",
        user,
        check_flow(flow),
        check_uuid(body.get("uuid")),
        message=check_message_id(message),
        content=check_content(body.get("content")),
    )


def tag_op(user: str, flow: str, message: Any, body: dict[str, Any]) -> Op:
    add = check_tags(body.get("add"), "add")
    remove = check_tags(body.get("remove"), "remove")
    if not add and not remove:
        raise bad_request("a tag change needs at least one tag in add or remove")
    if set(add) & set(remove):
        raise bad_request("a tag cannot be both added and removed in one change")
    return Op(
        "tag",
        user,
        check_flow(flow),
        check_uuid(body.get("uuid")),
        message=check_message_id(message),
        add=tuple(add),
        remove=tuple(remove),
    )


def delete_op(user: str, flow: str, message: Any, uuid: Any) -> Op:
    return Op("delete", user, check_flow(flow), check_uuid(uuid), message=check_message_id(message))


@dataclass(frozen=True, slots=True)
class NoOp:
    """The op would not change its message: store nothing, answer the state."""

    state: MessageState

    def body(self) -> dict[str, Any]:
        return {"changed": False, "state": self.state.to_dict()}


@dataclass(frozen=True, slots=True)
class Change:
    """The op stores one event with these fields (the store adds id and sent)."""

    fields: dict[str, Any]


def plan(op: Op, state: MessageState | None, flow_owner: str | None) -> NoOp | Change:
    """Decide what `op` does to its message in `state` (None if there is none).

    Raises RtError for a missing message (404), a deleted one (409 `deleted`)
    or a user who may not do this to it (403). Pure: no I/O, no clock.
    """
    base = {"flow": op.flow, "type": op.kind, "user": op.user, "uuid": op.uuid}
    if op.kind == "message":
        return Change({**base, "content": op.content})
    if state is None or state.flow != op.flow:
        raise RtError("not_found", f"message {op.message} does not exist in flow {op.flow}")
    if op.kind in ("edit", "tag") and state.deleted:
        raise RtError("deleted", f"message {op.message} was deleted; it cannot change")
    if op.kind == "edit":
        if state.user != op.user:
            raise RtError("forbidden", "only the author may edit a message")
        if state.content == op.content:
            return NoOp(state)
        return Change({**base, "message": state.id, "content": op.content})
    if op.kind == "delete":
        if op.user not in (state.user, flow_owner):
            raise RtError("forbidden", "only the author or the flow's owner may delete a message")
        if state.deleted:
            return NoOp(state)
        return Change({**base, "message": state.id})
    if op.kind == "tag":
        tags = (set(state.tags) | set(op.add)) - set(op.remove)
        if tags == set(state.tags):
            return NoOp(state)
        if len(tags) > MAX_TAGS:
            raise bad_request(f"a message holds at most {MAX_TAGS} tags")
        return Change(
            {
                **base,
                "message": state.id,
                "add": list(op.add),
                "remove": list(op.remove),
                "tags": sorted(tags),
            }
        )
    raise ValueError(f"unknown op kind {op.kind!r}")


def next_state(state: MessageState | None, event: dict[str, Any]) -> MessageState:
    """The message state after stored `event` (which has id and sent)."""
    kind = event["type"]
    if kind == "message":
        return MessageState(
            event["id"], event["flow"], event["user"], event["sent"], event["content"]
        )
    assert state is not None, "only a post makes a message"
    if kind == "edit":
        return _replace(state, content=event["content"], edited=event["id"])
    if kind == "tag":
        return _replace(state, tags=tuple(event["tags"]))
    if kind == "delete":
        return _replace(state, content="", deleted=True)
    raise ValueError(f"unknown event type {kind!r}")


def _replace(state: MessageState, **changes: Any) -> MessageState:
    fields = state.to_dict()
    fields["tags"] = tuple(fields["tags"])
    fields.update(changes)
    return MessageState(**fields)
