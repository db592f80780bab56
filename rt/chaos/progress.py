"""The live progress display of `rt chaos run`, on stderr.

One line, rewritten in place on a terminal (a new line every 5 s
otherwise): elapsed time and phase, posts sent, acknowledged and given up,
faults so far, clients connected, and violations so far. Those the lab can
see as they happen are counted at once: a view that shows an id twice, or
an id lower than one it showed before (the full check runs at the end).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import trio

from rt.chaos.records import Printed


class Progress:
    def __init__(
        self, lab_ids: list[str], planned_posts: int, duration: float, out: TextIO = sys.stderr
    ) -> None:
        self.out = out
        self.tty = out.isatty()
        self.planned = planned_posts
        self.duration = duration
        self.started = time.monotonic()
        self.phase = "faults on"
        self.sent = self.acked = self.gave_up = 0
        self.faults = 0
        self.violations = 0
        self.open: dict[str, int] = dict.fromkeys(lab_ids, 0)
        self.last_seen: dict[str, int] = {}  # highest id shown in the current view
        self._seen: dict[str, set[int]] = {}
        self._last_print = 0.0

    # -- what happens ---------------------------------------------------------------

    def record(self, lab_id: str, entry: Any) -> None:
        """A command sent (a dict) or a line a client printed (a records entry)."""
        if isinstance(entry, dict):
            self.sent += entry.get("cmd") == "post"
            return
        if not isinstance(entry, Printed):
            return
        rec = entry.rec
        if entry.kind == "view":
            self.last_seen[lab_id] = rec["view"]
            self._seen[lab_id] = set()
        elif entry.kind == "seen":
            event_id = rec["seen"]["id"]
            seen = self._seen.setdefault(lab_id, set())
            if event_id in seen or event_id < self.last_seen.get(lab_id, 0):
                self.violations += 1
            seen.add(event_id)
            self.last_seen[lab_id] = max(self.last_seen.get(lab_id, 0), event_id)
        elif entry.kind == "acked":
            self.acked += 1
        elif entry.kind == "gave_up":
            self.gave_up += 1

    def connection(self, record: dict[str, Any]) -> None:
        label = record.get("label")
        if label in self.open:
            self.open[label] += 1 if record.get("event") == "open" else -1

    def fault(self, record: dict[str, Any]) -> None:
        if record.get("action") == "start":
            self.faults += 1

    # -- showing it -----------------------------------------------------------------

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        connected = sum(1 for n in self.open.values() if n > 0)
        return (
            f"[{elapsed:5.1f}s {self.phase}] posts {self.sent}/{self.planned} sent, "
            f"{self.acked} acked, {self.gave_up} given up | faults {self.faults} | "
            f"clients {connected}/{len(self.open)} connected | "
            f"violations so far {self.violations}"
        )

    def show(self, final: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            end = "\n" if final else ""
            print("\r\x1b[2K" + self.line(), end=end, file=self.out, flush=True)
        elif final or now - self._last_print >= 5:
            print(self.line(), file=self.out, flush=True)
            self._last_print = now

    async def run(self) -> None:
        while True:
            self.show()
            await trio.sleep(0.5)

    def finish(self) -> None:
        self.phase = "done"
        self.show(final=True)
