"""The streaming HTTP connection shape: sse, xhr, multipart and htmlfile.

Trio forbids a nursery or cancel scope held across a `yield`, so the body
is not a generator: `StreamBody` is a Quart response body whose
`__aenter__` opens the stream session (takeover, subscription, `ready`) and
whose `__aexit__` releases it, and `__anext__` produces one framed chunk at
a time with its own cancel scope for the heartbeat. Quart iterates it in
quart-trio's per-request nursery, which is cancelled the moment the client
disconnects, so `__aexit__` (and `finish`) runs at once.

A write that blocks for `write-timeout` is aborted by rt's hypercorn guard
(rt/web/hypercorn_guard.py, rt/web/connection.py), which ends the response
the same way.

Once the head and `ready` are out, events published while the stream is
idle are written by `publish` itself as whole HTTP chunks, straight to the
socket (`StreamSession.deliver_directly`, `Connection.try_write`),
on HTTP/1.1 (chunked) and HTTP/1.0 (close-delimited) GET responses. Any
event that finds the socket busy, and everything else, takes the iteration
below.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio
from quart.wrappers.response import ResponseBody

from rt.core.errors import RtError, bad_request
from rt.core.events import Event
from rt.core.grammar import check_client, check_flow_list, parse_int
from rt.service import Service, StreamEnd, StreamSession
from rt.service.streams import retry_ms_for
from rt.transports import Framer, http_chunk, rotation_cut
from rt.transports.sse import parse_last_event_id
from rt.web.connection import Connection, current_connection


def watch_stalls(connection: Connection | None, service: Service, transport: str) -> None:
    """Count `rt_write_timeouts` for `transport` if the connection's writes stall."""
    if connection is not None:
        counter = service.metrics.write_timeouts.labels(transport)
        connection.on_stall = counter.inc


@dataclass(frozen=True)
class StreamRequest:
    """A validated stream request: who, which client id, which flows, from where."""

    user: str
    token: str
    client: str
    flows: list[str]
    transport: str
    cursor: int | None
    epoch: str | None

    async def open(self, service: Service) -> StreamSession:
        return await service.open_stream(
            user=self.user,
            token=self.token,
            client=self.client,
            flows=self.flows,
            transport=self.transport,
            cursor=self.cursor,
            epoch=self.epoch,
        )


class StreamBody(ResponseBody):
    """One streaming HTTP response: preamble and `ready`, then batches, then `close`."""

    def __init__(
        self,
        service: Service,
        framer: Framer,
        params: StreamRequest,
        *,
        body_framing: str | None = None,
    ) -> None:
        """`body_framing`: how the server frames this response's body on the wire,
        "chunked" (HTTP/1.1) or "close" (HTTP/1.0: raw bytes until the connection
        closes); direct writes need one of them (None: never write directly)."""
        self.service = service
        self.framer = framer
        self.params = params
        connection = current_connection.get()
        watch_stalls(connection, service, framer.name)
        self.direct = (
            connection
            if connection is not None
            and connection.plain_tcp
            and body_framing in ("chunked", "close")
            and service.config.fast_paths
            else None
        )
        self._chunked = body_framing == "chunked"
        self._direct_on = False
        self._wire_key: tuple[str, str, bool] = (framer.name, "", self._chunked)
        self.session: StreamSession | None = None
        self._queue: deque[bytes] = deque()  # chunks due before the next batch
        self._done = False
        self._last_write = 0.0
        self._written = 0  # body bytes so far, for rotation
        self._carried = False  # whether this response has carried an event yet
        self._rotate_bytes = service.config.rotate_bytes
        self._delivered = service.metrics.events_delivered.labels(framer.name)  # looked up once

    async def __aenter__(self) -> StreamBody:
        framer = self.framer
        opening = framer.preamble()
        try:
            self.session = await self.params.open(self.service)
        except StreamEnd as end:
            if opening:
                self._queue.append(opening)
            self._end_with(end)
            return self
        except RtError as error:  # access changed between the checks and the claim
            reason = "shutdown" if error.code == "shutting_down" else "unauthorized"
            refused = StreamEnd(reason, retry_ms_for(reason))  # shutdown: 1000..5000 ms
            if opening:
                self._queue.append(opening)
            self._end_with(refused)
            return self
        self._queue.append(opening + framer.ready(self.session.ready, self.session.ready["epoch"]))
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if self.session is not None:
            self.session.finish()

    def __aiter__(self) -> StreamBody:
        return self

    def _emit(self, chunk: bytes) -> bytes:
        self._written += len(chunk)
        self._last_write = trio.current_time()
        return chunk

    def _end_with(self, end: StreamEnd) -> None:
        """Queue the `close` frame and the framer's epilogue; the body ends after them."""
        self._done = True
        if self.session is not None:
            self.session.end(end.reason)  # detach at once: nothing more is buffered
        self._queue.append(self.framer.control(end.frame()))
        epilogue = self.framer.epilogue()
        if epilogue:
            self._queue.append(epilogue)

    def _rotation_due(self, extra: int = 0) -> bool:
        return self.framer.rotates and self._written + extra >= self._rotate_bytes

    def _write_events(self, events: Sequence[Event]) -> bool:
        """Direct delivery of events published while the stream is idle (never blocks)."""
        if self._done:
            return False
        chunk = framed_once(events, self._wire_key, self._wire)
        assert chunk is not None
        size = len(chunk) - _chunk_overhead(chunk) if self._chunked else len(chunk)
        # A write that reaches the rotation mark takes the ordinary path, which rotates.
        session = self.session
        if self._rotation_due(size) or not write_now(self.direct, chunk, session):  # type: ignore[arg-type]
            return False
        self._written += size
        self._last_write = trio.current_time()
        self._delivered.inc(len(events))
        session.delivered(events)  # type: ignore[union-attr]
        return True

    def _wire(self, events: Sequence[Event]) -> bytes:
        data = self.framer.frame(events, self._wire_key[1])
        return http_chunk(data) if self._chunked else data

    async def __anext__(self) -> bytes:
        session = self.session
        if session is not None:
            session.written()  # Quart has written the chunk we returned last
        if self._queue:
            return self._emit(self._queue.popleft())
        if self._done:
            raise StopAsyncIteration
        assert session is not None
        framer = self.framer
        service = self.service
        epoch = session.ready["epoch"]
        direct = self.direct
        if direct is not None and not self._direct_on:
            # The head and `ready` are out: whole chunks may now go straight out.
            self._direct_on = True
            self._wire_key = (framer.name, epoch, self._chunked)
            session.deliver_directly(self._write_events)
        while True:
            if direct is not None and direct.pending:
                await direct.flush()
            try:
                with trio.move_on_at(self._last_write + service.config.heartbeat):
                    batch = await session.next_batch()
                    if not batch:
                        continue  # nudged: flush the rest of a direct write first
                    session.writing()
                    return self._batch(batch, epoch)
            except StreamEnd as end:
                self._end_with(end)
                return self._emit(self._queue.popleft())
            if trio.current_time() >= self._last_write + service.config.heartbeat:
                break  # idle: nothing was written directly either
        chunk = framer.heartbeat()
        if self._rotation_due(len(chunk)):
            self._end_with(StreamEnd("rotate", 0))
        return self._emit(chunk)

    def _batch(self, batch: list[Event], epoch: str) -> bytes:
        """The chunk for a batch taken from the session (cut, and ended, at the rotation mark)."""
        framer = self.framer
        session = self.session
        assert session is not None
        rotate = False
        if framer.rotates:
            n = rotation_cut(framer.object_sizes(batch), self._rotate_bytes - self._written)
            if n == 0 and batch and not self._carried:
                # A response always carries one object of a batch before it rotates:
                # with `ready` alone past the mark, a rotation that sends nothing
                # would have the client reconnect for ever (docs/decisions.md).
                n = 1
            if n < len(batch):
                # The rest comes from the log when the client resumes.
                batch, rotate = batch[:n], True
        session.delivered(batch)
        self._delivered.inc(len(batch))
        self._carried = self._carried or bool(batch)
        chunk = framer.frame(batch, epoch) if batch else b""
        if rotate or self._rotation_due(len(chunk)):
            self._end_with(StreamEnd("rotate", 0))
        if not chunk:
            return self._emit(self._queue.popleft())
        return self._emit(chunk)


