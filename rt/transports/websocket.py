"""WebSocket framing: one text frame per batch, objects separated by `\\n`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rt.core.codec import encode
from rt.core.events import Event
from rt.transports.base import HEARTBEAT_OBJ, Framer

_HEARTBEAT = encode(HEARTBEAT_OBJ)


class WebSocketFramer(Framer):
    name = "ws"
    content_type = ""

    def frame(self, events: Sequence[Event], epoch: str) -> bytes:
        if len(events) == 1:
            return events[0].raw
        return b"\n".join([e.raw for e in events])

    def control(self, obj: dict[str, Any]) -> bytes:
        return encode(obj)

    def heartbeat(self) -> bytes:
        return _HEARTBEAT


def split_frame(text: str) -> list[str]:
    """The objects of one server text frame (the client side of `frame`)."""
    return [line for line in text.split("\n") if line]
