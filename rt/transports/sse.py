"""Server-Sent Events framing (PROTOCOL.md section 3.1, WHATWG event stream).

Stored events carry `id: E:<id>` so that a plain EventSource resumes on its
own with `Last-Event-ID`; other frames are named with `event: <type>`. The
body opens with a `retry:` randomised between 1000 and 5000 ms, so that
clients reconnecting after a restart spread out.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from rt.core.codec import encode
from rt.core.events import Event
from rt.core.grammar import EPOCH_RE
from rt.transports.base import Framer


class SseFramer(Framer):
    name = "sse"
    content_type = "text/event-stream; charset=utf-8"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def preamble(self) -> bytes:
        return b"retry: %d\n\n" % self._rng.randint(1000, 5000)

    def ready(self, obj: dict[str, Any], epoch: str) -> bytes:
        return b"id: %s:%d\nevent: ready\ndata: %s\n\n" % (
            epoch.encode(),
            obj["cursor"],
            encode(obj),
        )

    def frame(self, events: Sequence[Event], epoch: str) -> bytes:
        prefix = b"id: " + epoch.encode() + b":"
        parts: list[bytes] = []
        for e in events:
            if e.id is not None:
                parts.append(b"%s%d\ndata: %s\n\n" % (prefix, e.id, e.raw))
            else:
                parts.append(b"event: %s\ndata: %s\n\n" % (e.type.encode(), e.raw))
        return b"".join(parts)

    def control(self, obj: dict[str, Any]) -> bytes:
        return b"event: %s\ndata: %s\n\n" % (obj["type"].encode(), encode(obj))

    def heartbeat(self) -> bytes:
        return b": hb\n\n"


def parse_last_event_id(value: str) -> tuple[str, int] | None:
    """`E:N` from a Last-Event-ID header as (epoch, cursor), or None if it is not one.

    None means an untrusted cursor, which the stream treats like any other
    (PROTOCOL.md section 3: 200, `ready` with `reset: true`), never a 400: a
    browser's EventSource that gets a non-200 answer closes for good, and a
    header a browser carries over (an id another server once sent on this
    URL, a bare `5`) must not kill the page's stream (issue 9).
    """
    epoch, sep, cursor = value.strip().rpartition(":")
    # isascii: str.isdigit() also accepts digits such as "\xb2" that int() refuses.
    if (
        not sep
        or not EPOCH_RE.fullmatch(epoch)
        or not cursor.isascii()
        or not cursor.isdigit()
        or len(cursor) > 18
    ):
        return None
    return epoch, int(cursor)
