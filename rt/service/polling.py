"""Polling sessions (PROTOCOL.md section 3.2), for the `poll` and `jsonp` transports.

A polling session is a claimant of (user, client id) like a stream, in the
same claims, so a stream supersedes a session and a session's first poll
supersedes a stream. It holds a `StreamSession` for what they share (the
claim's key, the subscription, `ready`, presence), and uses the
subscription only as a doorbell and a mailbox: stored events always come
from the log by the poll's cursor (so a lost answer costs nothing, the next
poll asks again), while presence and typing wait in a bounded mailbox (the
oldest dropped).

Each poll answers, in this order: `ready` (first poll, or after a reset),
stored events in id order, then ephemeral events in arrival order, at most
500 objects in all. A poll with nothing due waits up to `poll-timeout`. Once
something is due it answers at once, unless more is on its way (an op queued
or being applied by this node's writer): then it gathers for at most
`poll-linger`, so a burst leaves as one answer and a lone event at once
(docs/decisions.md). A newer poll of
the same session makes the pending one answer `[]` at once. The session
expires `presence-grace` after its last poll ends; presence treats it as
present until then.

In a cluster a session moves to the node its next poll lands on
(rt/backend/redis/claims.py). The old node hands over what the client has
not been told yet: the presence the client knows (`ready`'s snapshot plus
the presence events answered since) and the typing waiting in the mailbox.
The new node continues with no new `ready`: it puts in the mailbox the
presence events that turn what the client knows into its own snapshot,
then goes on from its subscription, so no presence change is lost between
the nodes. Without a handover (the old node died) the next answer starts
with a `ready`, as after an expired session.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from rt.backend.contracts import RateLimit
from rt.core.codec import encode
from rt.core.errors import RtError
from rt.core.events import Event, presence_event
from rt.service.streams import SessionContext, StreamEnd, StreamSession, close_frame

MAX_ANSWER = 500


class PollingSession:
    """One polling client's claim on (user, client id), alive between polls."""

    is_polling = True

    def __init__(self, ctx: SessionContext, **kwargs: Any) -> None:
        self.ctx = ctx
        self.stream = StreamSession(ctx, **kwargs)
        self.mailbox: deque[Event] = deque(maxlen=ctx.limits.poll_mailbox)
        self.ready_due = True
        # Presence as the client has been told it (None until `ready` is answered).
        self.known: dict[str, set[str]] | None = None
        self.handed_over: dict[str, Any] | None = None
        self.expires_at = trio.current_time() + ctx.limits.presence_grace
        self.polls = 0  # numbers the polls: a newer one supersedes the pending one
        self.pending = 0  # polls waiting now

    # -- what claims and the service see: the stream's --------------------------

    @property
    def key(self) -> tuple[str, str]:
        return self.stream.key

    @property
    def user(self) -> str:
        return self.stream.user

    @property
    def client(self) -> str:
        return self.stream.client

    @property
    def flows(self) -> list[str]:
        return self.stream.flows

    @property
    def transport(self) -> str:
        return self.stream.transport

    @property
    def token(self) -> str:
        return self.stream.token

    @property
    def present_in(self) -> list[str]:
        return self.stream.present_in

    @present_in.setter
    def present_in(self, flows: list[str]) -> None:
        self.stream.present_in = flows

    @property
    def done(self) -> trio.Event:
        return self.stream.done

    @property
    def ready(self) -> dict[str, Any]:
        return self.stream.ready

    @property
    def ended(self) -> StreamEnd | None:
        return self.stream.ended

    @property
    def record_name(self) -> str | None:
        return self.stream.record_name

    @record_name.setter
    def record_name(self, name: str | None) -> None:
        self.stream.record_name = name

    @property
    def counted(self) -> bool:
        return self.stream.counted

    @counted.setter
    def counted(self, value: bool) -> None:
        self.stream.counted = value

    def start(self, cursor: int | None, epoch: str | None) -> dict[str, Any]:
        return self.stream.start(cursor, epoch)

    def end(self, reason: str) -> None:
        self.stream.end(reason)
        if not self.pending:
            self.finish()  # nobody to tell: gone at once

    def finish(self) -> None:
        """Release everything the session holds (idempotent)."""
        self.stream.finish()
        self.ctx.claims.release(self)

    # -- moving between nodes ----------------------------------------------------

    def handover(self) -> dict[str, Any] | None:
        """What the node this session moves to needs (JSON); None before `ready` was answered."""
        if self.known is None:
            return None
        return {
            "presence": {flow: sorted(users) for flow, users in self.known.items()},
            "typing": [event.data for event in self.mailbox if event.type == "typing"],
        }

    def take_handover(self, data: dict[str, Any] | None) -> None:
        """The handover of this session's previous node (called by the claims)."""
        self.handed_over = data

    def continue_moved(self) -> bool:
        """Go on from the handover with no new `ready`; False when there was none."""
        data = self.handed_over
        if data is None:
            return False
        self.ready_due = False
        for typing in data["typing"]:
            self.mailbox.append(Event(typing))
        known = {flow: set(users) for flow, users in data["presence"].items()}
        now = self.ready["presence"]
        for flow in self.flows:
            before, after = known.get(flow, set()), set(now.get(flow, ()))
            for user in sorted(after - before):
                self.mailbox.append(presence_event(flow, user, "online"))
            for user in sorted(before - after):
                self.mailbox.append(presence_event(flow, user, "offline"))
        self.known = known
        return True

    # -- polls ------------------------------------------------------------------

    def _collect(self) -> None:
        """Move ephemeral events from the subscription into the mailbox.

        Stored events in the subscription are dropped: they come from the
        log by cursor. A subscription that overflowed is replaced.
        """
        sub = self.stream.subscription
        if sub is None:
            return
        for event in sub.take_all():
            if event.id is None:
                self.mailbox.append(event)
        if sub.lagging and self.ended is None:
            self.stream.resubscribe()

    async def poll(self, cursor: int) -> list[bytes]:
        """One poll's answer: encoded objects, `ready` first when due."""
        limits = self.ctx.limits
        feed = self.ctx.feed
        self.polls += 1
        me = self.polls
        sub = self.stream.subscription
        if sub is not None:
            sub.wake()  # the pending poll of this session answers [] now
        self.pending += 1
        try:
            parts: list[bytes] = []
            answer_now = False
            if self.ready_due:
                # The first poll (or the first after a reset) answers at once
                # with `ready`, then the backlog when it carried a cursor.
                self.ready_due = False
                parts.append(encode(self.ready))
                self.known = {flow: set(users) for flow, users in self.ready["presence"].items()}
                cursor = self.ready["cursor"]
                answer_now = True
            lingered = False
            deadline = trio.current_time() + limits.poll_timeout
            while True:
                if self.ended is not None:
                    if self.ended.reason == "moved":
                        return parts  # the session went on on another node: as a newer poll
                    return [*parts, encode(self.ended.frame())]
                if me != self.polls:
                    if answer_now:
                        self.ready_due = True  # never delivered: the next poll gets it
                    return []
                self._collect()
                room = MAX_ANSWER - len(parts)
                stored = await feed.read(self.stream.flow_set, cursor, room)
                self._collect()
                due = bool(stored) or bool(self.mailbox)
                if answer_now or (
                    due and (lingered or len(stored) >= room or not self.ctx.writes.busy)
                ):
                    return self._answer(parts, stored)
                if due:
                    # More is on its way (an op queued or being applied on this
                    # node): gather it into this answer, for at most the linger.
                    lingered = True
                    with trio.move_on_after(limits.poll_linger):
                        await self.ctx.writes.quiet()
                    continue
                if trio.current_time() >= deadline:
                    return parts
                sub = self.stream.subscription
                assert sub is not None
                with trio.move_on_at(deadline):
                    await sub.wait()
        finally:
            self.pending -= 1
            self.expires_at = trio.current_time() + limits.presence_grace
            if self.ended is not None and not self.pending:
                self.finish()

    def _answer(self, parts: list[bytes], stored: list) -> list[bytes]:
        if stored:
            self.stream.delivered(stored)
        parts.extend(event.raw for event in stored)
        known = self.known
        while self.mailbox and len(parts) < MAX_ANSWER:
            event = self.mailbox.popleft()
            parts.append(event.raw)
            if event.type == "presence" and known is not None:
                users = known.setdefault(event.flow, set())
                if event.data["state"] == "online":
                    users.add(event.data["user"])
                else:
                    users.discard(event.data["user"])
        return parts


