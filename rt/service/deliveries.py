"""`rt serve --delivery-record FILE`: which stream delivered which stored events, when.

The race lab checks "one live stream" (LAB.md section 3) from this record:
two streams of one (user, client id) must never deliver at the same time.
One JSON line per batch of stored events a stream wrote (or a poll
answered), appended as it goes out, with a Unix time:

    {"t": 1764756000.123, "user": "u", "client": "c", "stream": "4711-a3f2-17",
     "transport": "ws", "first": 120, "last": 124, "n": 5}

`stream` names one stream (or polling session) uniquely across restarts of
the server (pid, a random tag, a counter). Lines are written unbuffered, so
a `kill -9` loses none that were written. Off by default: the service then
holds `None` and records nothing.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Sequence
from typing import Any

import orjson

from rt.core.events import Event


class DeliveryRecord:
    """Appends delivery lines to a file (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 (closed by close())
        self._prefix = f"{os.getpid()}-{secrets.token_hex(2)}-"
        self._serial = itertools.count(1)

    def stream_name(self) -> str:
        return self._prefix + str(next(self._serial))

    def record(self, session: Any, events: Sequence[Event]) -> None:
        first = last = None
        n = 0
        for event in events:
            if event.id is not None:
                if first is None:
                    first = event.id
                last = event.id
                n += 1
        if not n:
            return
        if session.record_name is None:
            session.record_name = self.stream_name()
        self._file.write(
            orjson.dumps(
                {
                    "t": time.time(),
                    "user": session.user,
                    "client": session.client,
                    "stream": session.record_name,
                    "transport": session.transport,
                    "first": first,
                    "last": last,
                    "n": n,
                }
            )
            + b"\n"
        )

    def close(self) -> None:
        self._file.close()
