"""`Service`: the application behind every route, independent of the web framework.

Check order for ops (PROTOCOL.md section 2): the web layer parses and
validates (400, 413); `Service` authenticates (401), checks the flow (404,
403), applies the rate limit (429) unless the uuid was already used, and
hands the op to the node's writer (uuid, 404/409/403, no-op, store).

The service is handed a backend (rt/backend: log, directory, tickets,
presence, claims, bus) and a hub, and never learns which backend it got. It
builds the node's own parts around them: the feed (the one publisher of
committed events), the writer, and the `SessionContext` its streams and
polling sessions see instead of the service itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from rt.backend import Backend, open_backend
from rt.config import Config
from rt.core.errors import RtError
from rt.core.events import Event, Flow, typing_event
from rt.core.grammar import check_user
from rt.core.ops import Op
from rt.hub import Hub, MemoryHub
from rt.service.chaos import Chaos
from rt.service.deliveries import DeliveryRecord
from rt.service.hooks import Hooks
from rt.service.loop_stalls import LoopStalls
from rt.service.metrics import Metrics
from rt.service.polling import Polling
from rt.service.streams import SessionContext, SessionLimits, StreamEnd, StreamSession
from rt.store import BatchWriter, Feed, OpResult

log = logging.getLogger("rt")

REFRESH_INTERVAL = 0.5  # how often changes by the `rt` CLI are picked up


@dataclass
class _MissRefresh:
    """A directory reload under way for the misses numbered up to `covers`."""

    covers: int
    changed: bool = False
    done: trio.Event = field(default_factory=trio.Event)


class Service:
    def __init__(
        self, config: Config, backend: Backend, hub: Hub, hooks: Hooks | None = None
    ) -> None:
        hooks = hooks or Hooks()
        self.config = config
        self.backend = backend
        self.directory = backend.directory
        self.hub = hub
        self.hooks = hooks
        self.metrics = Metrics()
        self.feed = Feed(
            backend.log,
            window=config.window,
            publish_to=self._publish,
            after_commit=hooks.after_commit,
        )
        self.writer = BatchWriter(backend.log, self.feed, self.metrics.writer_batch.observe)
        backend.log.on_hold = self.metrics.store_hold.observe
        self.presence = backend.presence
        self.claims = backend.claims
        self.claims.on_takeover = lambda old: self.metrics.takeovers.labels(old.transport).inc()
        self.tickets = backend.tickets
        self.delivery_record = (
            DeliveryRecord(config.delivery_record) if config.delivery_record else None
        )
        self.context = SessionContext(
            feed=self.feed,
            hub=hub,
            presence=self.presence,
            claims=self.claims,
            metrics=self.metrics,
            writes=self.writer,
            limits=SessionLimits(
                buffer_objects=config.buffer_objects,
                buffer_bytes=config.buffer_bytes,
                heartbeat=config.heartbeat,
                poll_timeout=config.poll_timeout,
                poll_linger=config.poll_linger,
                poll_mailbox=config.poll_mailbox,
                presence_grace=config.presence_grace,
            ),
            on_delivery=self._on_delivery if (self.delivery_record or hooks.on_delivery) else None,
        )
        self.polling = Polling(
            self.context,
            self.open_session,
            backend.rate_limit("polls", config.poll_rate, max(1.0, config.poll_rate)),
        )
        self.ops_limit = backend.rate_limit("ops", config.ops_rate, config.ops_burst)
        self.guest_limit = backend.rate_limit(
            "guests", config.guest_rate / 60.0, max(1.0, config.guest_rate)
        )
        self._typing_seen: dict[tuple[str, str], float] = {}
        self.draining = False
        self.started = time.time()
        self._misses = 0  # lookups that missed so far; numbers them
        self._refreshing: _MissRefresh | None = None
        self.chaos = (
            Chaos(config.chaos, config.chaos_seed, self.claims.claimants) if config.chaos else None
        )

    def _publish(self, events: list[Event]) -> None:
        self.hub.publish(events)
        self.metrics.events_stored.inc(len(events))

    def _on_delivery(self, session: Any, events: Sequence[Event]) -> None:
        if self.delivery_record is not None:
            self.delivery_record.record(session, events)
        if self.hooks.on_delivery is not None:
            self.hooks.on_delivery(session, events)

    # -- authentication ----------------------------------------------------

    async def authenticate(self, authorization: str | None) -> tuple[str, str]:
        """(user, token) from an `Authorization: Bearer T` header; 401 otherwise."""
        if not authorization:
            raise RtError("unauthorized", "send Authorization: Bearer <token>")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise RtError("unauthorized", "the Authorization header must be Bearer <token>")
        user = self.directory.authenticate(token)
        if user is None and await self._refresh_on_miss():
            user = self.directory.authenticate(token)
        if user is None:
            raise RtError("unauthorized", "the token is unknown or revoked; get a new one")
        return user, token

    async def _refresh_on_miss(self) -> bool:
        """Reload the directory after a lookup missed (a user, token or flow made by
        another node or the `rt` CLI a moment ago); True if it changed.

        Only a reload that began after the miss can answer it, so a user made on
        another node a moment ago is always found. Misses at once share one reload
        (a reload is one GET when nothing changed): a flood of bad tokens costs
        Redis one GET at a time, not one per request.
        """
        self._misses += 1
        mine = self._misses
        while (running := self._refreshing) is not None:
            await running.done.wait()
            if running.covers >= mine:
                return running.changed
        run = self._refreshing = _MissRefresh(covers=self._misses)
        try:
            run.changed = await self.directory.refresh()
            if run.changed:
                self.revalidate()
        finally:
            self._refreshing = None
            run.done.set()
        return run.changed

    async def authenticate_stream(
        self, authorization: str | None, ticket: str | None, client: str
    ) -> tuple[str, str]:
        """(user, token) for a stream: the Authorization header wins over a ticket."""
        if authorization:
            return await self.authenticate(authorization)
        if not ticket:
            raise RtError(
                "unauthorized",
                "a stream needs a ticket (POST /auth/ticket) or an Authorization header",
            )
        record = await self.tickets.redeem(ticket, client)
        user = self.directory.authenticate(record.token)
        if user is None and await self._refresh_on_miss():
            user = self.directory.authenticate(record.token)  # made on another node just now
        if user != record.user:
            raise RtError("unauthorized", "the token behind this ticket was revoked")
        return record.user, record.token

    async def create_guest(self, name: Any, address: str) -> tuple[str, str]:
        if not self.config.guests:
            raise RtError("not_found", "guest accounts are not enabled on this server")
        name = check_user(name, "name")
        wait = await self.guest_limit.take(address)
        if wait:
            raise RtError(
                "rate_limited", "too many guest accounts from this address", retry_after=wait
            )
        token = await self.directory.create_user(name, guest=True)
        return name, token

    # -- flows -------------------------------------------------------------

    async def require_flow(self, user: str, name: str) -> Flow:
        """The flow, if the user may read and write it; 404 or 403 otherwise."""
        flow = self.directory.flow(name)
        if (flow is None or not flow.readable_by(user)) and await self._refresh_on_miss():
            flow = self.directory.flow(name)
        if flow is None:
            raise RtError("not_found", f"no flow named {name}")
        if not flow.readable_by(user):
            raise RtError("forbidden", f"flow {name} is private and you are not a member")
        return flow

    def visible_flows(self, user: str) -> list[Flow]:
        return [f for f in self.directory.flows() if f.readable_by(user)]

    async def add_member(self, user: str, flow_name: str, member: Any) -> None:
        flow = await self.require_flow(user, flow_name)
        member = check_user(member)
        if flow.owner != user:
            raise RtError("forbidden", "only the flow's owner adds members")
        if not self.directory.user_exists(member):
            raise RtError("not_found", f"no user named {member}")
        await self.directory.add_member(flow_name, member)

    async def remove_member(self, user: str, flow_name: str, member: str) -> None:
        flow = await self.require_flow(user, flow_name)
        if user not in (flow.owner, member):
            raise RtError("forbidden", "only the owner removes members, or a member leaves")
        await self.directory.remove_member(flow_name, member)
        self.revalidate()

    # -- ops ---------------------------------------------------------------

    async def apply(self, op: Op) -> OpResult:
        """Run one storing op after the flow check and the rate limit."""
        started = trio.current_time()
        self.check_draining()
        await self.require_flow(op.user, op.flow)
        # A retry of a used uuid is neither limited nor charged (PROTOCOL.md 2). The
        # store is asked only when the limit bites; a replay that got a token gets
        # it back, so the common path costs no extra store read.
        wait = await self.ops_limit.take(op.user)
        if wait and not await self.backend.log.uuid_used(op.user, op.uuid):
            raise RtError("rate_limited", "too many operations; slow down", retry_after=wait)
        chaos = self.chaos
        if chaos is not None:
            chaos.check_op()
        result = await self.writer.submit(op)
        if chaos is not None and (delay := chaos.ack_delay()):
            await trio.sleep(delay)
        if result.replay and not wait:
            await self.ops_limit.refund(op.user)
        self.metrics.op_latency.labels(op.kind).observe(trio.current_time() - started)
        return result

    async def typing(self, user: str, flow: str) -> None:
        """Publish a typing event; above one a second per user and flow it is dropped."""
        await self.require_flow(user, flow)
        now = trio.current_time()
        wait = await self.ops_limit.take(user)
        if wait:
            raise RtError("rate_limited", "too many operations; slow down", retry_after=wait)
        key = (user, flow)
        if now - self._typing_seen.get(key, -1e9) < 1.0:
            return
        if len(self._typing_seen) > 10_000:
            self._typing_seen = {k: t for k, t in self._typing_seen.items() if now - t < 1.0}
        self._typing_seen[key] = now
        self.backend.bus.publish(typing_event(flow, user))

    async def history(
        self,
        user: str,
        flow: str,
        *,
        before: int | None,
        after: int | None,
        limit: int,
        tag: str | None,
    ) -> dict[str, Any]:
        await self.require_flow(user, flow)
        head = self.feed.head
        states = await self.feed.history(flow, before=before, after=after, limit=limit, tag=tag)
        return {"cursor": head, "epoch": self.feed.epoch, "messages": [s.to_dict() for s in states]}

    def check_draining(self) -> None:
        if self.draining:
            raise RtError("shutting_down", "the server is restarting; retry shortly", retry_after=2)
        if self.chaos is not None:
            self.chaos.check_request()

    # -- streams -----------------------------------------------------------

    async def open_stream(
        self,
        *,
        user: str,
        token: str,
        client: str,
        flows: list[str],
        transport: str,
        cursor: int | None,
        epoch: str | None,
    ) -> StreamSession:
        """Claim (user, client), subscribe and build `ready`.

        Raises StreamEnd('superseded') if a newer stream claimed the client
        id meanwhile (the caller sends that `close`), RtError for refusals.
        The caller must call `session.finish()` when done, whatever happens.
        """
        self.check_draining()
        for name in flows:
            await self.require_flow(user, name)
        session = StreamSession(
            self.context, user=user, client=client, flows=flows, transport=transport, token=token
        )
        if not await self.open_session(session, cursor, epoch):
            raise StreamEnd("superseded")
        return session

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
        """Answer one poll of a polling session (encoded objects); RtError for refusals."""
        self.check_draining()
        for name in flows:
            await self.require_flow(user, name)
        return await self.polling.poll(
            user=user,
            token=token,
            client=client,
            flows=flows,
            transport=transport,
            cursor=cursor,
            epoch=epoch,
        )

    async def open_session(self, session: Any, cursor: int | None, epoch: str | None) -> bool:
        """The one way a stream or polling session opens: claim, start, count.

        False if a newer claimant of the client id won meanwhile (the session
        is finished then). Raises RtError if access changed while it waited.
        """
        try:
            if not await self.claims.claim(session) or session.ended is not None:
                session.finish()
                return False
            for name in session.flows:  # access may have changed while we waited
                await self.require_flow(session.user, name)
            session.start(cursor, epoch)
        except BaseException:
            session.finish()
            raise
        metrics = self.metrics
        transport = session.transport
        metrics.streams_opened.labels(transport).inc()
        metrics.streams_open.labels(transport).inc()
        session.counted = True
        if session.ready["reset"]:
            metrics.resets.labels(transport).inc()
        elif cursor is not None:
            metrics.resumes.labels(transport).inc()
        return True

    def revalidate(self) -> None:
        """End every stream whose token was revoked or that lost access to a flow."""
        directory = self.directory
        for session in self.claims.claimants():
            if session.ended is not None:
                continue
            lost = [
                f
                for f in session.flows
                if (flow := directory.flow(f)) is None or not flow.readable_by(session.user)
            ]
            if directory.authenticate(session.token) != session.user:
                lost = session.flows
            if lost:
                session.end("unauthorized")
                gone = [f for f in session.present_in if f in lost]
                session.present_in = [f for f in session.present_in if f not in lost]
                self.presence.leave_now(session.user, gone)

    async def watch_changes(self) -> None:
        """Pick up CLI changes to the same database within a second."""
        while True:
            await trio.sleep(REFRESH_INTERVAL)
            try:
                changed = await self.directory.refresh()
            except Exception:  # a locked or busy file: try again next round
                log.exception("rt: reading changes made by the rt command failed")
                continue
            if changed:
                self.revalidate()

    def begin_shutdown(self) -> None:
        """Refuse new work (503) and end every stream with `shutdown`."""
        self.draining = True
        for session in self.claims.claimants():
            session.end("shutdown")

    async def seed(self) -> list[tuple[str, str]]:
        """Create the `--user` and `--flow` names that are missing; return (user, token) made."""
        made = []
        # Another node may be seeding the same names right now: `exists` is fine.
        for name in self.config.users:
            if not self.directory.user_exists(name):
                with contextlib.suppress(RtError):
                    made.append((name, await self.directory.create_user(name)))
        for name in self.config.flows:
            if self.directory.flow(name) is None:
                with contextlib.suppress(RtError):
                    await self.directory.create_flow(name)
        return made


@asynccontextmanager
async def open_service(
    config: Config,
    *,
    backend: Backend | None = None,
    hub: Hub | None = None,
    hooks: Hooks | None = None,
) -> AsyncIterator[Service]:
    """A running Service: the backend open, the feed loaded, the writer and the
    service's background tasks started; on exit the writer applies what is queued."""
    hub = hub or MemoryHub()
    async with _backend_for(config, hub, backend) as backend:
        service = Service(config, backend, hub, hooks)
        await service.feed.start()
        stalls = LoopStalls(service.metrics.loop_stalls)
        trio.lowlevel.add_instrument(stalls)
        try:
            async with _running(service, backend):
                yield service
        finally:
            trio.lowlevel.remove_instrument(stalls)
        if service.delivery_record is not None:
            service.delivery_record.close()


@asynccontextmanager
async def _running(service: Service, backend: Backend) -> AsyncIterator[None]:
    """The service's background tasks and its writer, for as long as the block runs."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(backend.run)
        nursery.start_soon(service.polling.run)
        nursery.start_soon(service.watch_changes)
        if service.chaos is not None:
            nursery.start_soon(service.chaos.run)
        async with trio.open_nursery() as writing:
            writing.start_soon(service.writer.run)
            try:
                yield
            finally:
                service.writer.close()  # it drains what is queued, then ends
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def _backend_for(config: Config, hub: Hub, backend: Backend | None) -> AsyncIterator[Backend]:
    if backend is not None:
        yield backend
        return
    async with open_backend(config, hub) as opened:
        yield opened


__all__ = ["Service", "StreamEnd", "open_service"]
