"""An in-memory run of the most recent stored events, shared by the stores.

`EventWindow` holds every event with `floor < id <= last` in id order (at
most `capacity`; None means unbounded, as in the MemoryStore). Reads with
`after >= floor` are answered from memory without touching disk.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

from rt.core.events import Event


class EventWindow:
    def __init__(self, capacity: int | None, floor: int = 0) -> None:
        self.capacity = capacity
        self.floor = floor
        self._ids: list[int] = []
        self._events: list[Event] = []
        # message id -> ids of the events whose content a delete blanks
        self._content_events: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self._events)

    def covers(self, after: int) -> bool:
        """Whether every event with id > after is held."""
        return after >= self.floor

    def append(self, events: Iterable[Event]) -> None:
        """Add newly stored events (ids above every held id), then trim to capacity."""
        for event in events:
            assert event.id is not None and (not self._ids or event.id > self._ids[-1])
            self._ids.append(event.id)
            self._events.append(event)
            if event.type == "message":
                self._content_events.setdefault(event.id, []).append(event.id)
            elif event.type == "edit":
                self._content_events.setdefault(event.data["message"], []).append(event.id)
        if self.capacity is not None and len(self._events) > self.capacity:
            cut = len(self._events) - self.capacity
            self.floor = self._ids[cut - 1]
            del self._ids[:cut]
            del self._events[:cut]
            if len(self._content_events) > 2 * self.capacity:
                self._content_events = {
                    m: ids for m, ids in self._content_events.items() if ids[-1] > self.floor
                }

    def blank(self, message_id: int) -> None:
        """Replace the held `message` and `edit` events of a deleted message with `content: ""`."""
        for event_id in self._content_events.get(message_id, ()):
            i = bisect_right(self._ids, event_id) - 1
            if i >= 0 and self._ids[i] == event_id:
                old = self._events[i]
                self._events[i] = Event({**old.data, "content": ""})

    def read(self, flows: frozenset[str] | set[str], after: int, limit: int) -> list[Event]:
        out: list[Event] = []
        start = bisect_right(self._ids, after)
        events = self._events
        for i in range(start, len(events)):
            event = events[i]
            if event.flow in flows:
                out.append(event)
                if len(out) >= limit:
                    break
        return out

    def read_last(self, count: int) -> list[Event]:
        """The newest `count` events held, in id order."""
        return self._events[-count:] if count > 0 else []

    def get(self, event_id: int) -> Event | None:
        i = bisect_right(self._ids, event_id) - 1
        if i >= 0 and self._ids[i] == event_id:
            return self._events[i]
        return None
