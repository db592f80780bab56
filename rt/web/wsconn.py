"""The WebSocket connection shape: one nursery per connection with two tasks.

- the writer (the handler's own task): `ready`, then batches, heartbeats
  when idle, and finally `close` and the close code; while the stream is
  idle, events are instead written by `publish` itself, straight to the
  socket (`StreamSession.deliver_directly`, `Connection.try_write`),
  and so are replies when nothing else is being written. It is also the
  watchdog: it closes with 4408, without a `close` frame, a socket on which
  nothing (data, Ping or Pong) arrived for 2.5 heartbeats;
- the reader: ops (post, edit, tag, delete, typing, ping) with `ack`,
  `error` and `pong` replies; each storing op runs in its own task of the
  nursery (bounded), so one slow commit does not stall the socket, while
  ops are still queued to the writer in the order they arrived.

Refusals (bad ticket, forbidden flow, bad parameter, origin not allowed)
are an accepted upgrade closed before `ready` with the matching close code
and the error code as reason, so a browser can tell them from a network
failure (PROTOCOL.md section 6).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import trio

from rt.core.codec import decode_object, encode
from rt.core.errors import CLOSE_CODES, RtError, bad_request
from rt.core.events import Event
from rt.core.grammar import check_flow, check_ref
from rt.core.ops import delete_op, edit_op, post_op, tag_op
from rt.service import Service, StreamEnd, StreamSession
from rt.transports import FRAMERS, text_frame
from rt.web.connection import current_connection
from rt.web.http import origin_allowed
from rt.web.streaming import (
    StreamRequest,
    framed_once,
    parse_stream_request,
    watch_stalls,
    write_now,
)

MAX_FAILED_FRAMES = 10
MAX_OPS_IN_FLIGHT = 64
# A batch is written as several text frames of at most this many bytes (unless one
# object is larger): 1 MiB is the default message limit of common clients (Python's
# websockets, trio-websocket), which would otherwise close with 1009 on a catch-up
# page of big messages and loop for ever reconnecting from the same cursor.
MAX_FRAME_BYTES = 1 << 20
FRAMER = FRAMERS["ws"]


async def serve_websocket(service: Service, ws: Any) -> None:
    """Run one `/stream/ws` connection from upgrade to close."""
    config = service.config
    try:
        if not origin_allowed(
            ws.headers.get("Origin"), ws.scheme, ws.headers.get("Host"), config.allow_origin
        ):
            raise RtError(
                "forbidden",
                "this page's origin is not allowed to connect; add it with --allow-origin",
            )
        service.check_draining()
        params = await parse_stream_request(service, ws.args, ws.headers.get("Authorization"), "ws")
    except RtError as error:
        await ws.accept()
        await ws.close(error.close_code, error.code)
        await drain_after_close(ws, config.write_timeout)
        return
    await ws.accept()
    await WsConnection(service, ws, params).run()
    await drain_after_close(ws, config.write_timeout)


async def drain_after_close(ws: Any, quiet: float) -> None:
    """After the server's close: drop what the client still sends until it goes away.

    Returning at once would end the ASGI app while the client may still be sending;
    hypercorn then blocks for ever putting `websocket.disconnect` into the app's
    queue, full of frames nobody reads, and the connection (its socket and tasks)
    outlives the client until the server stops. Draining also lets the client's
    close reply arrive before the socket closes. The client's close or its
    disconnect ends this by cancellation; a client quiet for `quiet` seconds too.
    """
    while True:
        with trio.move_on_after(quiet) as scope:
            await ws.receive()
        if scope.cancelled_caught:
            return


class WsConnection:
    # Slots: one of these lives as long as each connection.
    __slots__ = (
        "service",
        "ws",
        "params",
        "user",
        "last_write",
        "last_seen",
        "connection",
        "failures",
        "ops_limiter",
        "session",
        "nursery",
        "closing",
        "direct",
        "_delivered",
    )

    def __init__(self, service: Service, ws: Any, params: StreamRequest) -> None:
        self.service = service
        self.ws = ws
        self.params = params
        self.user = params.user
        self.last_write = trio.current_time()
        self.last_seen = trio.current_time()
        self.connection = current_connection.get()
        self.failures = 0
        self.ops_limiter: trio.CapacityLimiter | None = None  # made at the first op
        self.session: StreamSession | None = None
        self.nursery: trio.Nursery | None = None
        self.closing = False
        connection = self.connection
        self.direct = (
            connection
            if connection is not None and connection.plain_tcp and service.config.fast_paths
            else None
        )
        self._delivered = service.metrics.events_delivered.labels("ws")  # looked up once

    async def send(self, data: bytes) -> None:
        """Send one text frame: straight to the socket if it is free, else through hypercorn."""
        if self.closing:  # hypercorn raises on a send after close; the client resumes anyway
            return
        self.last_write = trio.current_time()
        if self.direct is not None and write_now(self.direct, text_frame(data), self.session):
            return
        await self.ws.send(data.decode())

    def _write_events(self, events: Sequence[Event]) -> bool:
        """Direct delivery of events published while the stream is idle (never blocks)."""
        direct = self.direct
        if self.closing or direct is None:
            return False
        data = framed_once(events, "ws", _ws_wire)
        session = self.session
        if data is None or not write_now(direct, data, session):
            return False
        self.last_write = trio.current_time()
        self._delivered.inc(len(events))
        session.delivered(events)  # type: ignore[union-attr]
        return True

    async def close(self, code: int, reason: str) -> None:
        """Close once; from then on `send` drops what other tasks still send.

        Shielded (for at most write_timeout): another task that fails a frame at the
        same time cancels the nursery, and that must not cut the close frame off.
        """
        if self.closing:
            return
        self.closing = True
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.service.config.write_timeout
            await self.ws.close(code, reason)

    async def run(self) -> None:
        service = self.service
        try:
            self.session = await self.params.open(service)
        except StreamEnd as end:
            await self._close_with(end)
            return
        except RtError as error:
            await self.ws.close(error.close_code, error.code)
            return
        watch_stalls(self.connection, service, "ws")
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._reader)
                await self._writer()
                nursery.cancel_scope.cancel()
        finally:
            self.session.finish()

    async def _writer(self) -> None:
        session = self.session
        assert session is not None
        service = self.service
        heartbeat = service.config.heartbeat
        silence = 2.5 * heartbeat
        direct = self.direct
        await self.send(FRAMER.ready(session.ready, session.ready["epoch"]))
        if direct is not None:
            session.deliver_directly(self._write_events)
        while True:
            if direct is not None and direct.pending:
                await direct.flush()
            batch = None
            try:
                # Only the wait is bounded (by the next heartbeat, or the silence
                # limit): a batch taken from the buffer is written whatever the
                # time, or it would be lost (a gap).
                with trio.move_on_at(
                    min(self.last_write + heartbeat, self._last_heard() + silence)
                ):
                    batch = await session.next_batch()
            except StreamEnd as end:
                await self._close_with(end)
                return
            if batch is None:
                now = trio.current_time()
                if now >= self._last_heard() + silence:
                    # Nothing (data, Ping or Pong) for 2.5 heartbeats: 4408, no `close`.
                    with trio.move_on_after(service.config.write_timeout):
                        await self.close(CLOSE_CODES["silent"], "silent")
                    return
                if now >= self.last_write + heartbeat:  # not written directly meanwhile
                    await self.send(FRAMER.heartbeat())
                continue
            if not batch:  # nudged: flush the rest of a direct write first
                continue
            session.delivered(batch)
            self._delivered.inc(len(batch))
            session.writing()
            try:
                for part in _frames(batch):
                    await self.send(FRAMER.frame(part, session.ready["epoch"]))
            finally:
                session.written()

    async def _close_with(self, end: StreamEnd) -> None:
        with trio.move_on_after(self.service.config.write_timeout):
            await self.send(FRAMER.control(end.frame()))
            await self.close(CLOSE_CODES[end.reason], end.reason)

    def _last_heard(self) -> float:
        """When the client last sent anything: a message, or any frame or byte."""
        connection = self.connection
        return (
            self.last_seen if connection is None else max(self.last_seen, connection.last_receive)
        )

    async def _reader(self) -> None:
        while True:
            data = await self.ws.receive()
            self.last_seen = trio.current_time()
            try:
                await self._handle(data)
            except RtError as error:
                await self._failed(None, error)

    async def _handle(self, data: str | bytes | None) -> None:
        if data is None or data == b"" or data == "":
            raise bad_request("empty frame; send one JSON object with an op")
        frame = decode_object(data, "frame")
        ref = frame.get("ref")
        try:
            ref = check_ref(ref)
        except RtError as error:
            await self._failed(None, error)
            return
        op_name = frame.get("op")
        try:
            if op_name == "ping":
                self.failures = 0
                await self.send(
                    encode({"type": "pong", "ref": ref, "sent": time.time_ns() // 1_000_000})
                )
            elif op_name == "typing":
                await self.service.typing(self.user, check_flow(frame.get("flow")))
                self.failures = 0
            elif op_name in ("post", "edit", "tag", "delete"):
                op = self._parse_op(op_name, frame)
                token = object()
                if self.ops_limiter is None:
                    self.ops_limiter = trio.CapacityLimiter(MAX_OPS_IN_FLIGHT)
                await self.ops_limiter.acquire_on_behalf_of(token)
                assert self.nursery is not None
                self.nursery.start_soon(self._run_op, op, ref, token)
            else:
                raise bad_request(
                    f"unknown op {op_name!r}; use post, edit, tag, delete, typing or ping"
                )
        except RtError as error:
            await self._failed(ref, error)

    def _parse_op(self, name: str, frame: dict[str, Any]):
        user = self.user
        flow = frame.get("flow")
        if not isinstance(flow, str):
            raise bad_request("flow must be a flow name")
        if name == "post":
            return post_op(user, flow, frame)
        if name == "edit":
            return edit_op(user, flow, frame.get("message"), frame)
        if name == "tag":
            return tag_op(user, flow, frame.get("message"), frame)
        return delete_op(user, flow, frame.get("message"), frame.get("uuid"))

    async def _run_op(self, op, ref: str | None, token: object) -> None:
        try:
            result = await self.service.apply(op)
        except RtError as error:
            await self._failed(ref, error)
            return
        finally:
            self.ops_limiter.release_on_behalf_of(token)  # type: ignore[union-attr]
        self.failures = 0
        reply: dict[str, Any] = {"type": "ack", "ref": ref}
        if result.changed:
            reply["event"] = result.body
        else:
            reply.update(result.body)
        await self.send(encode(reply))

    async def _failed(self, ref: str | None, error: RtError) -> None:
        reply: dict[str, Any] = {
            "type": "error",
            "ref": ref,
            "code": error.code,
            "message": error.message,
            "retry": error.retry,
        }
        if error.retry_after is not None:
            reply["retry_after"] = int(error.retry_after * 1000)
        await self.send(encode(reply))
        # Only frames that are malformed or over the rate count towards the limit:
        # a legitimate op that fails (a 404, a 409) is the client's normal business.
        if error.code in ("bad_request", "too_large", "rate_limited"):
            self.failures += 1
        if self.failures >= MAX_FAILED_FRAMES:
            code = 4029 if error.code == "rate_limited" else 4400
            await self.close(code, error.code)
            assert self.nursery is not None
            self.nursery.cancel_scope.cancel()


def _ws_wire(events: Sequence[Event]) -> bytes | None:
    """One text frame for `events`; None past MAX_FRAME_BYTES (the writer splits those)."""
    payload = FRAMER.frame(events, "")
    return text_frame(payload) if len(payload) <= MAX_FRAME_BYTES else None


def _frames(batch: list[Any]) -> list[list[Any]]:
    """`batch` cut into runs whose frame (objects joined by newlines) is <= MAX_FRAME_BYTES."""
    parts: list[list[Any]] = [[]]
    size = 0
    for event in batch:
        grow = len(event.raw) + 1
        if parts[-1] and size + grow > MAX_FRAME_BYTES + 1:
            parts.append([])
            size = 0
        parts[-1].append(event)
        size += grow
    return parts
