"""Events as delivered on streams, and message states.

An `Event` carries its encoded bytes (`raw`), made once when the event is
created, and reused by every connection. Stored events have an integer
`id`; ephemeral events (`presence`, `typing`) have `id` None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rt.core.codec import encode


class Event:
    """One stored or ephemeral event, encoded once.

    Treat as immutable: when a stored event changes (a delete blanks the
    content of its message and edits), the store makes a new Event.
    """

    __slots__ = ("id", "flow", "type", "data", "raw", "_wire")

    def __init__(self, data: dict[str, Any]) -> None:
        self.id: int | None = data.get("id")
        self.flow: str = data["flow"]
        self.type: str = data["type"]
        self.data = data
        self.raw = encode(data)
        self._wire: dict[Any, bytes] | None = None

    def framed(self, key: Any, make: Callable[[Any], bytes | None], arg: Any) -> bytes | None:
        """`make(arg)`, computed once per `key` and then reused.

        For the bytes one transport writes for this event (or for a run of
        events starting with it, `arg`): a fan-out to N connections frames
        them once, not N times. `key` must name everything the bytes depend
        on. A None from `make` (nothing to write this way) is not kept.
        """
        wire = self._wire
        if wire is None:
            wire = self._wire = {}
        data: bytes | None = wire.get(key)
        if data is None:
            data = make(arg)
            if data is not None:
                wire[key] = data
        return data

    def __repr__(self) -> str:
        return f"Event({self.data!r})"


def presence_event(flow: str, user: str, state: str) -> Event:
    return Event({"type": "presence", "flow": flow, "user": user, "state": state})


def typing_event(flow: str, user: str) -> Event:
    return Event({"type": "typing", "flow": flow, "user": user})


@dataclass(frozen=True, slots=True)
class MessageState:
    """A message as the history endpoint shows it (PROTOCOL.md section 2)."""

    id: int
    flow: str
    user: str
    sent: int
    content: str
    tags: tuple[str, ...] = ()
    edited: int | bool = False
    deleted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "flow": self.flow,
            "user": self.user,
            "sent": self.sent,
            "content": self.content,
            "tags": list(self.tags),
            "edited": self.edited,
            "deleted": self.deleted,
        }


@dataclass(frozen=True, slots=True)
class Flow:
    """A flow and who may read and write it."""

    name: str
    private: bool = False
    owner: str | None = None
    members: frozenset[str] = field(default_factory=frozenset)

    def readable_by(self, user: str) -> bool:
        return not self.private or user in self.members or user == self.owner

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "private": self.private, "owner": self.owner}
