"""`Client`: one exact, resumable view of some flows, and an outbox, over any transport.

The stream contract (PROTOCOL.md section 3), as this client keeps it:

- Every connection asks to resume from the client's cursor and epoch.
  `ready` says where the stream continues: with `reset: true`, another
  epoch, or on the first connection, the client restarts its view at
  `ready.cursor` and tells the listener (`on_view`).
- Each stored event reaches `on_event` once, in id order: the client
  ignores every id at or below its cursor (catch-up replays, a server
  that repeats itself), so reconnecting never shows an event twice, and
  since the server sends every event above the cursor, nothing is skipped.
- A stream end follows the `close` frame's reason: `rotate` at once,
  `lagging` and `shutdown` after `retry_ms`; `superseded` and `evicted`
  with a new client id (the old one belongs to someone else now), after a
  short backoff; `unauthorized` is fatal. A connection that fails, ends
  without `close` or goes silent for 2.5 heartbeats is abandoned and
  re-opened after a random backoff (fast at first, at most 5 s). An HTTP
  refusal: 429 and 503 after `Retry-After`, 5xx with backoff, other 4xx
  fatal (`StreamFailed`; the outbox goes on).
- Ops go through the outbox (rt/client/outbox.py) over HTTP, whatever the
  transport: one uuid per op, retried with that uuid.

One nursery per client (`run`), two tasks (the stream loop and the
outbox), plus one per op in flight; nothing is shared between clients, so
hundreds can run in one process.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import trio

from rt.client.errors import ClientClosed, ClientError, NetworkError, ProtocolError, StreamFailed
from rt.client.http import HttpPool, Origin
from rt.client.listener import Listener
from rt.client.outbox import Op, Outbox
from rt.client.retry import Backoff, check_client_id, check_flow, clamp, make_client_id
from rt.client.transports import RUNNERS, TRANSPORTS, Closed, End, Lost, Refused

log = logging.getLogger("rt.client")

CALLBACK = "rtClient.p"  # the `?callback=` of htmlfile and jsonp
HEALTHY = 10.0  # a stream up this long resets the reconnection backoff
STATES = ("connecting", "open", "reconnecting", "stopped")


@dataclass(frozen=True)
class Timeouts:
    """Every wait of a client is bounded by one of these (seconds).

    - `connect`: TCP (and TLS) connect; `write`: any write to a socket.
    - `request`: an op's answer (its head, and each wait for its body's bytes).
    - `ready`: from opening a stream to its `ready`.
    - `silence`: heartbeats without a byte after which a stream is dead.
    - `poll_margin`: a poll may take `poll_timeout` plus this.
    """

    connect: float = 10.0
    write: float = 10.0
    request: float = 10.0
    ready: float = 10.0
    silence: float = 2.5
    poll_margin: float = 5.0


@dataclass
class Stats:
    """Counters of one client (cheap; for tests, benchmarks and the lab's report)."""

    connections: int = 0
    readies: int = 0
    views: int = 0
    events: int = 0
    ignored: int = 0  # stored events at or below the cursor (replays)
    new_client_ids: int = 0
    ends: dict[str, int] = field(default_factory=dict)

    def end(self, what: str) -> None:
        self.ends[what] = self.ends.get(what, 0) + 1


class _Link:
    """One connection attempt (the `Link` of rt/client/transports/base.py)."""

    __slots__ = (
        "client",
        "transport",
        "origin",
        "headers",
        "timeouts",
        "ready",
        "ready_at",
        "started",
        "start_cursor",
        "heartbeat",
        "poll_timeout",
        "poll_pool",
        "callback",
    )

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport = client.transport
        self.origin = client._origin
        self.headers = client._headers
        self.timeouts = client.timeouts
        self.ready = False
        self.ready_at = 0.0
        self.started = trio.current_time()
        self.start_cursor = client._cursor
        self.heartbeat = client._heartbeat
        self.poll_timeout = client._poll_timeout
        self.poll_pool = client._poll_pool
        self.callback = CALLBACK

    def target(self) -> str:
        return self.client._target(self.transport)

    def feed(self, objects: list[dict[str, Any]]) -> End | None:
        return self.client._feed(self, objects)

    def continued(self) -> None:
        self.client._opened_link(self)

    def has_cursor(self) -> bool:
        return self.client._cursor is not None and self.client._epoch is not None

    def read_timeout(self) -> float:
        if self.ready:
            return self.timeouts.silence * self.heartbeat
        return max(0.0, self.started + self.timeouts.ready - trio.current_time())


class Client:
    """A client of one rt server for one user (its bearer token) and a set of flows.

    Make it with `connect(...)` (an async context manager), or construct it
    and `await client.run()` in a nursery of your own. Attributes:
    `cursor` and `epoch` (where the view stands), `state`, `client_id`
    (changes after `superseded` or `evicted`), `transport`, `flows`,
    `error` (the `StreamFailed` that stopped the stream, if one did),
    `stats`.
    """

    def __init__(
        self,
        url: str,
        token: str,
        flows: Iterable[str],
        transport: str = "ws",
        *,
        listener: Listener | None = None,
        client_id: str | None = None,
        cursor: int | None = None,
        epoch: str | None = None,
        timeouts: Timeouts | None = None,
        concurrency: int = 4,
        give_up_after: float | None = None,
        backoff_cap: float = 5.0,
        name: str = "",
    ) -> None:
        self._origin = Origin.parse(url)
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
            raise ValueError("token must be the user's bearer token (a non-empty string)")
        self.flows = tuple(dict.fromkeys(check_flow(f) for f in flows))
        if not self.flows:
            raise ValueError("flows: follow at least one flow")
        if transport == "auto":
            transport = "ws"
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; one of {', '.join(TRANSPORTS)}")
        if (cursor is None) != (epoch is None):
            raise ValueError("cursor and epoch go together (both, or neither)")
        if cursor is not None and (not isinstance(cursor, int) or cursor < 0):
            raise ValueError(f"cursor must be an event id (an int >= 0), not {cursor!r}")
        self.transport = transport
        self.listener = listener or Listener()
        self.client_id = check_client_id(client_id) if client_id else make_client_id()
        self.timeouts = timeouts or Timeouts()
        self.name = name or self.client_id[:8]
        self.state = "connecting"
        self.error: StreamFailed | None = None
        self.stats = Stats()
        self._flow_set = frozenset(self.flows)
        self._headers = [("Authorization", f"Bearer {token}")]
        self._cursor = cursor
        self._epoch = epoch
        self._viewed = False
        self._heartbeat = 15.0
        self._poll_timeout = 25.0
        self._backoff = Backoff(0.2, backoff_cap)
        t = self.timeouts
        self._ops_pool = HttpPool(
            self._origin,
            connect_timeout=t.connect,
            write_timeout=t.write,
            max_idle=max(1, concurrency),
        )
        self._poll_pool = HttpPool(
            self._origin, connect_timeout=t.connect, write_timeout=t.write, max_idle=1
        )
        self._outbox = Outbox(
            self._ops_pool,
            self._headers,
            request_timeout=t.request,
            on_acked=self._acked,
            on_gave_up=self._gave_up,
            concurrency=concurrency,
            give_up_after=give_up_after,
            backoff_cap=backoff_cap,
            name=self.name,
        )
        self._stopping = False
        self._stopped = trio.Event()
        self._opened = trio.Event()
        self._stream_scope = trio.CancelScope()
        self._outbox_scope = trio.CancelScope()

    def __repr__(self) -> str:
        return f"<rt.client.Client {self.name} {self.transport} {self.state} cursor={self._cursor}>"

    # -- public surface ------------------------------------------------------------

    @property
    def cursor(self) -> int | None:
        """The id of the last stored event processed (None before the first `ready`)."""
        return self._cursor

    @property
    def epoch(self) -> str | None:
        return self._epoch

    @property
    def pending(self) -> int:
        """Ops not yet acknowledged or given up."""
        return len(self._outbox.pending)

    def post(self, flow: str, content: str) -> Op:
        """Post `content` to `flow`: returns the pending op at once (`await op.done`)."""
        if not isinstance(content, str):
            raise TypeError("content must be a string")
        return self._add(Op("post", check_flow(flow), content=content))

    def edit(self, flow: str, message: int | Op, content: str) -> Op:
        """Edit message `message` (an id, or the `Op` of a post: the edit waits for its id)."""
        if not isinstance(content, str):
            raise TypeError("content must be a string")
        return self._add(Op("edit", check_flow(flow), message=_target(message), content=content))

    def tag(
        self, flow: str, message: int | Op, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> Op:
        """Add and remove tags of a message."""
        return self._add(
            Op(
                "tag",
                check_flow(flow),
                message=_target(message),
                add=list(add),
                remove=list(remove),
            )
        )

    def delete(self, flow: str, message: int | Op) -> Op:
        return self._add(Op("delete", check_flow(flow), message=_target(message)))

    async def wait_open(self) -> None:
        """Wait for the first `ready`; raises the `StreamFailed` if the stream failed first,
        `ClientClosed` if the client stopped first."""
        await self._opened.wait()
        if self.error is not None:
            raise self.error
        if self.state == "stopped" and not self._viewed:
            raise ClientClosed("the client stopped before its stream opened")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop: take no new ops, wait up to `timeout` seconds until every op is acknowledged
        or given up (the stream stays up meanwhile), give up the rest (`stopped`), then close
        the stream. Idempotent; returns when the client has stopped."""
        if not self._stopping:
            self._stopping = True
            with trio.move_on_after(timeout):
                await self._outbox.drain()
            self._shutdown()
        await self._stopped.wait()

    async def run(self) -> None:
        """Run the client until it is stopped (by `stop()` or by a fatal stream refusal
        followed by `stop()`). For callers who keep their own nursery."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stream_main)
                nursery.start_soon(self._outbox_main)
        finally:
            self._shutdown()

    # -- the listener ----------------------------------------------------------------

    def _call(self, method: str, *args: Any) -> None:
        try:
            getattr(self.listener, method)(*args)
        except Exception:
            log.exception(
                "rt.client %s: the listener's %s raised; the client goes on "
                "(a bug in the listener)",
                self.name,
                method,
            )

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._call("on_state", state)

    def _acked(self, op: Op, result: dict[str, Any]) -> None:
        self._call("on_acked", op, result)

    def _gave_up(self, op: Op, code: str) -> None:
        log.info("rt.client %s: gave up %s %s: %s", self.name, op.kind, op.uuid, op.error)
        self._call("on_gave_up", op, code)

    def _add(self, op: Op) -> Op:
        if self._stopping:
            raise ClientClosed("this client is stopping: it takes no new ops")
        return self._outbox.add(op)

    # -- lifecycle -----------------------------------------------------------------

    def _shutdown(self) -> None:
        if self._stopped.is_set():
            return
        self._stopping = True
        self._outbox.abandon(
            "stopped",
            "the client stopped before the server acknowledged "
            "this op; it may or may not be stored",
        )
        self._stream_scope.cancel()
        self._outbox_scope.cancel()
        self._set_state("stopped")
        self._opened.set()
        self._stopped.set()

    async def _outbox_main(self) -> None:
        with self._outbox_scope:
            try:
                await self._outbox.run()
            finally:
                with trio.CancelScope(shield=True):
                    await self._ops_pool.aclose()

    async def _stream_main(self) -> None:
        with self._stream_scope:
            try:
                await self._stream_loop()
            finally:
                with trio.CancelScope(shield=True):
                    await self._poll_pool.aclose()

    async def _stream_loop(self) -> None:
        while True:
            link = _Link(self)
            self.stats.connections += 1
            try:
                end = await RUNNERS[link.transport](link)
            except NetworkError as error:
                if isinstance(error, ProtocolError):
                    log.warning(
                        "rt.client %s: %s stream broke the protocol (%s); reconnecting",
                        self.name,
                        link.transport,
                        error,
                    )
                end = Lost(str(error))
            delay = self._after(link, end)
            if delay is None:
                return
            if delay > 0:
                await trio.sleep(delay)

    # -- what arrives --------------------------------------------------------------

    def _target(self, transport: str) -> str:
        query = [("flows", ",".join(self.flows)), ("client", self.client_id), ("v", "1")]
        if self._cursor is not None and self._epoch is not None:
            query += [("cursor", str(self._cursor)), ("epoch", self._epoch)]
        if transport in ("htmlfile", "jsonp"):
            query.append(("callback", CALLBACK))
        return f"/stream/{transport}?{urlencode(query, safe=',')}"

    def _feed(self, link: _Link, objects: list[dict[str, Any]]) -> End | None:
        for obj in objects:
            kind = obj.get("type")
            if kind == "ready":
                self._on_ready(link, obj)
                continue
            if kind == "close":
                reason = obj.get("reason")
                return Closed(reason if isinstance(reason, str) else "unknown", obj.get("retry_ms"))
            if not link.ready:
                raise ProtocolError(f"{link.transport}: a {kind!r} object before ready")
            ident = obj.get("id")
            if type(ident) is int:
                self._on_stored(obj, ident)
            elif kind == "presence" or kind == "typing":
                self._call("on_ephemeral", obj)
            # heartbeat, pong, ack, error and unknown types: nothing to do
        return None

    def _on_ready(self, link: _Link, ready: dict[str, Any]) -> None:
        cursor = ready.get("cursor")
        epoch = ready.get("epoch")
        if type(cursor) is not int or cursor < 0 or not isinstance(epoch, str) or not epoch:
            raise ProtocolError(f"a ready without a cursor and an epoch: {ready!r}")
        heartbeat = clamp(ready.get("heartbeat"), 0.05, 3600.0)
        if heartbeat is not None:
            self._heartbeat = link.heartbeat = heartbeat
        poll_timeout = clamp(ready.get("poll_timeout"), 0.05, 3600.0)
        if poll_timeout is not None:
            self._poll_timeout = link.poll_timeout = poll_timeout
        self.stats.readies += 1
        if not self._viewed or ready.get("reset") is True or epoch != self._epoch:
            self._restart_view(cursor, epoch)
        elif self._cursor is not None and cursor > self._cursor:
            # Not a reset, yet the stream continues past events we never got: a gap
            # the server did not own up to. Start over from where it stands, loudly.
            log.warning(
                "rt.client %s: the server's ready continues after %d, beyond our cursor "
                "%d, without reset: a server bug; restarting the view there",
                self.name,
                cursor,
                self._cursor,
            )
            self._restart_view(cursor, epoch)
        self._opened_link(link)

    def _restart_view(self, cursor: int, epoch: str) -> None:
        self._cursor = cursor
        self._epoch = epoch
        self._viewed = True
        self.stats.views += 1
        self._call("on_view", cursor, epoch)

    def _opened_link(self, link: _Link) -> None:
        link.ready = True
        link.ready_at = trio.current_time()
        self._backoff.opened()
        self._set_state("open")
        self._opened.set()

    def _on_stored(self, event: dict[str, Any], ident: int) -> None:
        cursor = self._cursor
        if cursor is not None and ident <= cursor:
            self.stats.ignored += 1
            return
        self._cursor = ident
        if event.get("flow") not in self._flow_set:
            return  # not ours (a server bug); the cursor still moves past it
        self.stats.events += 1
        self._call("on_event", event)

    # -- how a connection ended ----------------------------------------------------

    def _after(self, link: _Link, end: End) -> float | None:
        """The delay before the next connection, or None when the stream must stop."""
        if link.ready and trio.current_time() - link.ready_at >= HEALTHY:
            self._backoff.reset()
        if isinstance(end, Closed):
            return self._after_close(link, end)
        if self.state == "open":
            self._set_state("reconnecting")
        if isinstance(end, Refused):
            return self._after_refusal(link, end)
        self.stats.end("lost")
        delay = self._backoff.next()
        log.info(
            "rt.client %s: %s stream lost (%s); reconnecting in %.2f s from %s",
            self.name,
            link.transport,
            end.why,
            delay,
            self._cursor,
        )
        return delay

    def _after_close(self, link: _Link, end: Closed) -> float | None:
        reason = end.reason
        self.stats.end(reason)
        if reason == "rotate":
            # Routine (the state stays open): come back at once. But a response that
            # rotated before it moved the cursor made no progress (a rotation mark the
            # preamble and ready alone reach): back off rather than spin.
            if link.ready and self._cursor != link.start_cursor:
                return 0.0
            return self._backoff.next()
        if self.state == "open":
            self._set_state("reconnecting")
        if reason == "lagging":
            ms = clamp(end.retry_ms, 0, 5000)
            return ms / 1000 if ms is not None else self._backoff.uniform(0, 1)
        if reason == "shutdown":
            ms = clamp(end.retry_ms, 0, 30000)
            return ms / 1000 if ms is not None else self._backoff.uniform(1, 5)
        if reason in ("superseded", "evicted"):
            # This client id is someone else's now: coming back with it would take it
            # back from them (and they from us, for ever).
            old, self.client_id = self.client_id, make_client_id()
            self.stats.new_client_ids += 1
            log.info(
                "rt.client %s: %s as %s; reconnecting as %s", self.name, reason, old, self.client_id
            )
            return self._backoff.next()
        if reason == "unauthorized":
            self._fail(
                StreamFailed(
                    "unauthorized",
                    "the server ended the stream: the token "
                    "was revoked or lost access to a flow; get a new token "
                    "or fix the flows",
                    status=401,
                )
            )
            return None
        return self._backoff.next()  # a reason this client does not know

    def _after_refusal(self, link: _Link, end: Refused) -> float | None:
        status = end.status
        self.stats.end(f"http_{status}")
        if status in (429, 503):
            wait = clamp(end.retry_after, 0.0, 60.0)
            self._backoff.n += 1
            return wait if wait is not None else self._backoff.next()
        if status == 408 or status >= 500:
            return self._backoff.next()
        code = end.code or ("unauthorized" if status == 401 else f"http_{status}")
        self._fail(
            StreamFailed(
                code,
                f"the server refused the {link.transport} stream with "
                f"{status} {code}: {end.message or 'no reason given'} "
                f"(the token, the flows or a parameter is wrong)",
                status=status,
            )
        )
        return None

    def _fail(self, error: StreamFailed) -> None:
        log.error("rt.client %s: %s", self.name, error)
        self.error = error
        self._call("on_error", error)
        self._set_state("stopped")
        self._opened.set()


def _target(message: int | Op) -> int | Op:
    if isinstance(message, Op):
        if message.kind != "post":
            raise ValueError("an op can only aim at a message id or at the Op of a post")
        return message
    if isinstance(message, bool) or not isinstance(message, int) or message < 1:
        raise ValueError(f"not a message id: {message!r}")
    return message


@asynccontextmanager
async def connect(
    url: str,
    token: str,
    flows: Iterable[str],
    transport: str = "ws",
    *,
    stop_timeout: float = 10.0,
    **options: Any,
) -> AsyncIterator[Client]:
    """A running `Client` for the block; leaving the block stops it (`stop(stop_timeout)`:
    every op acknowledged or given up first), or abandons it at once if the block raised.

    `url`: the server's base URL (`http://host:port`, a path prefix allowed);
    `token`: a bearer token; `flows`: the flows to follow; `transport`: one of
    ws sse xhr multipart htmlfile poll jsonp (`auto`: ws). Options: `listener`,
    `client_id`, `cursor` and `epoch` (resume from a saved position),
    `timeouts`, `concurrency` (ops in flight), `give_up_after`, `backoff_cap`,
    `name` (for logs).
    """
    client = Client(url, token, flows, transport, **options)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.run)
            try:
                yield client
                await client.stop(stop_timeout)
            finally:
                client._shutdown()
    except BaseExceptionGroup as group:
        # The block's own exception, not wrapped in the nursery's group (the client's
        # tasks raise nothing of their own but bugs, which stay grouped).
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


open_client = connect  # the house's name for an async context manager

__all__ = [
    "CALLBACK",
    "Client",
    "ClientError",
    "STATES",
    "Stats",
    "Timeouts",
    "connect",
    "open_client",
]
