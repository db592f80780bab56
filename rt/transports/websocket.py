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


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final WebSocket text frame (RFC 6455 section 5.2) of `payload`.

    What a server writes for one message; `payload` must be UTF-8. Without
    the RSV1 bit, so it is also valid on a connection that negotiated
    permessage-deflate (RFC 7692: such a message is simply not compressed).
    """
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload
