"""Long-polling: one JSON array of OBJ per response (PROTOCOL.md sections
3.1 and 3.2). The session logic (what is due, lingering, the 500-object
cap) is the service's; this framer only writes the body.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rt.core.codec import encode
from rt.core.events import Event
from rt.transports.base import Framer


class PollFramer(Framer):
    name = "poll"
    content_type = "application/json; charset=utf-8"
    polling = True

    def answer(self, parts: Sequence[bytes]) -> bytes:
        return b"[" + b",".join(parts) + b"]"

    def frame(self, events: Sequence[Event], epoch: str) -> bytes:
        return self.answer([e.raw for e in events])

    def control(self, obj: dict[str, Any]) -> bytes:
        return self.answer([encode(obj)])

    def heartbeat(self) -> bytes:
        raise NotImplementedError("polling has no heartbeat: an idle poll answers []")
