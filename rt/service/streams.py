"""Streams: resume from a cursor, takeover by client id, lagging, ends.

`StreamSession` is the transport-independent half of one stream. It sees
the service only through a `SessionContext` (frozen: the feed, the hub,
presence, claims, metrics, its limits). The web layer opens it with
`Service.open_stream` (which claims it, starts it and counts it, as for
polling sessions), writes `ready`, then loops on
`next_batch()` (framing and writing each batch) until it raises `StreamEnd`,
writes the `close` frame, and calls `finish()` in a `finally` block.

Resume (docs/architecture.md invariant 2): the session subscribes to the hub *before*
it reads the store, so every event it does not find in the store is in its
buffer; it sends catch-up pages from the store while behind, then drains
the buffer, skipping every id at or below the last id it sent. Catch-up
pages do not pass through the bounded buffer.

Direct delivery: once the web layer has written `ready`, it may call
`deliver_directly(write)`. From then on, an event published while the
session is idle (caught up, nothing buffered, no batch being written) is
handed to `write(events)` inside `publish` itself (with the other events of
the same writer batch for this stream), which frames them and writes them to
the socket without blocking, or returns False to have them buffered and sent
by the stream's loop as usual. The loop brackets each
batch it writes with `writing()` / `written()`, so no direct write can
overtake a batch already taken from the buffer.

Takeover (invariant 5) is the backend's claims (rt/backend/claims.py).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from rt.backend.contracts import Claims, Presence
from rt.core.errors import RtError
from rt.core.events import Event
from rt.hub import Hub, Subscriber
from rt.service.metrics import Metrics
from rt.store import Feed

CATCH_UP_PAGE = 500
# How long an old stream may take to finish after a takeover, beyond write_timeout.
_RNG = random.Random()


def close_frame(reason: str, retry_ms: int | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "close", "reason": reason}
    if retry_ms is not None:
        frame["retry_ms"] = retry_ms
    return frame


def retry_ms_for(reason: str) -> int | None:
    """`retry_ms` of a `close` frame (PROTOCOL.md section 3, Ends)."""
    if reason == "rotate":
        return 0
    if reason == "lagging":
        return _RNG.randint(0, 1000)
    if reason == "shutdown":
        return _RNG.randint(1000, 5000)
    return None


def _seconds(value: float) -> int | float:
    """Whole seconds as a JSON integer (`15`, not `15.0`): typed clients decode ints."""
    return int(value) if float(value).is_integer() else value


class StreamEnd(Exception):
    """The stream ends with a `close` frame of this reason."""

    def __init__(self, reason: str, retry_ms: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_ms = retry_ms

    def frame(self) -> dict[str, Any]:
        return close_frame(self.reason, self.retry_ms)


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The settings a session reads (PROTOCOL.md section 6)."""

    buffer_objects: int
    buffer_bytes: int
    heartbeat: float
    poll_timeout: float
    poll_linger: float
    poll_mailbox: int
    presence_grace: float


class Writes(Protocol):
    """What a session may know of the node's writer (rt.store.writer.BatchWriter)."""

    @property
    def busy(self) -> bool: ...

    async def quiet(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionContext:
    """All a stream or polling session may touch of the node: nothing more."""

    feed: Feed
    hub: Hub
    presence: Presence
    claims: Claims
    metrics: Metrics
    limits: SessionLimits
    # The node's writer: whether more events are on their way (a poll's linger).
    writes: Writes
    # Called with (session, events) for each batch of events a session delivers.
    on_delivery: Callable[[Any, Sequence[Event]], None] | None = None


class StreamSession:
    """One open stream of one user and client id over one transport."""

    # Slots: one of these lives as long as each idle connection.
    __slots__ = (
        "ctx",
        "user",
        "client",
        "flows",
        "flow_set",
        "transport",
        "token",
        "done",
        "ready",
        "last_id",
        "_sub",
        "_catching_up",
        "_end",
        "present_in",
        "_finished",
        "_write",
        "_writing",
        "_nudged",
        "record_name",
        "counted",
    )

    is_polling = False

    def __init__(
        self,
        ctx: SessionContext,
        *,
        user: str,
        client: str,
        flows: list[str],
        transport: str,
        token: str,
    ) -> None:
        self.ctx = ctx
        self.user = user
        self.client = client
        self.flows = flows
        self.flow_set = frozenset(flows)
        self.transport = transport
        self.token = token
        self.done = trio.Event()
        self.ready: dict[str, Any] = {}
        self.last_id = 0
        self._sub: Subscriber | None = None
        self._catching_up = False
        self._end: StreamEnd | None = None
        self.present_in: list[str] = []  # flows where this stream counts for presence
        self._finished = False
        self._write: Callable[[Sequence[Event]], bool] | None = None
        self._writing = False  # the loop holds a batch it has not finished writing
        self._nudged = False  # next_batch returns [] once: the loop has its own work
        self.record_name: str | None = None  # its name in the --delivery-record file
        self.counted = False  # in rt_streams_open

    @property
    def key(self) -> tuple[str, str]:
        return (self.user, self.client)

    @property
    def ended(self) -> StreamEnd | None:
        return self._end

    # -- opening -----------------------------------------------------------

    def start(self, cursor: int | None, epoch: str | None) -> dict[str, Any]:
        """Subscribe, join presence and build `ready`, all in one synchronous step.

        Synchronous on purpose: no other task runs between the subscription
        and the reads of `head` and the presence snapshot, so `ready` is
        exact.
        """
        ctx = self.ctx
        feed = ctx.feed
        limits = ctx.limits
        # Join before subscribing: the user's other streams hear `online`, this
        # one has the user in its snapshot (and no redundant event after it).
        ctx.presence.join(self.user, self.flows)
        self.present_in = list(self.flows)
        self._sub = ctx.hub.subscribe(
            self.flows, max_objects=limits.buffer_objects, max_bytes=limits.buffer_bytes
        )
        head = feed.head
        reset = False
        if cursor is None and epoch is None:
            start = head
        elif cursor is not None and epoch == feed.epoch and cursor <= head:
            start = cursor
            self._catching_up = cursor < head
        else:
            start, reset = head, True
        self.last_id = start
        self.ready = {
            "type": "ready",
            "protocol": 1,
            "cursor": start,
            "epoch": feed.epoch,
            "reset": reset,
            "flows": self.flows,
            "client": self.client,
            "transport": self.transport,
            "heartbeat": _seconds(limits.heartbeat),
            "poll_timeout": _seconds(limits.poll_timeout),
            "presence": ctx.presence.snapshot(self.flows),
        }
        return self.ready

    def delivered(self, events: Sequence[Event]) -> None:
        """Note that `events` went out on this session (for the delivery record)."""
        on_delivery = self.ctx.on_delivery
        if on_delivery is not None:
            on_delivery(self, events)

    # -- running -----------------------------------------------------------

    def deliver_directly(self, write: Callable[[Sequence[Event]], bool]) -> None:
        """Let `publish` hand idle-time events to `write` (see the module docstring).

        `write(events)` gets one publish call's events for this stream, in
        order, and writes them as one unit without blocking; it must not
        raise. True means they are the connection's (written, or their
        unwritten rest pending on the socket); False, that nothing was written.
        """
        self._write = write
        if self._sub is not None and not self._sub.detached:
            self._sub.direct = self

    def offer(self, events: Sequence[Event]) -> bool:
        """The hub's `DirectSink`: hand idle-time events to the write (see above)."""
        if self._catching_up or self._writing or self._end is not None:
            return False
        last = self.last_id
        first = events[0].id
        if first is not None and first <= last:  # already sent in a catch-up page
            events = [e for e in events if e.id is None or e.id > last]
            if not events:
                return True
        write = self._write
        try:
            if write is None or not write(events):
                return False
        except Exception:  # a bug in the direct path must not reach the store's writer
            logging.getLogger("rt").exception(
                "rt: direct write failed; this stream falls back to buffered writes"
            )
            self._write = None
            if self._sub is not None:
                self._sub.direct = None
            return False
        for event in reversed(events):
            if event.id is not None:
                self.last_id = event.id
                break
        return True

    @property
    def subscription(self) -> Subscriber | None:
        return self._sub

    def resubscribe(self) -> Subscriber:
        """A fresh subscription in place of one that overflowed (polling's mailbox)."""
        limits = self.ctx.limits
        self._sub = self.ctx.hub.subscribe(
            self.flows, max_objects=limits.buffer_objects, max_bytes=limits.buffer_bytes
        )
        return self._sub

    def writing(self) -> None:
        """The loop is about to write a batch: hold direct writes back until `written()`."""
        self._writing = True

    def written(self) -> None:
        self._writing = False

    def nudge(self) -> None:
        """Make a waiting `next_batch` return [] once (the loop has bytes to flush)."""
        self._nudged = True
        if self._sub is not None:
            self._sub.wake()

    async def next_batch(self) -> list[Event]:
        """The next events to send, in order; raises StreamEnd when the stream must end.

        Returns [] only after `nudge()`.

        Cancellation-safe: a cancelled call loses nothing (a store read in a
        thread completes and is kept; the buffer is only taken synchronously).
        """
        while True:
            if self._end is not None:
                raise self._end
            if self._catching_up:
                try:
                    page = await self.ctx.feed.read(self.flow_set, self.last_id, CATCH_UP_PAGE)
                except RtError as error:
                    if error.code != "shutting_down":
                        raise
                    # The log is unreachable for now: end, the client resumes later.
                    raise StreamEnd("shutdown", retry_ms_for("shutdown")) from None
                if len(page) < CATCH_UP_PAGE:
                    self._catching_up = False
                if self._end is not None:
                    raise self._end
                if page:
                    self.last_id = page[-1].id  # type: ignore[assignment]
                    return page
                continue
            sub = self._sub
            assert sub is not None
            if not self._nudged:
                await sub.wait()
            if self._end is not None:
                raise self._end
            if self._nudged:
                self._nudged = False
                if not len(sub):
                    return []
            items = sub.take_all()
            last = self.last_id
            batch: list[Event] = []
            for event in items:
                if event.id is None:
                    batch.append(event)
                elif event.id > last:
                    batch.append(event)
                    last = event.id
            self.last_id = last
            if batch:
                return batch
            if sub.lagging:
                self.ctx.metrics.lagging.labels(self.transport).inc()
                raise StreamEnd("lagging", retry_ms_for("lagging"))

    def end(self, reason: str) -> None:
        """End this stream: detach it from the hub at once and wake its loop.

        It delivers nothing after this call; its loop raises StreamEnd(reason).
        """
        if self._end is None:
            self._end = StreamEnd(reason, retry_ms_for(reason))
        self._detach()

    def _detach(self) -> None:
        if self._sub is not None:
            self.ctx.hub.unsubscribe(self._sub)

    def finish(self) -> None:
        """Release everything the stream holds. Idempotent; call in `finally`."""
        if self._finished:
            return
        self._finished = True
        self._detach()
        ctx = self.ctx
        if self.present_in:
            ctx.presence.leave(self.user, self.present_in)
            self.present_in = []
        if self.counted:
            self.counted = False
            ctx.metrics.streams_open.labels(self.transport).dec()
        ctx.claims.release(self)
        self.done.set()
