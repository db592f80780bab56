"""Streams: resume from a cursor, takeover by client id, lagging, ends.

`StreamSession` is the transport-independent half of one stream. The web
layer opens it with `Service.open_stream`, writes `ready`, then loops on
`next_batch()` (framing and writing each batch) until it raises `StreamEnd`,
writes the `close` frame, and calls `finish()` in a `finally` block.

Resume (DESIGN.md invariant 2): the session subscribes to the hub *before*
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

Takeover (invariant 5): `StreamRegistry.claim` registers the new session
under (user, client id), ends the old one at once (detached from the hub,
so it delivers nothing more), waits for it at most `write_timeout`, and
then re-checks that the new session is still the registered claimant.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from rt.core.events import Event
from rt.hub import MemoryHub, Subscriber

if TYPE_CHECKING:
    from rt.service.app import Service

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


class StreamSession:
    """One open stream of one user and client id over one transport."""

    # Slots: one of these lives as long as each idle connection.
    __slots__ = ("service", "user", "client", "flows", "flow_set", "transport", "token", "done",
                 "ready", "last_id", "delivered_from", "_sub", "_catching_up", "_end",
                 "present_in", "_finished", "_write", "_writing", "_nudged", "record_name")

    is_polling = False

    def __init__(
        self, service: Service, *, user: str, client: str, flows: list[str],
        transport: str, token: str,
    ) -> None:
        self.service = service
        self.user = user
        self.client = client
        self.flows = flows
        self.flow_set = frozenset(flows)
        self.transport = transport
        self.token = token
        self.done = trio.Event()
        self.ready: dict[str, Any] = {}
        self.last_id = 0
        self.delivered_from: float | None = None
        self._sub: Subscriber | None = None
        self._catching_up = False
        self._end: StreamEnd | None = None
        self.present_in: list[str] = []  # flows where this stream counts for presence
        self._finished = False
        self._write: Callable[[Sequence[Event]], bool] | None = None
        self._writing = False  # the loop holds a batch it has not finished writing
        self._nudged = False  # next_batch returns [] once: the loop has its own work
        self.record_name: str | None = None  # its name in the --delivery-record file

    @property
    def key(self) -> tuple[str, str]:
        return (self.user, self.client)

    @property
    def ended(self) -> StreamEnd | None:
        return self._end

    # -- opening -----------------------------------------------------------

    def start(self, hub: MemoryHub, cursor: int | None, epoch: str | None) -> dict[str, Any]:
        """Subscribe, join presence and build `ready`, all in one synchronous step.

        Synchronous on purpose: no other task runs between the subscription
        and the reads of `head` and the presence snapshot, so `ready` is
        exact.
        """
        service = self.service
        store = service.store
        config = service.config
        # Join before subscribing: the user's other streams hear `online`, this
        # one has the user in its snapshot (and no redundant event after it).
        service.presence.join(self.user, self.flows)
        self.present_in = list(self.flows)
        self._sub = hub.subscribe(self.flows, max_objects=config.buffer_objects,
                                  max_bytes=config.buffer_bytes)
        head = store.head
        reset = False
        if cursor is None and epoch is None:
            start = head
        elif cursor is not None and epoch == store.epoch and cursor <= head:
            start = cursor
            self._catching_up = cursor < head
        else:
            start, reset = head, True
        self.last_id = start
        self.ready = {
            "type": "ready", "protocol": 1, "cursor": start, "epoch": store.epoch,
            "reset": reset, "flows": self.flows, "client": self.client,
            "transport": self.transport, "heartbeat": _seconds(config.heartbeat),
            "poll_timeout": _seconds(config.poll_timeout),
            "presence": service.presence.snapshot(self.flows),
        }
        return self.ready

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
            self._sub.direct = self._offer

    def _offer(self, events: Sequence[Event]) -> bool:
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
                "rt: direct write failed; this stream falls back to buffered writes")
            self._write = None
            if self._sub is not None:
                self._sub.direct = None
            return False
        for event in reversed(events):
            if event.id is not None:
                self.last_id = event.id
                break
        return True

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
                page = await self.service.store.read(self.flow_set, self.last_id, CATCH_UP_PAGE)
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
                self.service.metrics.lagging.labels(self.transport).inc()
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
            self.service.hub.unsubscribe(self._sub)

    def finish(self) -> None:
        """Release everything the stream holds. Idempotent; call in `finally`."""
        if self._finished:
            return
        self._finished = True
        self._detach()
        if self.present_in:
            self.service.presence.leave(self.user, self.present_in)
            self.present_in = []
        self.service.registry.release(self)
        self.done.set()


class StreamRegistry:
    """Live streams by (user, client id), and by user for the stream limit."""

    def __init__(self, write_timeout: float, max_streams: int) -> None:
        self.write_timeout = write_timeout
        self.max_streams = max_streams
        self.by_key: dict[tuple[str, str], StreamSession] = {}
        self.by_user: dict[str, list[StreamSession]] = {}
        self.on_takeover: Callable[[StreamSession], None] = lambda old: None

    def __len__(self) -> int:
        return len(self.by_key)

    def sessions(self) -> list[StreamSession]:
        return [s for sessions in self.by_user.values() for s in sessions]

    async def claim(self, session: StreamSession) -> None:
        """Make `session` the claimant of its key; raises StreamEnd('superseded') if it lost.

        Ends the previous claimant and waits for it (at most write_timeout),
        and evicts the user's oldest stream past `max_streams`.
        """
        key = session.key
        old = self.by_key.get(key)
        self.by_key[key] = session
        streams = self.by_user.setdefault(session.user, [])
        streams.append(session)
        if old is not None:
            self.on_takeover(old)
            old.end("superseded")
            with trio.move_on_after(self.write_timeout):
                await old.done.wait()
        if self.by_key.get(key) is not session:
            raise StreamEnd("superseded")
        live = [s for s in streams if s.ended is None]
        while len(live) > self.max_streams:
            live.pop(0).end("evicted")

    def release(self, session: StreamSession) -> None:
        """Forget `session`; the key's entry only if it still points to it."""
        if self.by_key.get(session.key) is session:
            del self.by_key[session.key]
        streams = self.by_user.get(session.user)
        if streams is not None:
            try:
                streams.remove(session)
            except ValueError:
                pass
            if not streams:
                del self.by_user[session.user]
