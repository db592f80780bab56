"""The `Hub` contract: a node's live fan-out of events to its subscribers.

Every hub (`MemoryHub` is the node-local one every backend uses) keeps
these promises (checked by `rt.testing.hub`):

- `subscribe(flows, ...)` is synchronous: from the moment it returns, every
  event later published to one of those flows is delivered to the
  subscriber, in publish order, until `unsubscribe` or `lagging`.
- `publish(events)` takes stored events in strictly increasing id order and
  never blocks; it fails loudly on an id that does not increase (a writer
  that publishes out of order breaks resume, docs/architecture.md invariant 1).
- `publish_ephemeral(event)` delivers presence and typing; no id, no order check.
- A subscriber whose buffer would exceed its bounds is marked `lagging` and
  detached: it keeps what it has and receives nothing more.
- A subscriber may carry a `DirectSink`: while its buffer is empty, the hub
  offers it the events of one `publish` call that are for it, at once and
  in order; `offer(events)` True means they were taken (nothing is
  buffered), False means buffer them as usual.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from rt.core.events import Event


class DirectSink(Protocol):
    def offer(self, events: Sequence[Event]) -> bool:
        """Write `events` (one publish call's, in order) now, without blocking; or False."""
        ...


class Hub(Protocol):
    def subscribe(self, flows: Iterable[str], *, max_objects: int, max_bytes: int) -> Any: ...

    def unsubscribe(self, subscriber: Any) -> None: ...

    def publish(self, events: list[Event]) -> None: ...

    def publish_ephemeral(self, event: Event) -> None: ...

    def count(self) -> int: ...