OpenSession = Callable[[Any, int | None, str | None], Awaitable[bool]]


class Polling:
    """The polling side of a node: sessions by (user, client id), poll rate, expiry.

    `open_session(session, cursor, epoch)` is the service's one way to open
    a claimant (claim, start, count); False when a newer claimant won.
    """

    def __init__(self, ctx: SessionContext, open_session: OpenSession, rate: RateLimit) -> None:
        self.ctx = ctx
        self._open_session = open_session
        self.rate = rate

    async def poll(
        self,
        *,
        user: str,
        token: str,
        client: str,
        flows: list[str],
        transport: str,
        cursor: int | None,
        epoch: str | None,
    ) -> list[bytes]:
        """Answer one poll (encoded objects); raises RtError for refusals.

        The caller has checked the request (draining, flows) already.
        """
        wait = await self.rate.take(user + "\x00" + client)
        if wait:
            raise RtError(
                "rate_limited", "polling too fast; poll again after the answer", retry_after=wait
            )
        claims = self.ctx.claims
        session = claims.holder((user, client))
        resumable = cursor is not None and epoch == self.ctx.feed.epoch
        if (
            not isinstance(session, PollingSession)
            or session.ended is not None
            or not resumable
            or session.flows != flows
            or session.transport != transport
        ):
            # A poll without a cursor, or with other flows, starts the session over;
            # one whose session lives on another node moves it here, with no `ready`
            # when that node handed it over.
            remote = await claims.elsewhere((user, client)) if resumable else None
            moved = (
                remote is not None
                and remote.get("kind") == "poll"
                and remote.get("flows") == flows
                and remote.get("transport") == transport
            )
            session = PollingSession(
                self.ctx, user=user, token=token, client=client, flows=flows, transport=transport
            )
            if not await self._open_session(session, cursor, epoch):
                return [encode(close_frame("superseded"))]
            if not (moved and not session.ready["reset"] and session.continue_moved()):
                cursor = session.ready["cursor"]
        assert cursor is not None
        return await session.poll(cursor)

    def expire(self, now: float) -> None:
        """Finish sessions that saw no poll for `presence-grace`."""
        for session in self.ctx.claims.claimants():
            if (
                isinstance(session, PollingSession)
                and not session.pending
                and session.expires_at <= now
            ):
                session.finish()

    async def run(self) -> None:
        interval = min(1.0, self.ctx.limits.presence_grace / 4)
        while True:
            await trio.sleep(interval)
            self.expire(trio.current_time())
