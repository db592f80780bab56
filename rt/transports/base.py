"""The framer interface shared by every transport."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rt.core.events import Event

# Sent on every stream response, polling included (PROTOCOL.md section 3.1).
STREAM_HEADERS: dict[str, str] = {
    "Cache-Control": "no-store, no-transform",
    "X-Accel-Buffering": "no",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

HEARTBEAT_OBJ = {"type": "heartbeat"}


class Framer:
    """Bytes for one transport. Stateless: one instance serves every connection.

    - `preamble()`: bytes that open the response body (may be empty).
    - `ready(obj, epoch)`: the `ready` control frame.
    - `frame(events, epoch)`: one batch of stored and ephemeral events.
    - `control(obj)`: any other control frame (`close`, `pong`, `ack`, `error`).
    - `heartbeat()`: what an idle stream sends every `heartbeat` seconds.
    """

    name = ""
    content_type = ""

    def preamble(self) -> bytes:
        return b""

    def ready(self, obj: dict[str, Any], epoch: str) -> bytes:
        return self.control(obj)

    def frame(self, events: Sequence[Event], epoch: str) -> bytes:
        raise NotImplementedError

    def control(self, obj: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def heartbeat(self) -> bytes:
        raise NotImplementedError
