"""XHR streaming: newline-delimited JSON (PROTOCOL.md section 3.1).

Each object is `OBJ\\n`; a heartbeat is a lone `\\n`, which an NDJSON reader
sees as an empty line and skips. OBJ never holds a raw newline, so content
can never end a line early. The response rotates after `rotate-bytes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rt.core.codec import encode
from rt.core.events import Event
from rt.transports.base import Framer


class XhrFramer(Framer):
    name = "xhr"
    content_type = "application/x-ndjson; charset=utf-8"
    rotates = True

    def frame(self, events: Sequence[Event], epoch: str) -> bytes:
        return b"".join([e.raw + b"\n" for e in events])

    def control(self, obj: dict[str, Any]) -> bytes:
        return encode(obj) + b"\n"

    def heartbeat(self) -> bytes:
        return b"\n"
