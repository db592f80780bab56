"""Polling sessions (PROTOCOL.md section 3.2), for the `poll` and `jsonp` transports.

A polling session is a claimant of (user, client id) like a stream, in the
same registry, so a stream supersedes a session and a session's first poll
supersedes a stream. Between polls it keeps its hub subscription, but only
as a doorbell and a mailbox: stored events always come from the log by the
poll's cursor (so a lost answer costs nothing, the next poll asks again),
while presence and typing wait in a bounded mailbox (the oldest dropped).

Each poll answers, in this order: `ready` (first poll, or after a reset),
stored events in id order, then ephemeral events in arrival order, at most
500 objects in all. A poll with nothing due waits up to `poll-timeout`; once
something is due it lingers `poll-linger` to gather more. A newer poll of
the same session makes the pending one answer `[]` at once. The session
expires `presence-grace` after its last poll ends; presence treats it as
present until then.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from rt.core.codec import encode
from rt.core.errors import RtError
from rt.core.ratelimit import TokenBuckets
from rt.service.streams import StreamEnd, StreamSession, close_frame

if TYPE_CHECKING:
    from rt.service.app import Service

MAX_ANSWER = 500


class PollingSession(StreamSession):
    """One polling client's claim on (user, client id), alive between polls."""

    is_polling = True

    def __init__(self, service: Service, **kwargs: Any) -> None:
        super().__init__(service, **kwargs)
        self.mailbox: deque[bytes] = deque(maxlen=service.config.poll_mailbox)
        self.ready_due = True
        self.expires_at = trio.current_time() + service.config.presence_grace
        self.polls = 0  # numbers the polls: a newer one supersedes the pending one
        self.pending = 0  # polls waiting now
        self.counted = False  # in rt_streams_open

    def end(self, reason: str) -> None:
        super().end(reason)
        if not self.pending:
            self.release()  # nobody to tell: gone at once

    def release(self) -> None:
        """Finish the session (idempotent), keeping rt_streams_open right."""
        if self.counted:
            self.counted = False
            self.service.metrics.streams_open.labels(self.transport).dec()
        self.finish()

    def _collect(self) -> None:
        """Move ephemeral events from the subscription into the mailbox.

        Stored events in the subscription are dropped: they come from the
        log by cursor. A subscription that overflowed is replaced.
        """
        sub = self._sub
        if sub is None:
            return
        for event in sub.take_all():
            if event.id is None:
                self.mailbox.append(event.raw)
        if sub.lagging and self.ended is None:
            config = self.service.config
            self._sub = self.service.hub.subscribe(
                self.flows, max_objects=config.buffer_objects, max_bytes=config.buffer_bytes)

    async def poll(self, cursor: int) -> list[bytes]:
        """One poll's answer: encoded objects, `ready` first when due."""
        config = self.service.config
        store = self.service.store
        self.polls += 1
        me = self.polls
        if self._sub is not None:
            self._sub.wake()  # the pending poll of this session answers [] now
        self.pending += 1
        try:
            parts: list[bytes] = []
            answer_now = False
            if self.ready_due:
                # The first poll (or the first after a reset) answers at once
                # with `ready`, then the backlog when it carried a cursor.
                self.ready_due = False
                parts.append(encode(self.ready))
                cursor = self.ready["cursor"]
                answer_now = True
            lingered = False
            deadline = trio.current_time() + config.poll_timeout
            while True:
                if self.ended is not None:
                    return [*parts, encode(self.ended.frame())]
                if me != self.polls:
                    if answer_now:
                        self.ready_due = True  # never delivered: the next poll gets it
                    return []
                self._collect()
                room = MAX_ANSWER - len(parts)
                stored = await store.read(self.flow_set, cursor, room)
                self._collect()
                due = bool(stored) or bool(self.mailbox)
                if answer_now or (due and (lingered or len(stored) >= room)):
                    return self._answer(parts, stored)
                if due:
                    lingered = True
                    await trio.sleep(config.poll_linger)
                    continue
                if trio.current_time() >= deadline:
                    return parts
                sub = self._sub
                assert sub is not None
                with trio.move_on_at(deadline):
                    await sub.wait()
        finally:
            self.pending -= 1
            self.expires_at = trio.current_time() + config.presence_grace
            if self.ended is not None and not self.pending:
                self.release()

    def _answer(self, parts: list[bytes], stored: list) -> list[bytes]:
        if stored:
            self.service.record_delivery(self, stored)
        parts.extend(event.raw for event in stored)
        while self.mailbox and len(parts) < MAX_ANSWER:
            parts.append(self.mailbox.popleft())
        return parts


class Polling:
    """The polling side of a Service: sessions by (user, client id), poll rate, expiry."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.rate = TokenBuckets(service.config.poll_rate, max(1.0, service.config.poll_rate))

    async def poll(
        self, *, user: str, token: str, client: str, flows: list[str], transport: str,
        cursor: int | None, epoch: str | None,
    ) -> list[bytes]:
        """Answer one poll (encoded objects); raises RtError for refusals."""
        service = self.service
        service.check_draining()
        for name in flows:
            service.require_flow(user, name)
        wait = self.rate.take((user, client), trio.current_time())
        if wait:
            raise RtError("rate_limited", "polling too fast; poll again after the answer",
                          retry_after=wait)
        session = service.registry.by_key.get((user, client))
        if (not isinstance(session, PollingSession) or session.ended is not None
                or cursor is None or session.flows != flows
                or session.transport != transport or epoch != service.store.epoch):
            # A poll without a cursor, or with other flows, starts the session over.
            session = await self._start(user=user, token=token, client=client, flows=flows,
                                        transport=transport, cursor=cursor, epoch=epoch)
            if session is None:
                return [encode(close_frame("superseded"))]
            cursor = session.ready["cursor"]
        assert cursor is not None
        return await session.poll(cursor)

    async def _start(self, *, cursor: int | None, epoch: str | None,
                     **kwargs: Any) -> PollingSession | None:
        service = self.service
        session = PollingSession(service, **kwargs)
        try:
            await service.registry.claim(session)
            if session.ended is not None:
                raise session.ended
            session.start(service.hub, cursor, epoch)
        except StreamEnd:
            session.finish()
            return None
        except BaseException:
            session.finish()
            raise
        metrics = service.metrics
        metrics.streams_opened.labels(session.transport).inc()
        metrics.streams_open.labels(session.transport).inc()
        session.counted = True
        if session.ready["reset"]:
            metrics.resets.labels(session.transport).inc()
        elif cursor is not None:
            metrics.resumes.labels(session.transport).inc()
        return session

    def expire(self, now: float) -> None:
        """Finish sessions that saw no poll for `presence-grace`."""
        for session in self.service.registry.sessions():
            if isinstance(session, PollingSession) and not session.pending \
                    and session.expires_at <= now:
                session.release()

    async def run(self) -> None:
        interval = min(1.0, self.service.config.presence_grace / 4)
        while True:
            await trio.sleep(interval)
            self.expire(trio.current_time())