def framed_once(
    events: Sequence[Event], key: Any, make: Callable[[Sequence[Event]], bytes | None]
) -> bytes | None:
    """`make(events)`, computed once per (`key`, run of events) for every connection.

    Cached on the first event: a run of one event under `key`, a longer run
    under `key` and the run's ids (subscribers to different flows get
    different runs of one batch). `key` names the transport and the epoch.
    """
    first = events[0]
    if len(events) == 1:
        return first.framed(key, make, events)
    return first.framed((key, tuple(e.id for e in events)), make, events)


def write_now(direct: Connection, data: bytes, session: StreamSession | None) -> bool:
    """`direct.try_write(data)`; when the write was cut short, `session`'s loop is nudged
    to flush the rest (it goes out before any other byte of the connection)."""
    if not direct.try_write(data):
        return False
    if direct.pending and session is not None:
        session.nudge()
    return True


def _chunk_overhead(chunk: bytes) -> int:
    """Bytes of HTTP chunk framing around the body bytes in `chunk` (from `http_chunk`)."""
    return chunk.index(b"\r\n") + 4


# Stands for the epoch of a cursor that cannot be trusted: never a store's epoch
# (epochs are 8 to 32 characters), so `ready` says `reset: true`.
UNTRUSTED_EPOCH = ""


async def parse_stream_request(
    service: Service,
    args: Any,
    authorization: str | None,
    transport: str,
    last_event_id: str | None = None,
) -> StreamRequest:
    """Validate a stream request in the order of PROTOCOL.md (400, 401, 404/403)."""
    version = args.get("v", "1")
    if version != "1":
        raise bad_request(f"protocol version {version!r} is not supported; this server speaks 1")
    if "token" in args or "access_token" in args:
        raise bad_request(
            "a bearer token is never accepted in a URL; use a ticket "
            "(POST /auth/ticket) or the Authorization header"
        )
    client = check_client(args.get("client"))
    flows = check_flow_list(args.get("flows"), service.config.max_flows)
    cursor = parse_int(args.get("cursor"), "cursor")
    epoch = args.get("epoch") or None
    if epoch is not None and len(epoch) > 64:
        raise bad_request("epoch is too long")
    if last_event_id:  # an empty header is no header, as EventSource sends none
        # The header wins over the parameters; one that names no cursor of
        # ours resets the stream (an epoch that is no epoch never matches).
        epoch, cursor = parse_last_event_id(last_event_id) or (UNTRUSTED_EPOCH, None)
    user, token = await service.authenticate_stream(authorization, args.get("ticket"), client)
    for name in flows:
        await service.require_flow(user, name)
    return StreamRequest(
        user=user,
        token=token,
        client=client,
        flows=flows,
        transport=transport,
        cursor=cursor,
        epoch=epoch,
    )
