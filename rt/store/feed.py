"""`Feed`: this node's committed events, in id order, into the window and the hub.

The one place a node publishes stored events (docs/architecture.md invariant 1; the
reader role of section 5). The log hands it every committed event exactly
once, in id order (`committed`): a single-node log from its writer right
after each commit, a shared log from its reader. In one synchronous step,
`publish` then

1. appends the events to the window of recent events (and blanks the
   content of a deleted message's events there),
2. hands them to the hub (`publish_to`), which asserts that ids increase,
3. advances `head`,
4. wakes whoever waits in `published(id)` for one of them.

So `head` is always the id of the last *published* event: a subscriber
registered before reading `head` receives every event after it, and a page
read up to `head` holds nothing a stream from `head` would deliver again.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable, Iterable, Sequence
from itertools import count

import trio

from rt.core.events import Event, MessageState
from rt.store.contracts import Log
from rt.store.window import EventWindow

AfterCommit = Callable[[list[Event]], Awaitable[None]]


class PublishFailed(RuntimeError):
    """Committed events that this node's hub refused (a bug: see `Feed.committed`)."""


class Feed:
    """The window, the head and the hub hand-over of one node (see the module docstring)."""

    def __init__(
        self,
        log: Log,
        *,
        window: int,
        publish_to: Callable[[list[Event]], None] = lambda events: None,
        after_commit: AfterCommit | None = None,
    ) -> None:
        self.log = log
        self.head = 0
        self.publish_to = publish_to
        # A test hook: runs between commit and publish (the writer waits for it).
        self.after_commit = after_commit
        self._capacity = window
        self._window = EventWindow(capacity=window)
        self._waiting: list[tuple[int, int, trio.Event]] = []  # (id, n, event): a heap
        self._order = count()
        log.attach(self)

    async def start(self) -> None:
        """Load the head and the newest events from the log (once, before serving)."""
        head, events = await self.log.tail(self._capacity)
        if len(events) < self._capacity:
            floor = 0  # every event is held
        elif events:
            floor = events[0].id - 1  # type: ignore[operator]
        else:
            floor = head  # a window of 0 holds nothing
        self._window = EventWindow(capacity=self._capacity, floor=floor)
        self._window.append(events)
        self.head = head

    @property
    def epoch(self) -> str:
        return self.log.epoch

    async def committed(self, events: list[Event]) -> None:
        """What the log calls with every committed batch, in id order.

        Raises `PublishFailed` if the hub refused the events: they are
        committed but this node cannot deliver them, and it must stop loudly
        (the writer re-raises the cause) rather than go on with a gap.
        """
        if self.after_commit is not None:
            await self.after_commit(events)
        try:
            self.publish(events)
        except Exception as exc:
            raise PublishFailed(f"committed events could not be published: {exc!r}") from exc

    def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        window = self._window
        window.append(events)
        for event in events:
            if event.type == "delete":
                window.blank(event.data["message"])
        self.publish_to(list(events))
        self.head = events[-1].id  # type: ignore[assignment]
        waiting = self._waiting
        while waiting and waiting[0][0] <= self.head:
            heapq.heappop(waiting)[2].set()

    async def published(self, event_id: int) -> None:
        """Return once the event `event_id` has been published on this node."""
        if event_id <= self.head:
            return
        done = trio.Event()
        heapq.heappush(self._waiting, (event_id, next(self._order), done))
        await done.wait()

    # -- reads ---------------------------------------------------------------------

    async def read(self, flows: Iterable[str], after: int, limit: int) -> list[Event]:
        """Events of `flows` with id > after, in id order, at most `limit`, up to `head`."""
        wanted = flows if isinstance(flows, frozenset) else frozenset(flows)
        if limit <= 0 or not wanted:
            return []
        if self._window.covers(after):
            return self._window.read(wanted, after, limit)
        return await self.log.read(wanted, after, self.head, limit)

    async def history(
        self,
        flow: str,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        tag: str | None = None,
    ) -> list[MessageState]:
        """Message states up to `head` (a page read with cursor `head` must not hold a
        message committed but not yet published: a stream from that cursor would
        deliver it a second time)."""
        if limit <= 0:
            return []
        return await self.log.history(
            flow, before=before, after=after, limit=limit, tag=tag, upto=self.head
        )
