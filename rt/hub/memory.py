"""`MemoryHub`: in-process fan-out by flow with a bounded buffer per subscriber.

Contract (shared by every hub; tests/test_hub_conformance.py):

- `subscribe(flows, ...)` is synchronous: from the moment it returns, every
  event later published to one of those flows is delivered to the
  subscriber, in publish order, until `unsubscribe` or `lagging`.
- `publish(events)` takes stored events in strictly increasing id order and
  never blocks. It asserts that ids increase across calls: a writer that
  publishes out of order breaks resume (docs/architecture.md invariant 1), and we would
  rather crash loudly than lose events silently.
- `publish_ephemeral(event)` delivers presence and typing; no id, no order check.
- Each event is encoded once (`Event.raw`); the hub only appends references.
- A subscriber may have a `direct` sink (rt/hub/contracts.py, set by its
  stream once it is live). While its buffer is empty, the hub first offers
  it the events of one `publish` call that are for it, all at once and in
  order, `direct.offer(events)`: True means the stream took them all (wrote
  them, or skipped duplicates) and nothing is buffered; False means buffer
  them as usual. So an idle stream's events skip the buffer, the wake-up and the
  task switch, a batch of events goes out as one write, and order holds:
  nothing is offered while older events wait in the buffer.
- A subscriber whose buffer would exceed `max_objects` or `max_bytes` is
  marked `lagging` and detached: it keeps what it has, receives nothing
  more, and its stream ends with `lagging` (the client resumes from its
  cursor and the store fills the gap). Nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import trio

from rt.core.events import Event
from rt.hub.contracts import DirectSink


class Subscriber:
    """One stream's bounded buffer of live events."""

    __slots__ = (
        "flows",
        "max_objects",
        "max_bytes",
        "_items",
        "_bytes",
        "lagging",
        "detached",
        "_lot",
        "direct",
    )

    def __init__(self, flows: Iterable[str], max_objects: int, max_bytes: int) -> None:
        self.flows = frozenset(flows)
        self.max_objects = max_objects
        self.max_bytes = max_bytes
        self._items: list[Event] = []  # a list: an empty deque costs 600 bytes an idle stream
        self._bytes = 0
        self.lagging = False
        self.detached = False
        self._lot = trio.lowlevel.ParkingLot()
        self.direct: DirectSink | None = None

    def put_all(self, events: Sequence[Event]) -> bool:
        """Deliver or buffer `events` in order; False (and `lagging`) at the first that
        would exceed the bounds (the rest are not buffered)."""
        if not self._items and self.direct is not None and self.direct.offer(events):
            return True
        put = self._put
        for event in events:
            if not put(event):
                return False
        return True

    def _put(self, event: Event) -> bool:
        size = len(event.raw)
        if len(self._items) >= self.max_objects or self._bytes + size > self.max_bytes:
            self.lagging = True
            self._lot.unpark_all()
            return False
        self._items.append(event)
        self._bytes += size
        if self._lot:
            self._lot.unpark_all()
        return True

    def __len__(self) -> int:
        return len(self._items)

    def take_all(self) -> list[Event]:
        """Everything buffered, oldest first; the buffer is left empty."""
        items = self._items
        self._items = []
        self._bytes = 0
        return items

    async def wait(self) -> None:
        """Return once there is something to take, or the subscriber is lagging or detached."""
        if not self._items and not self.lagging and not self.detached:
            await self._lot.park()

    def wake(self) -> None:
        self._lot.unpark_all()


class MemoryHub:
    def __init__(self) -> None:
        self._by_flow: dict[str, set[Subscriber]] = {}
        self.last_id = 0
        self.subscribers = 0

    def subscribe(self, flows: Iterable[str], *, max_objects: int, max_bytes: int) -> Subscriber:
        sub = Subscriber(flows, max_objects, max_bytes)
        for flow in sub.flows:
            self._by_flow.setdefault(flow, set()).add(sub)
        self.subscribers += 1
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Detach `sub`: it receives nothing more. Idempotent."""
        if sub.detached:
            return
        sub.detached = True
        sub.direct = None
        self.subscribers -= 1
        for flow in sub.flows:
            subs = self._by_flow.get(flow)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_flow[flow]
        sub.wake()

    def publish(self, events: list[Event]) -> None:
        last = self.last_id
        for event in events:
            if event.id is None or event.id <= last:
                raise AssertionError(
                    f"hub got event id {event.id} after {last}: the writer published out "
                    "of order, which would make resuming clients skip events (invariant 1)"
                )
            last = event.id
        self.last_id = last
        by_flow = self._by_flow
        if len(events) == 1:  # the common case: no grouping
            one = (events[0],)
            subs = by_flow.get(events[0].flow)
            overflowed = [sub for sub in subs if not sub.put_all(one)] if subs else []
        else:
            # Each subscriber gets its events of the batch at once: one write each.
            targets: dict[Subscriber, list[Event]] = {}
            for event in events:
                subs = by_flow.get(event.flow)
                if subs:
                    for sub in subs:
                        mine = targets.get(sub)
                        if mine is None:
                            targets[sub] = [event]
                        else:
                            mine.append(event)
            overflowed = [sub for sub, mine in targets.items() if not sub.put_all(mine)]
        for sub in overflowed:
            self.unsubscribe(sub)

    def publish_ephemeral(self, event: Event) -> None:
        subs = self._by_flow.get(event.flow)
        if not subs:
            return
        one = (event,)
        overflowed = [sub for sub in subs if not sub.put_all(one)]
        for sub in overflowed:
            self.unsubscribe(sub)

    def count(self) -> int:
        return self.subscribers
